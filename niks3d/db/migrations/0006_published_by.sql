-- niks3d schema version 6: who published each store path (docs/database.md, "store_paths").
--
-- A build log PUT by stock Nix carries no proof of its own; it is accepted for the outputs of its .drv that the
-- same identity published (docs/security.md, rule 3). Paths published before this version, and imported ones,
-- have no publisher: only a trusted writer or a `niks3 push` of their outputs adds their logs.

ALTER TABLE store_paths
    ADD COLUMN published_by text,
    ADD CONSTRAINT store_paths_published_by_check CHECK (published_by IS NULL OR published_by <> '');
