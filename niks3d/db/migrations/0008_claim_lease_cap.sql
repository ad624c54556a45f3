-- niks3d schema version 8: an uploader's lease has a cap (docs/security.md, rule 1; docs/api.md, "Waiting for
-- another session's upload").
--
-- Upload progress renews a lease, so a writer that keeps showing some progress could keep a key (and every
-- other writer of the same NAR) waiting for as long as it liked. `lease_cap` is set when a session becomes the
-- uploader of a key (`gc.claim_max_lease` later) and no renewal moves `lease_until` past it; after that, the
-- next session that needs the key takes the upload over.

ALTER TABLE session_claims
    ADD COLUMN lease_cap timestamptz,
    ADD CONSTRAINT session_claims_lease_cap_check CHECK (lease_cap IS NULL OR uploader);

-- Uploads in flight at the upgrade: capped an hour from now (the default of gc.claim_max_lease).
UPDATE session_claims SET lease_cap = now() + interval '1 hour' WHERE uploader;
