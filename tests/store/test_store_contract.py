"""The storage contract (livetwin/store/base.py), the same tests against every backend:
SQLite in a temporary directory and PostgreSQL in a fresh schema on 127.0.0.1:5432."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from postgres_support import fresh_schema

from livetwin.engine.batch import Batch, encode_batch
from livetwin.spec.types import parse_type_spec
from livetwin.store.base import JournalEntry
from livetwin.store.buffer import Segment, chunk_rows
from livetwin.store.keys import scoped_key
from livetwin.store.sqlite import SqliteStore

T0 = 1_795_341_600_000
SPEC = parse_type_spec({"properties": {"flow": {}, "pressure": {}}}, "pump")
SPEC_JSON = orjson.dumps(SPEC.model_dump(mode="json", exclude={"name"})).decode()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def backend(request, tmp_path):
    """(open, kind): `open()` opens the store on the same data each time it is called
    (PostgreSQL: `open(migrations=...)` applies only those)."""
    if request.param == "sqlite":
        yield (lambda: SqliteStore(tmp_path / "data")), "sqlite"
        return
    from livetwin.store.postgres import PostgresStore

    with fresh_schema() as url:
        yield (lambda **kw: PostgresStore(url, timeout_s=2, retry_s=2, **kw)), "postgres"


@pytest.fixture
def store(backend):
    s = backend[0]()
    yield s
    s.close()


def obs_entry(
    seq: int, twins: list[str], uids: list[int], ts0: int = T0, keys: list | None = None
) -> JournalEntry:
    n = len(twins)
    batch = Batch(
        "pump",
        twins,
        np.arange(ts0, ts0 + n, dtype=np.int64),
        ("flow",),
        np.arange(n, dtype=np.float64).reshape(1, n),
        keys=keys,
        uids=np.asarray(uids, dtype=np.int64),
    )
    return JournalEntry(seq, T0 + seq, "obs", "pump", n, encode_batch(batch))


def type_entry(seq: int) -> tuple[JournalEntry, tuple[str, int, str, int]]:
    body = b'{"version":1,"spec":%s}' % SPEC_JSON.encode()
    return JournalEntry(seq, T0, "type", "pump", 0, body), ("pump", 1, SPEC_JSON, T0)


def history_rows(uids, ts, seq: int, width: int = 2, version: int = 1) -> list[tuple]:
    uids, ts = np.asarray(uids, dtype=np.int64), np.asarray(ts, dtype=np.int64)
    values = np.column_stack([ts % 1000 + k / 10 for k in range(width)]).astype(float)
    return chunk_rows(
        [Segment("pump", version, uids, ts, np.full(len(ts), seq, dtype=np.int64), values)]
    )


def test_an_empty_store_is_empty(store):
    assert store.last_seq() == 0
    assert store.history_seq() == 0
    assert list(store.journal()) == []
    assert store.journal_size() == (0, 0)
    assert store.known_keys(["a", "b"]) == set()
    assert store.type_versions("pump") == []
    assert store.extractors() == {}
    assert store.configs("mqtt") == {}
    assert store.calibration_state("pump") is None
    assert store.calibration_runs("pump", 10) == []
    assert store.history(1, 0, 2**62, 10) == []
    assert list(store.recent(1, 2**62, 10)) == []


def test_commit_then_read_the_journal_in_order(store):
    define, version = type_entry(1)
    store.commit([define], [], [version])
    entries = [obs_entry(2, ["p1", "p2"], [1, 2]), obs_entry(3, ["p2", "p3"], [2, 3])]
    store.commit(entries, [("k1", 2), ("k2", 3)], [])
    assert store.last_seq() == 3
    got = list(store.journal())
    assert [e.seq for e in got] == [1, 2, 3]
    assert got[1] == entries[0] and got[2] == entries[1]
    assert isinstance(got[2].body, bytes)
    assert [e.seq for e in store.journal(after=2)] == [3]
    assert store.journal_size() == (3, 4)
    assert store.journal_size(after=1) == (2, 4)
    assert store.known_keys(["k1", "nope", "k2"]) == {"k1", "k2"}
    assert store.type_versions("pump") == [(1, SPEC_JSON, T0)]


def test_a_failed_commit_stores_nothing_of_it(store):
    store.commit([obs_entry(1, ["p1"], [1])], [("k1", 1)], [])
    with pytest.raises(Exception):  # noqa: B017 - each backend raises its driver's error
        store.commit([obs_entry(2, ["p2"], [2]), obs_entry(1, ["p3"], [3])], [("k2", 2)], [])
    assert [e.seq for e in store.journal()] == [1]
    assert store.known_keys(["k1", "k2"]) == {"k1"}
    store.commit([obs_entry(2, ["p2"], [2])], [("k2", 2)], [])  # the store is still usable
    assert store.last_seq() == 2


def test_type_versions_oldest_first(store):
    spec2 = parse_type_spec({"properties": {"flow": {}}, "derived": {"x": "flow * 2"}}, "pump")
    spec2_json = orjson.dumps(spec2.model_dump(mode="json", exclude={"name"})).decode()
    store.commit(
        [
            JournalEntry(1, T0, "type", "pump", 0, b"{}"),
            JournalEntry(2, T0, "type", "pump", 0, b"{}"),
        ],
        [],
        [("pump", 1, SPEC_JSON, T0), ("pump", 2, spec2_json, T0 + 5)],
    )
    assert store.type_versions("pump") == [(1, SPEC_JSON, T0), (2, spec2_json, T0 + 5)]
    assert store.type_versions("other") == []


def test_history_round_trip_with_filters(store):
    rows = history_rows([1, 2, 1, 1], [T0 + 30, T0 + 5, T0 + 10, T0 + 20], seq=4)
    store.write_history(rows, 4)
    assert store.history_seq() == 4
    [chunk] = store.history(1, T0, T0 + 100, 4)
    assert chunk.uid == 1 and chunk.version == 1
    assert chunk.ts.tolist() == [T0 + 10, T0 + 20, T0 + 30]
    assert chunk.seqs.tolist() == [4, 4, 4]
    assert chunk.ts.dtype == np.int64 and chunk.values.dtype == np.float64
    np.testing.assert_array_equal(chunk.values, [[10, 10.1], [20, 20.1], [30, 30.1]])
    assert store.history(1, T0 + 31, T0 + 100, 4) == []  # after the chunk
    assert store.history(1, T0, T0 + 10, 4) == []  # ends before the chunk starts
    assert len(store.history(1, T0 + 30, T0 + 31, 4)) == 1  # touches its last row
    assert store.history(1, T0, T0 + 100, 3) == []  # flushed after the reader's max_seq
    assert store.history(3, T0, T0 + 100, 4) == []
    # NumPy integers are bound as integers on every backend
    assert len(store.history(np.int64(1), np.int64(T0), np.int64(T0 + 100), np.int64(4))) == 1


def test_history_across_type_versions_and_flushes(store):
    store.write_history(history_rows([1], [T0 + 1], seq=1, width=2, version=1), 1)
    store.write_history(history_rows([1], [T0 + 2], seq=2, width=3, version=2), 2)
    chunks = store.history(1, 0, 2**62, 2)
    assert [(c.version, c.values.shape) for c in chunks] == [(1, (1, 2)), (2, (1, 3))]
    assert store.history_seq() == 2


def test_recent_newest_first_over_many_chunks(store):
    for k in range(40):  # more than one page of chunks
        store.write_history(
            history_rows([7, 8], [T0 + 100 * k, T0 + 100 * k + 1], seq=k + 1), k + 1
        )
    got = list(store.recent(7, T0 + 3_050, 40))
    assert [ts_max for ts_max, _ in got] == [T0 + 100 * k for k in range(30, -1, -1)]
    assert all(c.uid == 7 and c.ts.tolist() == [t] for t, c in got)
    assert [t for t, _ in store.recent(7, 2**62, 5)] == [T0 + 100 * k for k in range(4, -1, -1)]
    stream = store.recent(8, 2**62, 40)
    assert next(stream)[0] == T0 + 3_901  # a reader may stop early
    stream.close()


def test_extractors_and_configuration(store):
    store.put_extractor("dev", '{"a":1}', T0)
    store.put_extractor("dev", '{"a":2}', T0 + 1)
    store.put_extractor("other", '{"b":1}', T0)
    assert store.extractors() == {"dev": '{"a":2}', "other": '{"b":1}'}
    assert store.delete_extractor("other") and not store.delete_extractor("other")
    assert store.extractors() == {"dev": '{"a":2}'}
    store.put_config("mqtt", "plant", '{"topic":"x"}', T0)
    store.put_config("mqtt", "plant", '{"topic":"y"}', T0 + 1)
    store.put_config("hook", "plant", '{"url":"z"}', T0)
    assert store.configs("mqtt") == {"plant": '{"topic":"y"}'}
    assert store.delete_config("mqtt", "plant") is True
    assert store.delete_config("mqtt", "plant") is False
    assert store.configs("mqtt") == {}
    assert store.configs("hook") == {"plant": '{"url":"z"}'}


def test_calibration_state_and_runs(store):
    first = store.save_calibration("pump", b"\x00state1", {"started": T0, "ok": True}, T0)
    failed = store.add_calibration_run("pump", {"started": T0 + 1, "ok": False, "error": "x"})
    second = store.save_calibration("pump", b"\x00state2", {"started": T0 + 2, "n": 3}, T0 + 2)
    store.add_calibration_run("fan", {"started": "2026-11-22T10:00:00Z"})  # as the job writes
    assert first < failed < second
    assert store.calibration_state("pump") == b"\x00state2"
    assert store.calibration_state("fan") is None
    runs = store.calibration_runs("pump", 10)
    assert [r["id"] for r in runs] == [second, failed, first]
    assert runs[1] == {"id": failed, "started": T0 + 1, "ok": False, "error": "x"}
    assert len(store.calibration_runs("pump", 2)) == 2


def test_everything_survives_reopening(backend):
    open_store, _ = backend
    store = open_store()
    define, version = type_entry(1)
    store.commit([define, obs_entry(2, ["p1"], [1])], [("k", 2)], [version])
    store.write_history(history_rows([1], [T0], seq=2), 2)
    store.put_extractor("dev", "{}", T0)
    store.save_calibration("pump", b"s", {"started": T0}, T0)
    store.close()
    again = open_store()
    try:
        assert again.last_seq() == 2
        assert again.known_keys(["k"]) == {"k"}
        assert again.history_seq() == 2
        assert len(again.history(1, 0, 2**62, 2)) == 1
        assert again.extractors() == {"dev": "{}"}
        assert again.calibration_state("pump") == b"s"
        assert again.type_versions("pump") == [(1, SPEC_JSON, T0)]
    finally:
        again.close()


def open_before_scoped_keys(kind: str, open_store):
    """A store as livetwin wrote it before idempotency keys were scoped by twin."""
    if kind == "sqlite":
        store = open_store()
        store._conn().execute("PRAGMA user_version = 0")
        return store
    from livetwin.store.postgres import available_migrations

    return open_store(migrations=available_migrations()[:3])


def test_keys_stored_before_scoping_are_scoped_by_their_twin_in_place(backend):
    open_store, kind = backend
    old = open_before_scoped_keys(kind, open_store)
    define, version = type_entry(1)
    entries = [
        define,
        obs_entry(2, ["p1", "p2"], [1, 2], keys=["k1", None]),
        obs_entry(3, ["p3", "p1"], [3, 1], keys=["k2", "k3"]),
    ]
    old.commit(entries, [("k1", 2), ("k2", 3), ("k3", 3)], [version])
    assert old.known_keys(["k1"]) == {"k1"}  # global, as it was
    old.close()
    for _ in range(2):  # migrating once; opening again changes nothing
        store = open_store()
        try:
            wanted = [scoped_key(t, k) for t in ("p1", "p2", "p3") for k in ("k1", "k2", "k3")]
            assert store.known_keys([*wanted, "k1", "k2"]) == {
                scoped_key("p1", "k1"),
                scoped_key("p3", "k2"),
                scoped_key("p1", "k3"),
            }
            assert store.last_seq() == 3
        finally:
            store.close()
