-- Engine snapshots in the database, so a node that starts with an empty data directory loads
-- the newest one instead of replaying the whole journal. The two newest are kept.

CREATE TABLE snapshots (
    seq BIGINT PRIMARY KEY,
    data BYTEA NOT NULL,
    created BIGINT NOT NULL
);
ALTER TABLE snapshots ALTER COLUMN data SET STORAGE EXTERNAL;  -- an npz: already compressed or not worth it
