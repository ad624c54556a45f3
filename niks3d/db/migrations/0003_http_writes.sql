-- niks3d schema version 3: stock Nix as a writer (`nix copy --to http://<niks3d>`, docs/api.md).
--
-- Nix PUTs each NAR under the key it chose (nar/<nix32 sha256 of the file>.nar<ext>) before the narinfo that
-- names it. niks3d checks the file while it streams it into the bucket: its SHA-256 must be the key's hash, and
-- its decompressed bytes must be a NAR; what it found is kept here until the narinfo PUT (the commit point)
-- compares it with the narinfo's NarHash, NarSize, FileHash and FileSize.


-- What niks3d computed for a NAR object it received by HTTP PUT. The row goes with its object (CASCADE), so a
-- NAR that GC deleted is never taken as checked.
CREATE TABLE nar_facts (
    key          text        PRIMARY KEY REFERENCES objects (key) ON DELETE CASCADE,
    compression  text        NOT NULL,
    nar_hash     text        NOT NULL,                     -- sha256:<nix32> of the decompressed NAR
    nar_size     bigint      NOT NULL,
    file_size    bigint      NOT NULL,                     -- bytes of the object as stored
    token_name   text        NOT NULL,                     -- the token that uploaded it first
    checked_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT nar_facts_key_check CHECK (object_key_kind(key) = 'nar'),
    CONSTRAINT nar_facts_compression_check CHECK (compression IN ('none', 'zstd', 'xz', 'bzip2', 'gzip')),
    CONSTRAINT nar_facts_nar_hash_check CHECK (nar_hash ~ '^sha256:[0-9a-df-np-sv-z]{52}$'),
    CONSTRAINT nar_facts_nar_size_check CHECK (nar_size > 0),
    CONSTRAINT nar_facts_file_size_check CHECK (file_size > 0)
);


-- Named roots set through the cache URL: `nix copy --to http://<niks3d>/roots/<name>` makes every path whose
-- narinfo it PUTs a member of root <name>. A member and its closure stay until the root is deleted
-- (DELETE /api/v1/roots/<name>), whatever their age. Deleting a path on purpose removes it from its roots.
CREATE TABLE root_members (
    name      text        NOT NULL,
    hash      text        NOT NULL REFERENCES store_paths (hash) ON DELETE CASCADE,
    added_at  timestamptz NOT NULL DEFAULT now(),
    added_by  text        NOT NULL,                        -- the token name
    PRIMARY KEY (name, hash),
    CONSTRAINT root_members_name_check CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$')
);
-- GC mark and "which roots hold this path?".
CREATE INDEX root_members_hash_idx ON root_members (hash);
