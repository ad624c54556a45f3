-- niks3d schema version 4: an uploader's claim is a short lease (docs/database.md, "session_claims").
--
-- Until now a session that claimed an object kept every other session of the same object waiting for as long
-- as it kept calling, uploading or not. A lease ends at `lease_until` unless upload progress renews it: an
-- object of the session accepted, a staged object being checked, or more bytes in its multipart upload (which
-- niks3d counts in `progress` when another session asks to take the upload over).

ALTER TABLE session_claims
    ADD COLUMN lease_until timestamptz,
    ADD COLUMN progress    bigint NOT NULL DEFAULT 0,
    ADD CONSTRAINT session_claims_lease_check CHECK (lease_until IS NULL OR uploader),
    ADD CONSTRAINT session_claims_progress_check CHECK (progress >= 0);

-- Claims from before this version: their lease starts now.
UPDATE session_claims SET lease_until = now() WHERE uploader;
