-- niks3d schema version 2: store paths proven to be in an upstream cache (cache.nixos.org and the like).
--
-- A push may reference a path it does not upload, when it shows the path's upstream signature by one of the
-- configured cache.upstream_keys (docs/api.md, upstream references). niks3d verifies the signature over the facts
-- it was given and records the path here: no narinfo of ours, nothing in the bucket, never a GC root. The closure
-- invariant becomes: every reference of a published path is published here (path_references) or recorded as
-- proven upstream (upstream_references). GC forgets a record once no published path references it (docs/gc.md).


-- One row per path proven upstream: the signed facts, so that the proof can be checked again later.
CREATE TABLE upstream_paths (
    hash         text        PRIMARY KEY,                  -- the 32-character nix32 hash part
    name         text        NOT NULL,
    nar_hash     text        NOT NULL,                     -- sha256:<nix32>, as signed
    nar_size     bigint      NOT NULL,
    refs         text[]      NOT NULL,                     -- the path's own references (basenames), as signed
    signature    text        NOT NULL,                     -- <key name>:<base64>, by an upstream key
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT upstream_paths_hash_check CHECK (hash ~ '^[0-9a-df-np-sv-z]{32}$'),
    CONSTRAINT upstream_paths_name_check CHECK (name ~ '^(?!\.\.?(-|$))[0-9A-Za-z+._?=-]{1,211}$'),
    CONSTRAINT upstream_paths_nar_hash_check CHECK (nar_hash ~ '^sha256:[0-9a-df-np-sv-z]{52}$'),
    CONSTRAINT upstream_paths_nar_size_check CHECK (nar_size > 0),
    CONSTRAINT upstream_paths_signature_check CHECK (signature ~ '^[!-9;-~]+:[A-Za-z0-9+/]+={0,2}$')
);


-- The references of published paths that are proven upstream rather than published here. Deleting the referrer
-- deletes its rows; a record is forgotten only when no row names it (RESTRICT: never under a referrer).
CREATE TABLE upstream_references (
    referrer   text NOT NULL REFERENCES store_paths (hash) ON DELETE CASCADE,
    reference  text NOT NULL REFERENCES upstream_paths (hash) ON DELETE RESTRICT,
    PRIMARY KEY (referrer, reference)
);
-- GC: is this upstream record still referenced?
CREATE INDEX upstream_references_reference_idx ON upstream_references (reference);
