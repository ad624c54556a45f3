-- niks3d schema version 10: each identity uploads a shared key on its own, and one upload at a time is put in
-- place (docs/security.md, rule 1; docs/database.md, "session_claims" and "objects").
--
-- Until now one session at a time was the uploader of a key, and every other session waited for it: a writer
-- that claimed a NAR and never uploaded it held every other writer of that NAR up for a lease, and two
-- colluding identities could hand the key to each other for a cap each. Uploads go to per-session staging keys,
-- so sessions of different identities can upload the same object side by side: the uploader is now one session
-- per key and identity (`session_claims.token_name`, filled from the session by a trigger), and sessions of one
-- identity still wait for each other.
--
-- What goes under the published key is serialized by `objects.placer`: the session whose staged copy niks3d is
-- copying into place and checking, until `placer_until` (renewed while it works). It is taken under the
-- object's row lock, only while the object is pending and no other placement is live, and the object becomes
-- present only while its placer still holds it; a placement whose check fails deletes the key only while it
-- still holds it. So no other upload's bytes reach the key between a copy and its check, and the first upload
-- that passes its check is the one published. `claim_caps.failed_at`: an identity whose upload of a key failed
-- its check does not place that key again for `gc.claim_max_lease`.

ALTER TABLE session_claims ADD COLUMN token_name text;
UPDATE session_claims c SET token_name = s.token_name FROM upload_sessions s WHERE s.id = c.session_id;
ALTER TABLE session_claims ALTER COLUMN token_name SET NOT NULL;

-- A claim's identity is always its session's: filled in here, so no INSERT has to say it (or can say another).
CREATE FUNCTION session_claims_token_name() RETURNS trigger
    LANGUAGE plpgsql
AS $$ BEGIN
    NEW.token_name := (SELECT token_name FROM upload_sessions WHERE id = NEW.session_id);
    RETURN NEW;
END $$;
CREATE TRIGGER session_claims_token_name BEFORE INSERT ON session_claims
    FOR EACH ROW EXECUTE FUNCTION session_claims_token_name();

DROP INDEX session_claims_one_uploader_idx;
CREATE UNIQUE INDEX session_claims_one_uploader_idx ON session_claims (key, token_name) WHERE uploader;

ALTER TABLE objects
    ADD COLUMN placer       uuid,
    ADD COLUMN placer_until timestamptz,
    ADD CONSTRAINT objects_placer_check CHECK ((placer IS NULL) = (placer_until IS NULL)),
    ADD CONSTRAINT objects_placer_pending_check CHECK (placer IS NULL OR state = 'pending');

ALTER TABLE claim_caps ADD COLUMN failed_at timestamptz;
-- The placements of one session, renewed while it works (uploads/leases.py).
CREATE INDEX objects_placer_idx ON objects (placer) WHERE placer IS NOT NULL;
