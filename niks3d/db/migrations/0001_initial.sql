-- niks3d schema version 1: objects in the bucket, published store paths and their references, roots and pins,
-- upload sessions and their claims, garbage-collection runs.
--
-- The migration runner (niks3d/db/migrate.py) applies this file in one transaction; it must not contain
-- BEGIN/COMMIT. Python validates everything before it reaches SQL; the CHECK constraints below exist so that a bug
-- cannot store garbage anyway. docs/database.md explains every table, the lifecycle of an object and the locking
-- rules that keep garbage collection safe against concurrent pushes.


-- Which kind of object a bucket key names, from its shape alone (shared/spec/protocol.md sections 4 and 7):
--   <hash>.narinfo, <hash>.ls, nar/<nix32 sha256>.nar[.ext], log/<drv basename>,
--   realisations/sha256:<hex64>!<output>.doi (Nix <= 2.34) or build-trace-v2/<drv basename>/<output>.doi (>= 2.35).
-- Anything else is 'invalid', which no kind column accepts.
-- (A quoted body rather than a SQL-standard one, so that PostgreSQL 12 and 13 accept it too.)
CREATE FUNCTION object_key_kind(key text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
AS $$ SELECT CASE
    WHEN $1 ~ '^[0-9a-df-np-sv-z]{32}\.narinfo$' THEN 'narinfo'
    WHEN $1 ~ '^[0-9a-df-np-sv-z]{32}\.ls$' THEN 'ls'
    WHEN $1 ~ '^nar/[0-9a-df-np-sv-z]{52}\.nar(\.(xz|bz2|zst|lzip|lz4|br))?$' THEN 'nar'
    WHEN $1 ~ '^log/[0-9a-df-np-sv-z]{32}-(?!\.\.?(-|$))[0-9A-Za-z+._?=-]{1,211}$' AND $1 ~ '\.drv$' THEN 'log'
    WHEN $1 ~ '^realisations/sha256:[0-9a-f]{64}![0-9A-Za-z+._?=-]+\.doi$' THEN 'realisation'
    WHEN $1 ~ '^build-trace-v2/[0-9a-df-np-sv-z]{32}-(?!\.\.?(-|$))[0-9A-Za-z+._?=-]{1,211}/[0-9A-Za-z+._?=-]+\.doi$'
        AND $1 ~ '^[^/]+/[^/]+\.drv/' THEN 'realisation'
    ELSE 'invalid'
END $$;


-- Every object niks3d writes under the cache's keys, from the moment it hands out an upload URL for it (pending)
-- until garbage collection deletes it from the bucket and then this row. GC only ever deletes keys listed here,
-- and everything a crashed push left behind is listed here (design.md invariant 4).
CREATE TABLE objects (
    key         text        PRIMARY KEY,
    kind        text        NOT NULL,
    state       text        NOT NULL DEFAULT 'pending',
    size        bigint,                                    -- bytes in the bucket; known once present
    created_at  timestamptz NOT NULL DEFAULT now(),
    present_at  timestamptz,                               -- when niks3d saw the object complete in the bucket
    file_hash   text,                                      -- sha256:<nix32> of the stored bytes, once checked
    CONSTRAINT objects_kind_check CHECK (kind IN ('nar', 'narinfo', 'ls', 'log', 'realisation')),
    CONSTRAINT objects_key_matches_kind CHECK (object_key_kind(key) = kind),
    CONSTRAINT objects_state_check CHECK (state IN ('pending', 'present')),
    CONSTRAINT objects_size_check CHECK (size >= 0),
    CONSTRAINT objects_file_hash_check CHECK (file_hash ~ '^sha256:[0-9a-df-np-sv-z]{52}$'),
    CONSTRAINT objects_present_check CHECK (
        CASE state
            WHEN 'present' THEN size IS NOT NULL AND present_at IS NOT NULL
            ELSE present_at IS NULL
        END
    )
);
-- GC: pending objects past the grace period, objects by age.
CREATE INDEX objects_state_created_at_idx ON objects (state, created_at);


-- One row per published store path: the narinfo is in the bucket and these are its exact bytes, so the read proxy
-- answers narinfo requests from here without asking S3.
CREATE TABLE store_paths (
    hash          text        PRIMARY KEY,                 -- the 32-character nix32 hash part
    name          text        NOT NULL,
    nar_hash      text        NOT NULL,                    -- sha256:<nix32> of the uncompressed NAR
    nar_size      bigint      NOT NULL,
    nar_key       text        NOT NULL REFERENCES objects (key) ON DELETE RESTRICT,
    narinfo_key   text        NOT NULL UNIQUE REFERENCES objects (key) ON DELETE RESTRICT,
    compression   text        NOT NULL,
    file_hash     text        NOT NULL,                    -- sha256:<nix32> of the stored (compressed) NAR
    file_size     bigint      NOT NULL,
    deriver       text,                                    -- basename of the .drv; NULL when unknown
    ca            text,                                    -- content address, for example fixed:r:sha256:...
    narinfo       text        NOT NULL,                    -- the exact published bytes (UTF-8, LF line ends)
    published_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT store_paths_hash_check CHECK (hash ~ '^[0-9a-df-np-sv-z]{32}$'),
    CONSTRAINT store_paths_name_check CHECK (name ~ '^(?!\.\.?(-|$))[0-9A-Za-z+._?=-]{1,211}$'),
    CONSTRAINT store_paths_nar_hash_check CHECK (nar_hash ~ '^sha256:[0-9a-df-np-sv-z]{52}$'),
    CONSTRAINT store_paths_nar_size_check CHECK (nar_size > 0),
    CONSTRAINT store_paths_nar_key_check CHECK (object_key_kind(nar_key) = 'nar'),
    CONSTRAINT store_paths_narinfo_key_check CHECK (narinfo_key = hash || '.narinfo'),
    CONSTRAINT store_paths_compression_check
        CHECK (compression IN ('none', 'zstd', 'xz', 'bzip2', 'br', 'gzip', 'lz4', 'lzip')),
    CONSTRAINT store_paths_file_hash_check CHECK (file_hash ~ '^sha256:[0-9a-df-np-sv-z]{52}$'),
    CONSTRAINT store_paths_file_size_check CHECK (file_size > 0),
    CONSTRAINT store_paths_deriver_check
        CHECK (deriver ~ '^[0-9a-df-np-sv-z]{32}-(?!\.\.?(-|$))[0-9A-Za-z+._?=-]{1,211}$' AND deriver ~ '\.drv$'),
    CONSTRAINT store_paths_ca_check CHECK (ca ~ '^(fixed|text):[!-~]+$'),
    -- The published narinfo describes this row: its StorePath is this path and its URL is nar_key (GC keeps
    -- nar_key alive for this path, so a narinfo naming another NAR would break the closure invariant).
    CONSTRAINT store_paths_narinfo_matches_row CHECK (
        strpos(E'\n' || narinfo, E'\nStorePath: /nix/store/' || hash || '-' || name || E'\n') > 0
        AND strpos(narinfo, E'\nURL: ' || nar_key || E'\n') > 0
        AND strpos(narinfo, E'\nCompression: ' || compression || E'\n') > 0
        AND strpos(narinfo, E'\nFileHash: ' || file_hash || E'\n') > 0
        AND strpos(narinfo, E'\nFileSize: ' || file_size || E'\n') > 0
        AND strpos(narinfo, E'\nNarHash: ' || nar_hash || E'\n') > 0
        AND strpos(narinfo, E'\nNarSize: ' || nar_size || E'\n') > 0
        AND right(narinfo, 1) = E'\n'
        AND strpos(narinfo, E'\r') = 0
    )
);
-- GC: is this NAR still used by some path (several paths with identical contents share one NAR)?
CREATE INDEX store_paths_nar_key_idx ON store_paths (nar_key);


-- The References of each published path; a path may reference itself. A path can only be deleted after every
-- path that references it (design.md invariant 1: deletion goes referrers-first).
--
-- The reference foreign key is NO ACTION DEFERRABLE INITIALLY IMMEDIATE rather than RESTRICT: it refuses exactly
-- the same deletes, and by default just as early (at the end of the statement), but a GC sweep transaction may
-- run SET CONSTRAINTS path_references_reference_fkey DEFERRED to delete a batch that contains both a referrer and
-- its reference in one statement (with an immediate check such a statement fails or not depending on row order).
-- Inserts stay immediate: the KEY SHARE lock on the referenced path is taken when the row is inserted.
CREATE TABLE path_references (
    referrer   text NOT NULL REFERENCES store_paths (hash) ON DELETE CASCADE,
    reference  text NOT NULL,
    PRIMARY KEY (referrer, reference),
    CONSTRAINT path_references_reference_fkey FOREIGN KEY (reference) REFERENCES store_paths (hash)
        ON DELETE NO ACTION DEFERRABLE INITIALLY IMMEDIATE
);
-- GC mark and "who references this path?": the reverse direction of the primary key.
CREATE INDEX path_references_reference_idx ON path_references (reference);


-- Files that belong to a store path and live exactly as long as it (design.md invariant 6): its .ls listing, the
-- build log of its deriver, CA realisations. One build log is shared by all outputs of a derivation, so one key
-- can belong to several paths; the object is garbage once no row names it.
CREATE TABLE path_files (
    hash  text NOT NULL REFERENCES store_paths (hash) ON DELETE CASCADE,
    key   text NOT NULL REFERENCES objects (key) ON DELETE RESTRICT,
    kind  text NOT NULL,
    PRIMARY KEY (hash, key),
    CONSTRAINT path_files_kind_check CHECK (kind IN ('ls', 'log', 'realisation')),
    CONSTRAINT path_files_key_matches_kind CHECK (object_key_kind(key) = kind),
    CONSTRAINT path_files_ls_is_own CHECK (kind <> 'ls' OR key = hash || '.ls')
);
-- GC: is this log/listing/realisation still owned by some path?
CREATE INDEX path_files_key_idx ON path_files (key);


-- Pushed roots: a path the client named as a root of a push, kept while last_pushed_at is younger than the
-- retention window (gc.older_than). Each push of the same root moves last_pushed_at forward.
CREATE TABLE roots (
    hash             text        PRIMARY KEY REFERENCES store_paths (hash) ON DELETE CASCADE,
    first_pushed_at  timestamptz NOT NULL DEFAULT now(),
    last_pushed_at   timestamptz NOT NULL DEFAULT now(),
    last_session     uuid                                  -- the upload session that pushed it last (no FK:
                                                           -- sessions are forgotten long before roots expire)
);
-- GC: roots that expired.
CREATE INDEX roots_last_pushed_at_idx ON roots (last_pushed_at);


-- Named pins: kept until deleted, whatever their age. A pinned path cannot be deleted (RESTRICT).
CREATE TABLE pins (
    name        text        PRIMARY KEY,
    hash        text        NOT NULL REFERENCES store_paths (hash) ON DELETE RESTRICT,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text,                                      -- the token name that set the pin
    CONSTRAINT pins_name_check CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$')
);
-- GC mark, and "which pins hold this path?".
CREATE INDEX pins_hash_idx ON pins (hash);


-- One push: opened by the client's request, completed (narinfos published, rows committed) or aborted, or expired
-- by GC. An open session is a GC root for every key it claims.
CREATE TABLE upload_sessions (
    id               uuid        PRIMARY KEY,
    idempotency_key  text,                                 -- the client's key: a retried "open" finds the session
    token_name       text        NOT NULL,                 -- the API token that opened it
    state            text        NOT NULL DEFAULT 'open',
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,                 -- moved forward while the client keeps calling
    last_seen_at     timestamptz NOT NULL DEFAULT now(),   -- the client's last call
    completed_at     timestamptz,
    request          jsonb       NOT NULL,                 -- the validated push request
    request_digest   text        NOT NULL,                 -- digest of the request: a retry must send the same
    result           jsonb,                                -- the answer to "complete", replayed on retries
    -- Idempotency keys are scoped to the token: two clients that happen to pick the same key do not collide.
    CONSTRAINT upload_sessions_idempotency_key_key UNIQUE (token_name, idempotency_key),
    CONSTRAINT upload_sessions_state_check
        CHECK (state IN ('open', 'completing', 'completed', 'aborted', 'expired')),
    CONSTRAINT upload_sessions_idempotency_key_check CHECK (length(idempotency_key) BETWEEN 1 AND 200),
    CONSTRAINT upload_sessions_token_name_check CHECK (token_name <> ''),
    CONSTRAINT upload_sessions_completed_check CHECK (state <> 'completed' OR completed_at IS NOT NULL),
    CONSTRAINT upload_sessions_request_check CHECK (jsonb_typeof(request) = 'object')
);
-- GC: open sessions past their expiry.
CREATE INDEX upload_sessions_state_expires_at_idx ON upload_sessions (state, expires_at);


-- The keys an upload session will write (uploader) or waits for another session to write (not uploader).
--
-- GC fencing: inserting a claim checks the foreign key to objects, which takes a FOR KEY SHARE lock on the object
-- row. A GC sweep holds the rows it deletes FOR UPDATE (which conflicts with FOR KEY SHARE) from before the S3
-- DELETE until its transaction commits, so a session claiming a key that is being swept blocks until the sweep
-- commits, then fails with a foreign-key violation and must create the object row again (pending) and upload it
-- again. It never sees a key as present that is about to disappear. The sweep, in turn, re-checks for claims
-- after taking its locks, in a new statement. ON DELETE RESTRICT: an object cannot vanish under a live claim.
CREATE TABLE session_claims (
    session_id  uuid    NOT NULL REFERENCES upload_sessions (id) ON DELETE CASCADE,
    key         text    NOT NULL REFERENCES objects (key) ON DELETE RESTRICT,
    upload_id   text,                                      -- the S3 multipart upload id, if multipart
    uploader    boolean NOT NULL,                          -- true: this session uploads it; false: it waits
    PRIMARY KEY (session_id, key),
    CONSTRAINT session_claims_upload_id_check CHECK (upload_id IS NULL OR (uploader AND upload_id <> ''))
);
-- GC: is this key claimed by any session? Push: who else is uploading this key?
CREATE INDEX session_claims_key_idx ON session_claims (key);
-- At most one session uploads a key at a time: the others wait for it (action "none", reason "in_progress").
-- A claim left by a session that went away is taken over by deleting it first (niks3d/db/uploads.py take_over).
CREATE UNIQUE INDEX session_claims_one_uploader_idx ON session_claims (key) WHERE uploader;


-- Garbage-collection runs, durable so that a client can follow one and a restart does not lose it.
CREATE TABLE gc_runs (
    id            bigserial   PRIMARY KEY,
    state         text        NOT NULL DEFAULT 'running',
    phase         text        NOT NULL,
    params        jsonb       NOT NULL,
    counts        jsonb       NOT NULL DEFAULT '{}',
    bytes_freed   bigint      NOT NULL DEFAULT 0,
    dry_run       boolean     NOT NULL,
    forced        boolean     NOT NULL,
    error         text,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    owner         text        NOT NULL,                    -- which process runs it (host and pid)
    CONSTRAINT gc_runs_state_check CHECK (state IN ('running', 'finished', 'failed', 'interrupted')),
    CONSTRAINT gc_runs_finished_check CHECK ((state = 'running') = (finished_at IS NULL)),
    CONSTRAINT gc_runs_bytes_freed_check CHECK (bytes_freed >= 0),
    CONSTRAINT gc_runs_params_check CHECK (jsonb_typeof(params) = 'object'),
    CONSTRAINT gc_runs_counts_check CHECK (jsonb_typeof(counts) = 'object')
);
-- The latest runs first (GET /gc, `niks3 gc` status).
CREATE INDEX gc_runs_started_at_idx ON gc_runs (started_at DESC);
