-- Retention (livetwin/store/rollup.py, journal/compaction.py): rollups of history per twin,
-- bucket size and period (one row holds store.rollup.ROLLUP_PERIOD buckets, zlib-compressed),
-- and the base snapshot a compacted journal starts from.

CREATE TABLE rollups (
    uid bigint NOT NULL,
    bucket bigint NOT NULL,
    period bigint NOT NULL,
    version integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (uid, bucket, period)
);
ALTER TABLE rollups ALTER COLUMN data SET STORAGE EXTERNAL;  -- compressed already

CREATE TABLE base_snapshot (
    id integer PRIMARY KEY CHECK (id = 1),
    seq bigint NOT NULL,
    data bytea NOT NULL,
    created bigint NOT NULL
);
ALTER TABLE base_snapshot ALTER COLUMN data SET STORAGE EXTERNAL;

-- the compact job finds the chunks flushed since its previous run (store.touched)
CREATE INDEX history_seq_max ON history (seq_max);
