"""Backup while ingest runs, restore into a fresh directory, same state and history; on SQLite
and on PostgreSQL (a fresh schema, restored into a new database). Clear errors for a non-empty
target and a folder that is no backup."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest
from conftest import T0, FakeClock, obs
from postgres_support import PG_URL, fresh_schema, postgres_platform, schema_url
from s3_support import CREDENTIALS, REGION, moto_s3, s3_client
from typer.testing import CliRunner

from livetwin.backup import backup, restore
from livetwin.cli import app
from livetwin.errors import InvalidInput, NotFound
from livetwin.platform import Platform, Settings

TYPE = {"properties": {"temp": {}}, "derived": {"twice": "temp * 2"}}
TWINS = [f"t-{k}" for k in range(20)]


def _ingest_until(platform, stop: threading.Event, done: list) -> None:
    k = 0
    while not stop.is_set() or k < 20:
        platform.ingest([obs(t, T0 + k * 1000, "thing", temp=float(k)) for t in TWINS])
        k += 1
    done.append(k)


def _backup_under_load(platform, make_backup) -> None:
    platform.put_type("thing", TYPE)
    stop, done = threading.Event(), []
    writer = threading.Thread(target=_ingest_until, args=(platform, stop, done))
    writer.start()
    try:
        deadline = time.monotonic() + 60
        while platform.stats()["journal_observations"] < 10 * len(TWINS):
            assert time.monotonic() < deadline and writer.is_alive(), "ingest did not start"
            time.sleep(0.01)
        make_backup()
    finally:
        stop.set()
        writer.join()


def _same(restored, seq: int) -> None:
    """The restored platform holds exactly the journal up to `seq` (the backup's)."""
    twin = restored.twin("t-0")
    steps = int(twin["properties"]["temp"]) + 1
    assert restored.stats()["last_seq"] >= seq > 1
    for t in TWINS:
        history = restored.history(t, ["temp", "twice"], start=T0)
        assert history["series"]["temp"] == [float(k) for k in range(steps)]
        assert history["series"]["twice"] == [2.0 * k for k in range(steps)]


def test_sqlite_backup_under_load_restores_state_and_history(tmp_path):
    clock = FakeClock()
    settings = Settings(run_schedules=False, history_flush_s=0.05)
    with Platform(tmp_path / "data", clock=clock, settings=settings) as platform:
        _backup_under_load(platform, lambda: backup(tmp_path / "data", str(tmp_path / "bk")))
    manifest = (tmp_path / "bk" / "manifest.json").read_text()
    assert "history.db" in manifest and "livetwin.db" in manifest
    restore(str(tmp_path / "bk"), tmp_path / "restored")
    with Platform(tmp_path / "restored", clock=clock, settings=settings) as restored:
        _same(restored, 2)


def test_restore_refuses_a_non_empty_directory_and_a_non_backup(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(InvalidInput) as caught:
        restore(str(tmp_path), tmp_path / "full")
    assert "not empty" in caught.value.message and caught.value.field == "data"
    with pytest.raises(NotFound) as caught:
        restore(str(tmp_path / "full"), tmp_path / "new")
    assert "not a livetwin backup" in caught.value.message
    assert not (tmp_path / "new").exists()
    result = CliRunner().invoke(app, ["restore", str(tmp_path), "--data", str(tmp_path / "full")])
    assert result.exit_code == 2 and "not empty" in result.output
    assert (tmp_path / "full" / "x").read_text() == "keep me"


def test_postgres_backup_under_load_restores_into_a_new_database(tmp_path, monkeypatch):
    clock = FakeClock()
    settings = Settings(run_schedules=False, history_flush_s=0.05)
    database = f"lt_restore_{uuid.uuid4().hex[:10]}"
    with fresh_schema() as url:
        schema = url.split("%3D")[-1]
        with postgres_platform(
            monkeypatch, tmp_path / "data", url, clock=clock, settings=settings
        ) as platform:
            _backup_under_load(
                platform,
                lambda: backup(tmp_path / "data", str(tmp_path / "bk"), database_url=url),
            )
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        try:
            target = schema_url(schema, PG_URL.rsplit("/", 1)[0] + "/" + database)
            restore(str(tmp_path / "bk"), tmp_path / "restored", database_url=target)
            with pytest.raises(InvalidInput) as caught:  # the schemas are there now
                restore(str(tmp_path / "bk"), tmp_path / "again", database_url=target)
            assert "already has the schemas" in caught.value.message
            with postgres_platform(
                monkeypatch, tmp_path / "restored", target, clock=clock, settings=settings
            ) as restored:
                _same(restored, 2)
        finally:
            with psycopg.connect(PG_URL, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def test_backup_to_s3_and_restore_from_it(tmp_path, monkeypatch):
    with moto_s3() as endpoint:
        env = {
            "LIVETWIN_S3_ENDPOINT": endpoint,
            "LIVETWIN_S3_REGION": REGION,
            **CREDENTIALS,
            "LIVETWIN_OUTBOUND_ALLOW": "127.0.0.0/8",
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        s3_client(endpoint).create_bucket(Bucket="backups")
        clock = FakeClock()
        with Platform(tmp_path / "data", clock=clock, settings=Settings(run_schedules=False)) as p:
            p.put_type("thing", TYPE)
            p.ingest([obs(t, T0, "thing", temp=1.5) for t in TWINS])
            runner = CliRunner()
            target = "s3://backups/site-a/one"
            done = runner.invoke(app, ["backup", "--data", str(tmp_path / "data"), "--to", target])
            assert done.exit_code == 0, done.output
            again = runner.invoke(app, ["backup", "--data", str(tmp_path / "data"), "--to", target])
            assert again.exit_code == 2 and "holds a backup already" in again.output
        back = runner.invoke(app, ["restore", target, "--data", str(tmp_path / "restored")])
        assert back.exit_code == 0, back.output
        with Platform(
            tmp_path / "restored", clock=clock, settings=Settings(run_schedules=False)
        ) as r:
            assert r.twin("t-3")["properties"]["temp"] == 1.5
