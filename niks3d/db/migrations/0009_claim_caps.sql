-- niks3d schema version 9: an identity's cap on uploading a key holds across its sessions (docs/security.md,
-- rule 1).
--
-- Version 8 capped each claim from when its session became the uploader. A writer with a second session of the
-- same key (opened beforehand, or right after aborting the first) took the upload over at the cap and started a
-- fresh one, and so on. The cap is now kept per key and identity: the first time an identity becomes the
-- uploader of a key, its cap is set; every later session of that identity that takes the key over gets the same
-- cap, past or not. The rows go with their object (CASCADE): once a NAR is gone, so is what was remembered of it.

CREATE TABLE claim_caps (
    key         text        NOT NULL REFERENCES objects (key) ON DELETE CASCADE,
    token_name  text        NOT NULL,                     -- the identity (upload_sessions.token_name)
    lease_cap   timestamptz NOT NULL,
    PRIMARY KEY (key, token_name),
    CONSTRAINT claim_caps_token_name_check CHECK (token_name <> '')
);

-- Uploads in flight at the upgrade keep the caps they have.
INSERT INTO claim_caps (key, token_name, lease_cap)
SELECT c.key, s.token_name, min(c.lease_cap)
FROM session_claims c JOIN upload_sessions s ON s.id = c.session_id
WHERE c.uploader AND c.lease_cap IS NOT NULL
GROUP BY c.key, s.token_name;
