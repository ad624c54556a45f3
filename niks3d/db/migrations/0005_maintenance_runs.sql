-- niks3d schema version 5: a record of `niks3d import` and `niks3d fsck` runs (docs/operations.md).
--
-- An import registers the bucket's objects batch by batch; until it has finished, objects that no row tracks
-- yet belong to paths it will register. A garbage collection would take them for orphans and delete them, so
-- GC refuses to run while the newest import is not `finished` (a killed import leaves its row `running`, a
-- failed or stopped one `failed` or `interrupted`; running the import again to its end lifts the refusal).
-- fsck rows are the record of the last check.

CREATE TABLE maintenance_runs (
    id           bigserial   PRIMARY KEY,
    command      text        NOT NULL,
    state        text        NOT NULL DEFAULT 'running',
    owner        text        NOT NULL,                     -- which process runs it (host and pid)
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    counts       jsonb       NOT NULL DEFAULT '{}',
    problems     integer,                                  -- problems left at the end (the exit code's reason)
    error        text,
    CONSTRAINT maintenance_runs_command_check CHECK (command IN ('import', 'fsck')),
    CONSTRAINT maintenance_runs_state_check CHECK (state IN ('running', 'finished', 'failed', 'interrupted')),
    CONSTRAINT maintenance_runs_finished_check CHECK ((state = 'running') = (finished_at IS NULL)),
    CONSTRAINT maintenance_runs_counts_check CHECK (jsonb_typeof(counts) = 'object')
);
-- The newest run of a command (GC's check, the last fsck).
CREATE INDEX maintenance_runs_command_idx ON maintenance_runs (command, id DESC);
