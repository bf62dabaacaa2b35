"""Crash safety: a process ingesting at full speed is SIGKILLed at random moments; after each
restart every acknowledged observation is present exactly once and the recovered state (snapshot
plus journal tail) equals a replay of the whole journal from scratch. On SQLite and on
PostgreSQL."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from postgres_support import fresh_schema

from livetwin.engine.batch import decode_batch
from livetwin.engine.engine import Engine
from livetwin.journal import snapshot
from livetwin.journal.replay import replay
from livetwin.platform import Platform, Settings

CHILD = r"""
import os, sys, threading, orjson
from pathlib import Path
from livetwin.platform import Platform, Settings

data, run = Path(sys.argv[1]), sys.argv[2]
p = Platform(data, settings=Settings(snapshot_every=3000, snapshot_interval_s=0.2))
p.put_type("m", {"properties": {"a": {}, "b": {}}, "derived": {"s": "a + b", "w": "avg(a, '1m')"}})
attempts = data / "attempt.json"
if attempts.exists():  # a client retrying the batch that was in flight when it was killed
    p.ingest(orjson.loads(attempts.read_bytes()))
acks = open(data / "acked.txt", "a")
lock = threading.Lock()

def work(worker):
    i = 0
    while True:
        rows = [{"twin": f"t{(i * 7 + k) % 500}", "type": "m", "ts": 1795341600000 + i * 1000 + k,
                 "values": {"a": float(k), "b": float(i % 13)}, "key": f"{run}-{worker}-{i}-{k}"}
                for k in range(100)]
        if worker == 0:  # written atomically: the kill may come at any moment
            tmp = attempts.with_suffix(".tmp")
            tmp.write_bytes(orjson.dumps(rows))
            os.replace(tmp, attempts)
        result = p.ingest(rows)
        assert result.accepted + result.duplicates == 100, result
        with lock:
            acks.write("".join(r["key"] + "\n" for r in rows))
            acks.flush()
        i += 1

threading.Thread(target=work, args=(1,), daemon=True).start()
work(0)
"""


def journal_keys(platform: Platform) -> Counter:
    keys: Counter = Counter()
    for entry in platform.core.store.journal():
        if entry.kind == "obs":
            keys.update(decode_batch(entry.body).keys or [])
    return keys


def assert_same_state(a: Engine, b: Engine) -> None:
    meta_a, arrays_a = snapshot.capture(a, 0)
    meta_b, arrays_b = snapshot.capture(b, 0)
    assert meta_a == meta_b
    assert arrays_a.keys() == arrays_b.keys()
    for key in arrays_a:
        np.testing.assert_array_equal(arrays_a[key], arrays_b[key], err_msg=key)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.services)])
def database_url(request):
    """'' for the embedded SQLite store, or a fresh PostgreSQL schema's URL."""
    if request.param == "sqlite":
        yield ""
        return
    with fresh_schema() as url:
        yield url


def test_sigkill_at_random_moments_loses_nothing_acknowledged(tmp_path: Path, database_url):
    rng = random.Random(20261123)
    data = tmp_path / "data"
    data.mkdir()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env["LIVETWIN_DATABASE_URL"] = database_url
    for run in range(6):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(data), f"r{run}"], env=env, stderr=subprocess.PIPE
        )
        acked_file = data / "acked.txt"
        before = acked_file.stat().st_size if acked_file.exists() else 0
        deadline = time.monotonic() + 60
        while (acked_file.stat().st_size if acked_file.exists() else 0) <= before:
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < deadline, "the child never acknowledged anything"
            time.sleep(0.02)
        time.sleep(rng.uniform(0.05, 1.0))  # killed at a random moment of full-speed ingest
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stderr.close()

        acked = acked_file.read_text().split()
        with Platform(data, settings=Settings(database_url=database_url)) as platform:
            expected = "PostgresStore" if database_url else "SqliteStore"
            assert type(platform.core.store).__name__ == expected
            keys = journal_keys(platform)
            assert all(keys[k] == 1 for k in acked), "an acknowledged observation is missing"
            assert max(keys.values()) == 1, "an observation was stored twice"
            scratch = Engine()
            replay(scratch, platform.core.store.journal())
            assert_same_state(platform.core.engine, scratch)
            assert platform.recovered["last_seq"] == platform.core.store.last_seq()
    assert len(acked) > 1000
