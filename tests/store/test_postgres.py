"""PostgreSQL beyond the shared contract: a platform on it end to end, the Grafana samples view,
reconnecting after the server goes away, clear start-up errors and versioned migrations."""

from __future__ import annotations

import inspect
import re
import threading
import time

import numpy as np
import psycopg
import pytest
from conftest import PUMP, T0, obs
from postgres_support import PG_URL, Proxy, fresh_schema, postgres_platform, require_postgres

from livetwin.errors import NotFound, Unavailable
from livetwin.store.base import JournalEntry
from livetwin.store.buffer import Segment, chunk_rows
from livetwin.store.open import open_store
from livetwin.store.postgres import PostgresStore, available_migrations, migrate, safe_url
from livetwin.store.sqlite import SqliteStore

pytestmark = pytest.mark.services  # needs a real service (see conftest.py)


@pytest.fixture
def pg_url():
    with fresh_schema() as url:
        yield url


def ingest_rounds(p, rounds: range, twins: int = 20) -> None:
    for r in rounds:
        rows = [
            obs(f"p{i}", T0 + r * 1000 + i, flow=float(r * 100 + i), pressure=2.0)
            for i in range(twins)
        ]
        assert p.ingest(rows).accepted == twins


def state(p) -> dict:
    return {f"p{i}": p.twin(f"p{i}") for i in range(20)}


# ---- a platform on PostgreSQL -----------------------------------------------------------------


def test_platform_ingests_restarts_and_recovers_from_postgres(pg_url, tmp_path, monkeypatch, clock):
    p = postgres_platform(monkeypatch, tmp_path / "a", pg_url, clock=clock)
    assert isinstance(p.core.store, PostgresStore)
    p.put_type("pump", PUMP)
    ingest_rounds(p, range(5))
    p.snapshot()  # history flushed to PostgreSQL
    ingest_rounds(p, range(5, 8))
    before, history = state(p), p.history("p3", ["flow", "power"])
    p.close()

    again = postgres_platform(monkeypatch, tmp_path / "a", pg_url, clock=clock)
    assert again.recovered["snapshot_seq"] == 9  # close() wrote a final snapshot
    assert state(again) == before
    assert again.history("p3", ["flow", "power"]) == history
    again.close()

    # a new machine with an empty data directory: everything comes back from the database,
    # state from the snapshot kept there (nothing to replay)
    fresh = postgres_platform(monkeypatch, tmp_path / "b", pg_url, clock=clock)
    assert fresh.recovered["snapshot_seq"] == 9
    assert fresh.recovered["replayed_observations"] == 0
    assert state(fresh) == before
    kept = [seq for (seq,) in psycopg.connect(pg_url).execute("SELECT seq FROM snapshots")]
    assert sorted(kept) == [6, 9]  # the two newest are kept
    assert fresh.history("p3", ["flow"])["series"]["flow"] == [float(r * 100 + 3) for r in range(8)]
    assert [e["values"]["flow"] for e in fresh.events("p3", limit=3)] == [703.0, 603.0, 503.0]
    fresh.close()


def test_samples_view_returns_the_ingested_values_for_grafana(pg_url, tmp_path, monkeypatch, clock):
    with postgres_platform(monkeypatch, tmp_path / "d", pg_url, clock=clock) as p:
        p.put_type("pump", PUMP)
        ingest_rounds(p, range(3))
        p.ingest([obs("p1", T0 + 5000, flow=9.0)])  # pressure absent: no pressure sample
        p.snapshot()
        expected_power = p.history("p1", ["power"])["series"]["power"]
    with psycopg.connect(pg_url) as conn:
        flows = conn.execute(
            "SELECT ts, value FROM livetwin_samples WHERE twin = 'p1' AND name = 'flow' ORDER BY ts"
        ).fetchall()
        assert [v for _, v in flows] == [1.0, 101.0, 201.0, 9.0]
        assert flows[0][0].timestamp() * 1000 == T0 + 1
        pressure = conn.execute(
            "SELECT count(*) FROM livetwin_samples WHERE twin = 'p1' AND name = 'pressure'"
        ).fetchone()[0]
        assert pressure == 3
        power = conn.execute(
            "SELECT value FROM livetwin_samples WHERE twin = 'p1' AND type = 'pump'"
            " AND name = 'power' ORDER BY ts"
        ).fetchall()
        assert [v for (v,) in power] == pytest.approx([v for v in expected_power if v is not None])
        # the form a Grafana panel uses: only chunks inside the dashboard's time range
        between = conn.execute(
            "SELECT ts AS time, value FROM livetwin_samples_between("
            "to_timestamp(%s / 1000.0), to_timestamp(%s / 1000.0))"
            " WHERE twin = 'p1' AND name = 'flow' ORDER BY 1",
            (T0 + 1000, T0 + 5000),
        ).fetchall()
        assert [v for _, v in between] == [101.0, 201.0]


