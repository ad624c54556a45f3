-- niks3d schema version 7: which build logs were published with their proof (docs/security.md, rule 3).
--
-- A log is `proven` when it was published with the proof that its derivation built a path of the same push
-- (`niks3 push` sends the .drv) or by the identity that published that output (a stock PUT, the .drv in the
-- cache). A log without that proof (a trusted writer spared it, or published before this version) is not, and a
-- proven log replaces it in place. Which logs from before this version were checked is not recorded: they are
-- all marked unproven, so the genuine log of each can still take their place.

ALTER TABLE objects
    ADD COLUMN proven boolean NOT NULL DEFAULT false,
    ADD CONSTRAINT objects_proven_check CHECK (NOT proven OR (kind = 'log' AND state = 'present'));
