-- livetwin's tables on PostgreSQL: the same contract as the SQLite store (livetwin/store/sqlite.py).
-- Times are epoch milliseconds (bigint), as everywhere in livetwin.

CREATE TABLE journal (
    seq bigint PRIMARY KEY,
    at bigint NOT NULL,
    kind text NOT NULL,
    type text NOT NULL,
    count integer NOT NULL,
    body bytea NOT NULL
);
-- bodies are compact binary already: store them out of line without compressing them again
ALTER TABLE journal ALTER COLUMN body SET STORAGE EXTERNAL;

CREATE TABLE idempotency (
    key text PRIMARY KEY,
    seq bigint NOT NULL
);

-- columns: the value columns of the type version, in the order history chunks store them
CREATE TABLE types (
    name text NOT NULL,
    version integer NOT NULL,
    spec text NOT NULL,
    created bigint NOT NULL,
    columns text[] NOT NULL,
    PRIMARY KEY (name, version)
);

-- every twin the journal has created: its engine id (uid), its id and its type
CREATE TABLE twins (
    uid bigint PRIMARY KEY,
    twin text NOT NULL,
    type text NOT NULL
);
CREATE INDEX twins_twin ON twins (twin);

CREATE TABLE extractors (
    name text PRIMARY KEY,
    spec text NOT NULL,
    updated bigint NOT NULL
);

CREATE TABLE config (
    kind text NOT NULL,
    name text NOT NULL,
    spec text NOT NULL,
    updated bigint NOT NULL,
    PRIMARY KEY (kind, name)
);

CREATE TABLE calibration_state (
    type text PRIMARY KEY,
    state bytea NOT NULL,
    updated bigint NOT NULL
);

CREATE TABLE calibration_runs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type text NOT NULL,
    started bigint NOT NULL,
    record jsonb NOT NULL
);
CREATE INDEX calibration_runs_type ON calibration_runs (type, id);

-- History: one row per twin and flush ("chunk"), rows sorted by (ts, seq) inside.
-- vals is a 2-D array [n][columns] in the column order of types.columns.
CREATE TABLE history (
    uid bigint NOT NULL,
    ts_min bigint NOT NULL,
    ts_max bigint NOT NULL,
    seq_min bigint NOT NULL,
    seq_max bigint NOT NULL,
    version integer NOT NULL,
    n integer NOT NULL,
    ts bigint[] NOT NULL,
    seqs bigint[] NOT NULL,
    vals double precision[] NOT NULL,
    PRIMARY KEY (uid, ts_min, seq_min)
);

CREATE TABLE meta (
    key text PRIMARY KEY,
    value bigint NOT NULL
);