# ---- the server goes away and comes back --------------------------------------------------


def entry(seq: int) -> JournalEntry:
    return JournalEntry(seq, T0, "type", "pump", 0, b"{}")


def test_terminated_connections_are_replaced(pg_url):
    store = PostgresStore(pg_url, timeout_s=2, retry_s=5)
    try:
        store.commit([entry(1)], [("k1", 1)], [])
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'livetwin' AND pid <> pg_backend_pid()"
            ).fetchone()[0]
        assert killed >= 1
        store.commit([entry(2)], [("k2", 2)], [])
        assert [e.seq for e in store.journal()] == [1, 2]
    finally:
        store.close()


def test_commit_raises_while_the_server_is_away_and_works_when_it_is_back():
    require_postgres()
    proxy = Proxy().up()
    with fresh_schema() as direct:
        schema = direct.rsplit("%3D", 1)[1]
        store = PostgresStore(proxy.url(schema), timeout_s=1, retry_s=10)
        try:
            store.commit([entry(1)], [], [])
            proxy.down()
            with pytest.raises(Unavailable) as err:
                store.commit([entry(2)], [], [])
            assert "unreachable" in err.value.message and "reconnects" in err.value.fix
            threading.Timer(0.5, proxy.up).start()
            assert store.last_seq() == 1  # waits for the server, then reconnects
            store.commit([entry(2)], [], [])
            assert [e.seq for e in store.journal()] == [1, 2]
        finally:
            store.close()
            proxy.down()


def test_platform_loses_no_acknowledged_data_across_an_outage(tmp_path, monkeypatch, clock):
    require_postgres()
    proxy = Proxy().up()
    with fresh_schema() as direct:
        schema = direct.rsplit("%3D", 1)[1]
        options = {"timeout_s": 1, "retry_s": 15}
        p = postgres_platform(
            monkeypatch, tmp_path / "a", proxy.url(schema), store_options=options, clock=clock
        )
        try:
            p.put_type("pump", PUMP)
            assert p.ingest([obs("a", T0, flow=1.0)]).accepted == 1
            proxy.down()
            with pytest.raises(Unavailable):
                p.ingest([obs("b", T0, flow=2.0)])  # not acknowledged
            proxy.up()
            deadline = time.monotonic() + 15
            while True:  # the writer rebuilds from the journal once it can read it again
                try:
                    assert p.ingest([obs("c", T0, flow=3.0)]).accepted == 1
                    break
                except Unavailable:
                    assert time.monotonic() < deadline, "no reconnect after the outage"
                    time.sleep(0.2)
        finally:
            p.close()
            proxy.down()
        again = postgres_platform(monkeypatch, tmp_path / "b", direct, clock=clock)
        try:
            assert again.twin("a")["properties"]["flow"] == 1.0
            assert again.twin("c")["properties"]["flow"] == 3.0
            with pytest.raises(NotFound):
                again.twin("b")
        finally:
            again.close()


def test_a_history_flush_reported_lost_but_committed_is_not_stored_twice(pg_url):
    store = PostgresStore(pg_url, timeout_s=2)
    try:
        seg = Segment(
            "pump", 1, np.array([1, 2]), np.array([T0, T0]), np.array([3, 3]), np.ones((2, 2))
        )
        later = Segment(
            "pump", 1, np.array([1]), np.array([T0 - 5]), np.array([4]), np.zeros((1, 2))
        )
        store.write_history(chunk_rows([seg]), 3)  # committed, but say the ack was lost
        store.write_history(chunk_rows([seg, later]), 4)  # the flusher retries with more rows
        [chunk] = store.history(1, 0, 2**62, 4)
        assert chunk.ts.tolist() == [T0 - 5, T0]
        assert len(store.history(2, 0, 2**62, 4)) == 1
    finally:
        store.close()


# ---- clear errors at start --------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, words",
    [
        ("postgresql://postgres:s3cret@127.0.0.1:1/test", "cannot connect to PostgreSQL"),
        ("postgresql://postgres@127.0.0.1:5432/no_such_db_here", "cannot connect to PostgreSQL"),
        ("postgresql://postgres@127.0.0.1:5432/test?bogus_option=1", "not a valid PostgreSQL URL"),
    ],
)
def test_a_wrong_url_is_one_clear_line_without_the_password(url, words):
    require_postgres()
    with pytest.raises(Unavailable) as err:
        PostgresStore(url, timeout_s=2)
    message = err.value.message
    assert words in message and "\n" not in message
    assert "s3cret" not in message and err.value.field == "LIVETWIN_DATABASE_URL"
    assert "postgresql://" in err.value.fix
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_safe_url_hides_the_password():
    assert safe_url("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert safe_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert "pw" not in safe_url("host=h password=pw dbname=d").replace("password", "")


def test_open_store_chooses_the_backend_in_one_place(tmp_path, monkeypatch, pg_url):
    monkeypatch.delenv("LIVETWIN_DATABASE_URL", raising=False)
    sqlite = open_store(tmp_path / "s")
    assert isinstance(sqlite, SqliteStore)
    sqlite.close()
    monkeypatch.setenv("LIVETWIN_DATABASE_URL", pg_url)
    pg = open_store(tmp_path / "s")
    assert isinstance(pg, PostgresStore)
    pg.close()
    explicit = open_store(tmp_path / "s", database_url="")  # explicit beats the environment
    assert isinstance(explicit, SqliteStore)
    explicit.close()
    with pytest.raises(Unavailable, match="must be a postgresql:// URL"):
        open_store(tmp_path / "s", database_url="mysql://root@localhost/db")


# ---- migrations -------------------------------------------------------------------------------


def test_migrations_are_applied_once_and_recorded(pg_url):
    PostgresStore(pg_url).close()
    PostgresStore(pg_url).close()
    with psycopg.connect(pg_url) as conn:
        rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY 1").fetchall()
    assert rows == [(v, n) for v, n, _ in available_migrations()]


def test_a_failed_migration_is_rolled_back_with_a_clear_error(pg_url):
    shipped = available_migrations()
    broken = (99, "broken", "CREATE TABLE half_done (x int); SELECT no_such_column FROM journal;")
    with pytest.raises(Unavailable) as err:
        PostgresStore(pg_url, migrations=[*shipped, broken])
    assert "migration 0099_broken failed and was rolled back" in err.value.message
    assert "no_such_column" in err.value.message
    with psycopg.connect(pg_url) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations")]
        assert 99 not in versions and len(versions) == len(shipped)
        assert conn.execute("SELECT to_regclass('half_done')").fetchone()[0] is None
    PostgresStore(pg_url).close()  # the shipped migrations still start fine


def test_a_database_newer_than_the_code_is_refused(pg_url):
    shipped = available_migrations()
    future = (shipped[-1][0] + 1, "future", "CREATE TABLE from_the_future (x int);")
    PostgresStore(pg_url, migrations=[*shipped, future]).close()
    with pytest.raises(Unavailable, match="newer than this livetwin knows"):
        PostgresStore(pg_url)


def test_shipped_migrations_are_numbered_and_never_destructive():
    shipped = available_migrations()
    assert [v for v, _, _ in shipped] == list(range(1, len(shipped) + 1))
    destructive = re.compile(r"\b(DROP|TRUNCATE|DELETE|ALTER\s+TABLE\s+\S+\s+DROP)\b", re.I)
    for version, name, step in shipped:
        text = step if isinstance(step, str) else inspect.getsource(step)  # a code migration
        code = "\n".join(line.split("--")[0] for line in text.splitlines())
        assert not destructive.search(code), f"migration {version}_{name} is destructive"


def test_migrate_takes_a_connection(pg_url):
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {pg_url.rsplit('%3D', 1)[1]}")
        assert migrate(conn, available_migrations()) == [v for v, _, _ in available_migrations()]
        assert migrate(conn, available_migrations()) == []


def test_a_calibration_runs_on_postgres(monkeypatch, tmp_path):
    """The calibration job end to end on PostgreSQL: filter state saved and the run recorded."""
    from calibration_support import feed
    from conftest import FakeClock

    from livetwin.examples.rollers import ROLLER_TYPE, roller_fleet

    ids = ["line-1", "line-2"]
    with fresh_schema() as url:
        platform = postgres_platform(monkeypatch, tmp_path / "d", url, clock=FakeClock(T0 + 10**8))
        try:
            platform.put_type("roller_line", ROLLER_TYPE)
            feed(platform, roller_fleet(len(ids), seed=3), ids, 20, 0)
            record = platform.calibrate("roller_line")
            assert record["status"] == "succeeded", record
            assert platform.core.store.calibration_state("roller_line") is not None
            (run,) = platform.core.store.calibration_runs("roller_line", 5)
            assert run["status"] == "succeeded" and run["started"] == record["started"]
        finally:
            platform.close()
