"""Ingest benchmarks: HTTP and in-process throughput, read latency under load, one request at the
body limit, memory at 1M twins.

Run with `livetwin bench ingest [--json] [--quick]`; each scenario prints one JSON line.
`--backend sqlite|postgres|both` runs the storage-backend comparison instead (ingest through COPY,
history writes, history query p50/p99; PostgreSQL from LIVETWIN_DATABASE_URL or 127.0.0.1:5432).
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import orjson

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

from common import (  # noqa: E402
    PROPS,
    ROOT,
    T0,
    Report,
    Server,
    cpu_seconds,
    observations,
    percentile_ms,
    rolling_batch,
    temp_dir,
    type_spec,
)

N_TWINS = 10_000  # twins t0..t9999 of the throughput scenarios
BATCH = 1_000  # observations per request / ingest call
WARMUP = N_TWINS // BATCH  # untimed batches first: they create every twin
HTTP_CLIENTS = 6
SDK_THREADS = 3
SDK_REPEAT = 3
CLIENT_NOTE = (
    "client and server share the machine's cores: the load generator (bodies pre-serialised "
    "with orjson) runs in this process, the server in a `livetwin serve` subprocess"
)


def main(json_only: bool = False, quick: bool = False, backend: str | None = None) -> None:
    report = Report(json_only, quick)
    if backend is not None:
        backend_scenarios(report, backend)
        report.table("livetwin bench ingest --backend " + backend + (" (--quick)" if quick else ""))
        return
    sizes = {
        "http": 100 if quick else 600,  # timed batches of 1,000 observations
        "read": 100 if quick else 600,
        "sdk": 60 if quick else 400,
        "twins_1m": 100_000 if quick else 1_000_000,
    }
    with temp_dir("livetwin-bench-ingest-") as tmp:
        # The memory child runs first, while this process is still small: on Linux a child's
        # ru_maxrss starts from its parent's high-water mark (fork + exec keeps it).
        memory = run_memory_child(report, tmp, sizes["twins_1m"])
        http_scenarios(report, tmp, sizes["http"], sizes["read"])
        max_request(report, tmp)
        sdk_scenarios(report, tmp, sizes["sdk"])
        emit_memory(report, memory)
    report.table("livetwin bench ingest" + (" (--quick)" if quick else ""))


# ---- 1 + 3: HTTP ingest, its SQLite baseline, reads under load ------------------------------


def http_scenarios(report: Report, tmp: Path, n_batches: int, n_read_batches: int) -> None:
    import httpx

    rng = np.random.default_rng(1)
    total = WARMUP + n_batches + n_read_batches
    report.note(f"preparing {total} request bodies of {BATCH} observations ...")
    batches = [rolling_batch(k, N_TWINS, BATCH, rng) for k in range(total)]
    bodies = [orjson.dumps(b) for b in batches]
    warmup, timed, under_read = (
        bodies[:WARMUP],
        bodies[WARMUP : WARMUP + n_batches],
        bodies[WARMUP + n_batches :],
    )

    report.note(f"http_ingest: {n_batches} x {BATCH} observations, {HTTP_CLIENTS} clients ...")
    with Server(tmp / "http") as server:
        r = httpx.put(server.url + "/api/types/bench", json=type_spec(), timeout=30)
        r.raise_for_status()
        _post_all(server.url, warmup, clients=1)  # creates the 10,000 twins, untimed
        cpu0 = cpu_seconds(server.proc.pid)
        load = _post_all(server.url, timed, clients=HTTP_CLIENTS)
        load["server_cpu_cores"] = round((cpu_seconds(server.proc.pid) - cpu0) / load["seconds"], 2)

        report.note("read_latency_under_load ...")
        idle = idle_reads(server.url, 300 if len(under_read) < 200 else 1000)
        cpu0 = cpu_seconds(server.proc.pid)
        loaded = _post_all(server.url, under_read, clients=HTTP_CLIENTS, reader=True)
        loaded["server_cpu_cores"] = round(
            (cpu_seconds(server.proc.pid) - cpu0) / loaded["seconds"], 2
        )

    report.note("sqlite_baseline ...")
    base = sqlite_baseline(tmp / "baseline.db", batches[WARMUP : WARMUP + n_batches])
    ratio = load["values_per_s"] / base["values_per_s"]
    valid = load["failures"] == 0
    report.emit(
        "http_ingest",
        values_per_s=load["values_per_s"],
        observations_per_s=load["observations_per_s"],
        p99_ms=load["request_p99_ms"],
        baseline_ratio=ratio,
        target=">= 200000 values/s",
        meets_target=valid and load["values_per_s"] >= 200_000,
        valid=valid,
        **_public(load),
        batch=BATCH,
        values_per_observation=len(PROPS),
        twins=N_TWINS,
        clients=HTTP_CLIENTS,
        note=CLIENT_NOTE + "; every batch is acknowledged only once durable (fsync); p99_ms is "
        "the POST round trip",
    )
    report.emit(
        "sqlite_baseline",
        values_per_s=base["values_per_s"],
        observations_per_s=base["observations_per_s"],
        n=base["n"],
        seconds=base["seconds"],
        rows=base["rows"],
        note="plain table (twin TEXT, ts INTEGER, name TEXT, value REAL), one row per value, "
        "executemany, WAL + synchronous=FULL, one transaction per 1,000-observation batch, "
        "same process, rows prepared before timing",
    )
    reads = loaded["reads"]
    valid = loaded["failures"] == 0 and reads["failures"] == 0
    p99 = reads["p99_ms"]
    report.emit(
        "read_latency_under_load",
        values_per_s=loaded["values_per_s"],
        observations_per_s=loaded["observations_per_s"],
        p99_ms=p99,
        target="p99 < 20 ms",
        meets_target=valid and p99 is not None and p99 < 20,
        valid=valid,
        p50_ms=reads["p50_ms"],
        max_ms=reads["max_ms"],
        idle_p50_ms=idle["p50_ms"],
        idle_p99_ms=idle["p99_ms"],
        reads=reads["n"],
        read_failures=reads["failures"],
        reads_per_s=reads["per_s"],
        ingest_n=loaded["n"],
        ingest_seconds=loaded["seconds"],
        ingest_failures=loaded["failures"],
        request_p99_ms=_r(loaded["request_p99_ms"]),
        values_per_s_by_quarter=loaded["values_per_s_by_quarter"],
        server_cpu_cores=loaded["server_cpu_cores"],
        client_cpu_cores=loaded["client_cpu_cores"],
        clients=HTTP_CLIENTS,
        note="p99_ms: GET /api/twins/{random id} while HTTP ingest runs at full speed; "
        + CLIENT_NOTE
        + "; one reader in its own process (as a dashboard would be), latency measured "
        "client side; idle_*_ms: the same GETs with "
        "no ingest running",
    )


# ---- one request at the body limit ----------------------------------------------------------


def max_request(report: Report, tmp: Path) -> None:
    """One POST /api/ingest of the largest body the server accepts: seconds and the server's
    peak RSS (VmHWM of the `livetwin serve` process)."""
    import httpx

    sys.path.insert(0, str(ROOT))
    from livetwin.settings import Settings

    limit = Settings().max_body_bytes // (4 if report.quick else 1)
    body, n = _body_at_limit(limit)
    report.note(f"max_request: one body of {len(body) / 2**20:.1f} MiB, {n:,} observations ...")
    with Server(tmp / "max-request") as server:
        httpx.put(server.url + "/api/types/b", json=type_spec(), timeout=30).raise_for_status()
        rss_before = _proc_status_mb(server.proc.pid, "VmHWM")
        started = time.perf_counter()
        r = httpx.post(server.url + "/api/ingest", content=body, timeout=600)
        seconds = time.perf_counter() - started
        peak = _proc_status_mb(server.proc.pid, "VmHWM")
    valid = r.status_code == 200 and r.json()["accepted"] == n
    report.emit(
        "max_request",
        values_per_s=n * len(PROPS) / seconds,
        observations_per_s=n / seconds,
        target="peak RSS < 250 MB" if not report.quick else None,
        meets_target=(valid and peak < 250) if not report.quick else None,
        valid=valid,
        seconds=round(seconds, 2),
        n=n,
        body_mb=round(len(body) / 2**20, 2),
        peak_rss_mb=round(peak, 1),
        rss_before_mb=round(rss_before, 1),
        status=r.status_code,
        note="one POST /api/ingest of a body at Settings.max_body_bytes (32 MiB; --quick: a "
        "quarter) of observations (10,000 twins in turn, 5 integer values each); seconds: "
        "the round trip; peak_rss_mb: VmHWM of the `livetwin serve` process after it, "
        "rss_before_mb: before (type declared, server idle)",
    )


def _body_at_limit(limit: int) -> tuple[bytes, int]:
    """A JSON array of as many observations as fit in `limit` bytes (twins t0..t9999 in turn,
    timestamps 1 ms apart, 5 small integer values), and their count."""
    row = b'{"twin":"t%d","type":"b","ts":%d,"values":{"a":%d,"b":%d,"c":%d,"d":%d,"e":%d}}'
    n = (limit - 2) // (len(row % (N_TWINS - 1, T0, 10, 10, 10, 10, 10)) + 1)
    body = b",".join(
        row % (i % N_TWINS, T0 + i, i % 97, i % 89, i % 83, i % 79, i % 73) for i in range(n)
    )
    return b"[" + body + b"]", n


def _proc_status_mb(pid: int | str, field: str) -> float:
    """A memory figure of /proc/<pid>/status (VmRSS: now, VmHWM: peak) in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _public(load: dict) -> dict:
    keys = ("n", "seconds", "failures", "first_failure", "request_p50_ms")
    keys += ("values_per_s_by_quarter",)
    keys += ("server_cpu_cores", "client_cpu_cores")
    return {k: load[k] for k in keys}


READER = """
import sys, threading, time
import httpx, numpy as np, orjson
url, n_twins = sys.argv[1], int(sys.argv[2])
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
rng, latencies, failures = np.random.default_rng(2), [], 0
with httpx.Client(base_url=url, timeout=120) as client:
    print("ready", flush=True)
    while not stop.is_set():
        t = time.perf_counter()
        try:
            ok = client.get(f"/api/twins/t{int(rng.integers(n_twins))}").status_code == 200
        except httpx.HTTPError:
            ok = False
        latencies.append(time.perf_counter() - t)
        failures += not ok
sys.stdout.write(orjson.dumps({"latencies": latencies, "failures": failures}).decode())
"""


def _post_all(url: str, bodies: list[bytes], *, clients: int, reader: bool = False) -> dict:
    """POST every body once from `clients` threads; optionally read random twins meanwhile."""
    import httpx

    counter = itertools.count()
    lock = threading.Lock()
    accepted = [0]
    failures: list[str] = []
    latencies: list[float] = []
    finished: list[float] = []
    start = threading.Barrier(clients + 1)
    headers = {"content-type": "application/json"}

    def post() -> None:
        mine: list[float] = []
        with httpx.Client(base_url=url, timeout=120) as client:
            start.wait()
            while (i := next(counter)) < len(bodies):
                t = time.perf_counter()
                try:
                    r = client.post("/api/ingest", content=bodies[i], headers=headers)
                except httpx.HTTPError as exc:
                    with lock:
                        failures.append(f"batch {i}: {exc!r}")
                    continue
                now = time.perf_counter()
                mine.append(now - t)
                ok = r.status_code == 200 and orjson.loads(r.content).get("accepted") == BATCH
                with lock:
                    if ok:
                        accepted[0] += BATCH
                        finished.append(now)
                    else:
                        failures.append(f"batch {i}: HTTP {r.status_code} {r.text[:200]}")
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=post) for _ in range(clients)]
    if reader:  # its own process, as a dashboard would be: the load generator's GIL stays out
        reader_proc = subprocess.Popen(
            [sys.executable, "-c", READER, url, str(N_TWINS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        reader_proc.stdout.readline()  # "ready"
    for th in threads:
        th.start()
    start.wait()
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    for th in threads:
        th.join()
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds() - cpu0
    if reader:
        reader_proc.stdin.close()
        result = orjson.loads(reader_proc.stdout.read())
        reader_proc.wait()
        reads, read_failures = result["latencies"], [result["failures"]]
    out = {
        "n": accepted[0],
        "seconds": round(seconds, 3),
        "values_per_s": accepted[0] * len(PROPS) / seconds,
        "observations_per_s": accepted[0] / seconds,
        "failures": len(failures),
        "first_failure": failures[0] if failures else None,
        "request_p50_ms": _r(percentile_ms(latencies, 50)),
        "request_p99_ms": percentile_ms(latencies, 99),
        "client_cpu_cores": round(cpu / seconds, 2),
        "values_per_s_by_quarter": _by_quarter(finished, t0, seconds),
    }
    if reader:
        out["reads"] = {
            "n": len(reads),
            "failures": read_failures[0],
            "per_s": round(len(reads) / seconds),
            "p50_ms": _r(percentile_ms(reads, 50)),
            "p99_ms": percentile_ms(reads, 99),
            "max_ms": _r(max(reads) * 1e3 if reads else None),
        }
    return out


def _by_quarter(finished: list[float], t0: float, seconds: float) -> list[int]:
    """Values per second acknowledged in each quarter of the run (shows any slow-down)."""
    quarter = np.minimum(((np.asarray(finished) - t0) / seconds * 4).astype(int), 3)
    counts = np.bincount(quarter, minlength=4) if len(finished) else np.zeros(4, int)
    return [round(c * BATCH * len(PROPS) / (seconds / 4)) for c in counts.tolist()]


def idle_reads(url: str, n: int) -> dict:
    """GET /api/twins/{random id} latency with no other load, for comparison."""
    import httpx

    rng = np.random.default_rng(7)
    samples = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(n):
            path = f"/api/twins/t{int(rng.integers(N_TWINS))}"
            t = time.perf_counter()
            client.get(path).raise_for_status()
            samples.append(time.perf_counter() - t)
    return {"p50_ms": _r(percentile_ms(samples, 50)), "p99_ms": _r(percentile_ms(samples, 99))}


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def sqlite_baseline(path: Path, batches: list[list[dict]]) -> dict:
    """The same observations as one row per value in a plain SQLite table, durable per batch."""
    prepared = [
        [(o["twin"], o["ts"], name, v) for o in batch for name, v in o["values"].items()]
        for batch in batches
    ]
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE obs (twin TEXT, ts INTEGER, name TEXT, value REAL)")
    started = time.perf_counter()
    for rows in prepared:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO obs VALUES (?,?,?,?)", rows)
        conn.execute("COMMIT")
    seconds = time.perf_counter() - started
    conn.close()
    n = sum(len(b) for b in batches)
    rows = sum(len(r) for r in prepared)
    return {
        "n": n,
        "rows": rows,
        "seconds": round(seconds, 3),
        "values_per_s": rows / seconds,
        "observations_per_s": n / seconds,
    }


# ---- 2: in-process ingest -------------------------------------------------------------------


def sdk_scenarios(report: Report, tmp: Path, n_batches: int) -> None:
    rng = np.random.default_rng(3)
    batches = [rolling_batch(k, N_TWINS, BATCH, rng) for k in range(WARMUP + n_batches)]
    for threads, name in ((SDK_THREADS, "sdk_ingest"), (1, "sdk_ingest_1thread")):
        report.note(
            f"{name}: {n_batches} x {BATCH} observations, {threads} thread(s), "
            f"median of {SDK_REPEAT} runs ..."
        )
        runs = [_sdk_run(tmp / f"{name}-{k}", batches, threads) for k in range(SDK_REPEAT)]
        result = sorted(runs, key=lambda r: r["values_per_s"])[len(runs) // 2]
        valid = all(r["failures"] == 0 for r in runs)
        report.emit(
            name,
            values_per_s=result["values_per_s"],
            observations_per_s=result["observations_per_s"],
            target=">= 500000 values/s" if threads > 1 else None,
            meets_target=(valid and result["values_per_s"] >= 500_000) if threads > 1 else None,
            valid=valid,
            n=result["n"],
            seconds=result["seconds"],
            failures=sum(r["failures"] for r in runs),
            values_per_s_all_runs=[round(r["values_per_s"]) for r in runs],
            threads=threads,
            batch=BATCH,
            twins=N_TWINS,
            cpu_cores=result["cpu_cores"],
            close_seconds=result["close_seconds"],
            values_per_s_incl_close=result["values_per_s_incl_close"],
            note="median of 3 runs (each on a fresh directory, all listed); "
            "platform.ingest(list of dicts) in-process, timed until the last call "
            "returns (journal durable: validation, apply, journal write and fsync with group "
            "commit); close_seconds is the platform.close() that follows (deferred work such "
            "as buffered history and the final snapshot), counted in values_per_s_incl_close",
        )


def _sdk_run(path: Path, batches: list[list[dict]], threads: int) -> dict:
    from livetwin.platform import Platform

    return _timed_ingest(Platform(path), batches, threads)


def _timed_ingest(platform, batches: list[list[dict]], threads: int) -> dict:
    """Warm up (create the twins), then time the other batches from `threads` threads; closes
    the platform (the close is timed separately)."""
    with platform:
        platform.put_type("bench", type_spec())
        for b in batches[:WARMUP]:
            platform.ingest(b)
        timed = batches[WARMUP:]
        counter = itertools.count()
        accepted, failures = [0], [0]
        lock = threading.Lock()
        start = threading.Barrier(threads + 1)

        def work() -> None:
            start.wait()
            while (i := next(counter)) < len(timed):
                n = platform.ingest(timed[i]).accepted
                with lock:
                    accepted[0] += n
                    failures[0] += n != BATCH

        pool = [threading.Thread(target=work) for _ in range(threads)]
        for th in pool:
            th.start()
        start.wait()
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        for th in pool:
            th.join()
        seconds = time.perf_counter() - t0
        cpu = cpu_seconds() - cpu0
        started = time.perf_counter()
        platform.close()  # drains deferred work (buffered history, final snapshot)
        close_s = time.perf_counter() - started
    return {
        "n": accepted[0],
        "failures": failures[0],
        "seconds": round(seconds, 3),
        "values_per_s": accepted[0] * len(PROPS) / seconds,
        "observations_per_s": accepted[0] / seconds,
        "cpu_cores": round(cpu / seconds, 2),
        "close_seconds": round(close_s, 3),
        "values_per_s_incl_close": round(accepted[0] * len(PROPS) / (seconds + close_s)),
    }


# ---- 5: storage backends compared (--backend sqlite|postgres|both) ----------------------------

BACKENDS = ("sqlite", "postgres")
PG_DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
HISTORY_QUERIES = 500


def backend_scenarios(report: Report, backend: str) -> None:
    """Platform ingest (journal by COPY on PostgreSQL), raw history writes and history queries
    on each chosen backend, then the SQLite/PostgreSQL ratios when both ran."""
    if backend not in (*BACKENDS, "both"):
        raise SystemExit(f"--backend must be sqlite, postgres or both, not {backend!r}")
    chosen = BACKENDS if backend == "both" else (backend,)
    n_batches = 60 if report.quick else 400
    rng = np.random.default_rng(3)
    batches = [rolling_batch(k, N_TWINS, BATCH, rng) for k in range(WARMUP + n_batches)]
    results: dict[str, dict] = {}
    with temp_dir("livetwin-bench-backend-") as tmp:
        for name in chosen:
            with _backend_location(name, tmp) as location:
                report.note(f"{name}: ingest {n_batches} x {BATCH} observations ...")
                ingest = _backend_ingest(location, batches)
                report.note(f"{name}: history writes and {HISTORY_QUERIES} history queries ...")
                copy = _history_write(location)
                query = _history_queries(location)
            results[name] = {"ingest": ingest, "copy": copy, "query": query}
            _emit_backend(report, name, location, results[name])
    if len(results) == 2:
        sq, pg = results["sqlite"], results["postgres"]
        report.emit(
            "backend_ratio",
            values_per_s=None,
            observations_per_s=None,
            baseline_ratio=sq["ingest"]["values_per_s"] / pg["ingest"]["values_per_s"],
            ingest_sqlite_over_postgres=round(
                sq["ingest"]["values_per_s"] / pg["ingest"]["values_per_s"], 3
            ),
            ingest_incl_close_sqlite_over_postgres=round(
                sq["ingest"]["values_per_s_incl_close"] / pg["ingest"]["values_per_s_incl_close"],
                3,
            ),
            history_write_sqlite_over_postgres=round(
                sq["copy"]["values_per_s"] / pg["copy"]["values_per_s"], 3
            ),
            query_p50_postgres_over_sqlite=round(pg["query"]["p50_ms"] / sq["query"]["p50_ms"], 3),
            query_p99_postgres_over_sqlite=round(pg["query"]["p99_ms"] / sq["query"]["p99_ms"], 3),
            note="baseline_ratio = SQLite ingest values/s / PostgreSQL ingest values/s (> 1: "
            "SQLite faster); query ratios > 1: PostgreSQL slower",
        )


def _emit_backend(report: Report, name: str, location: dict, result: dict) -> None:
    ingest, copy, query = result["ingest"], result["copy"], result["query"]
    postgres = name == "postgres"
    valid = ingest["failures"] == 0
    where = location.get("safe_url", "SQLite files in a temporary directory")
    report.emit(
        f"ingest_{name}",
        values_per_s=ingest["values_per_s"],
        observations_per_s=ingest["observations_per_s"],
        target=">= 150000 values/s" if postgres else None,
        meets_target=(valid and ingest["values_per_s_incl_close"] >= 150_000) if postgres else None,
        valid=valid,
        **{k: ingest[k] for k in ("n", "seconds", "failures", "cpu_cores", "close_seconds")},
        values_per_s_incl_close=ingest["values_per_s_incl_close"],
        threads=SDK_THREADS,
        batch=BATCH,
        twins=N_TWINS,
        backend=name,
        database=where,
        note="platform.ingest(list of dicts) from 3 threads, timed until the last call returns "
        "(journal durable: "
        + (
            "COPY journal + idempotency in one transaction per group commit, synchronous_commit"
            if postgres
            else "SQLite WAL, synchronous=FULL"
        )
        + "); values_per_s_incl_close adds the close() that flushes buffered history"
        + (" (binary COPY of array chunks)" if postgres else "")
        + " and writes the final snapshot; the target is judged on values_per_s_incl_close",
    )
    report.emit(
        f"history_write_{name}",
        values_per_s=copy["values_per_s"],
        observations_per_s=copy["observations_per_s"],
        n=copy["n"],
        seconds=copy["seconds"],
        chunks=copy["chunks"],
        backend=name,
        note="store.write_history of prepared chunk rows (buffer.chunk_rows), "
        f"{copy['n']:,} observations over {N_TWINS:,} twins per call, median of 5 calls; "
        + (
            "one binary COPY of int8[]/float8[] arrays per call"
            if postgres
            else "executemany of blobs, one transaction per call"
        ),
    )
    report.emit(
        f"history_query_{name}",
        values_per_s=None,
        observations_per_s=None,
        p99_ms=query["p99_ms"],
        p50_ms=query["p50_ms"],
        max_ms=query["max_ms"],
        queries=query["n"],
        rows_per_query=query["rows_per_query"],
        backend=name,
        note="platform.history(random twin, all names, whole range) after a restart, so every "
        "row comes from the store (chunks decoded and assembled), one thread",
    )


class _backend_location:
    """Where a backend keeps its data for one run: a directory, plus a fresh PostgreSQL schema
    (dropped afterwards) for postgres."""

    def __init__(self, name: str, tmp: Path):
        self.name, self.tmp = name, tmp

    def __enter__(self) -> dict:
        import uuid

        self.location = {"name": self.name, "path": self.tmp / self.name}
        if self.name == "postgres":
            from livetwin.store.postgres import safe_url

            base = os.environ.get("LIVETWIN_DATABASE_URL") or PG_DEFAULT_URL
            self.schema = f"lt_bench_{uuid.uuid4().hex[:10]}"
            sep = "&" if "?" in base else "?"
            self.base = base
            self.location["url"] = f"{base}{sep}options=-csearch_path%3D{self.schema}"
            self.location["safe_url"] = safe_url(base)
        return self.location

    def __exit__(self, *exc) -> None:
        if self.name == "postgres":
            import psycopg

            with psycopg.connect(self.base, autocommit=True) as conn:
                conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
                services = conn.execute(  # the services' schemas: <schema>_alarms, ...
                    "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s",
                    (self.schema + "\\_%",),
                ).fetchall()
                for (name,) in services:
                    conn.execute(f'DROP SCHEMA "{name}" CASCADE')


def _open_platform(location: dict, path: Path):
    """A Platform on the location's backend, chosen through LIVETWIN_DATABASE_URL."""
    import livetwin.platform as platform_module

    url = location.get("url", "")
    previous = os.environ.get("LIVETWIN_DATABASE_URL")
    os.environ["LIVETWIN_DATABASE_URL"] = url
    try:
        platform = platform_module.Platform(path)
    finally:
        if previous is None:
            del os.environ["LIVETWIN_DATABASE_URL"]
        else:
            os.environ["LIVETWIN_DATABASE_URL"] = previous
    expected = "PostgresStore" if url else "SqliteStore"
    opened = type(platform.core.store).__name__
    if opened != expected:
        raise SystemExit(f"the platform opened a {opened}, not {expected}")
    return platform


def _backend_ingest(location: dict, batches: list[list[dict]]) -> dict:
    """Like sdk_ingest (3 threads), on the location's backend; the data stays for the queries."""
    platform = _open_platform(location, location["path"] / "ingest")
    return _timed_ingest(platform, batches, SDK_THREADS)


def _history_write(location: dict) -> dict:
    """write_history of 100,000 observations (10 per twin) per call, straight to the store."""
    from livetwin.store.buffer import Segment, chunk_rows
    from livetwin.store.open import open_store

    n = 100_000
    rng = np.random.default_rng(5)
    store = open_store(location["path"] / "raw", database_url=location.get("url", ""))
    seconds = []
    try:
        for k in range(5):
            uids = np.arange(n, dtype=np.int64) % N_TWINS + 1_000_000
            ts = T0 + 10**9 * (k + 1) + np.arange(n, dtype=np.int64)
            seqs = np.full(n, 10**6 + k, dtype=np.int64)
            rows = chunk_rows([Segment("raw", 1, uids, ts, seqs, rng.random((n, len(PROPS))))])
            t = time.perf_counter()
            store.write_history(rows, 10**6 + k)
            seconds.append(time.perf_counter() - t)
    finally:
        store.close()
    median = sorted(seconds)[len(seconds) // 2]
    return {
        "n": n,
        "chunks": len(rows),
        "seconds": round(median, 4),
        "values_per_s": n * len(PROPS) / median,
        "observations_per_s": n / median,
    }


def _history_queries(location: dict) -> dict:
    platform = _open_platform(location, location["path"] / "ingest")
    rng = np.random.default_rng(6)
    samples, rows = [], 0
    try:
        for _ in range(HISTORY_QUERIES):
            twin = f"t{int(rng.integers(N_TWINS))}"
            t = time.perf_counter()
            result = platform.history(twin)
            samples.append(time.perf_counter() - t)
            rows += len(result["ts"])
    finally:
        platform.close()
    return {
        "n": len(samples),
        "p50_ms": round(percentile_ms(samples, 50), 3),
        "p99_ms": round(percentile_ms(samples, 99), 3),
        "max_ms": round(max(samples) * 1e3, 3),
        "rows_per_query": round(rows / len(samples), 1),
    }


# ---- 4: memory at a million twins (in a subprocess, so RSS is clean) -------------------------

MEMORY_BATCH = 10_000


def run_memory_child(report: Report, tmp: Path, n_twins: int) -> dict:
    report.note(f"memory_1m_twins: {n_twins:,} twins in a subprocess ...")
    proc = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(n_twins), str(tmp / "memory")],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def emit_memory(report: Report, child: dict) -> None:
    n_twins = child["n_twins"]
    peak = max(child[k] for k in child if k.endswith("_mb") and k != "rss_before_platform_mb")
    report.emit(
        "memory_1m_twins",
        values_per_s=child["values_per_s"],
        observations_per_s=child["observations_per_s"],
        target="peak RSS < 1500 MB at 1M twins",
        meets_target=peak < 1500 if n_twins >= 1_000_000 else None,
        **{k: v for k, v in child.items() if k not in ("values_per_s", "observations_per_s")},
        note="one observation of 5 values per twin, platform.ingest in batches of 10,000; "
        "rates count ingest calls only (close_seconds: the close() after them, which drains "
        "deferred work); peak_rss_mb is VmHWM of the child (ingest done, "
        "before close), ru_maxrss_mb the getrusage figure, vm_rss_mb VmRSS at that point, "
        "*_after_close_mb include the final snapshot; the target is judged on the largest "
        "of these figures"
        + ("; --quick: 100,000 twins, so the 1M target is not judged" if n_twins < 1e6 else ""),
    )


def _memory_child(n_twins: int, path: str) -> None:
    sys.path.insert(0, str(ROOT))
    from livetwin.platform import Platform

    rss_start = _status_mb("VmRSS")
    rng = np.random.default_rng(4)
    spent = 0.0
    with Platform(path) as platform:
        platform.put_type("bench", type_spec())
        for start in range(0, n_twins, MEMORY_BATCH):
            size = min(MEMORY_BATCH, n_twins - start)
            twins = [f"twin-{i:07d}" for i in range(start, start + size)]
            batch = observations(twins, T0 + np.arange(start, start + size), rng)
            t = time.perf_counter()
            accepted = platform.ingest(batch).accepted
            spent += time.perf_counter() - t
            if accepted != size:
                raise SystemExit(f"batch at {start}: accepted {accepted} of {size}")
            del batch, twins
        twins_now = platform.core.engine.twin_count()
        rss_loaded = _status_mb("VmRSS")
        hwm_loaded = _status_mb("VmHWM")
        maxrss_loaded = _ru_maxrss_mb()
        started = time.perf_counter()
        platform.close()
        close_s = time.perf_counter() - started
    print(
        json.dumps(
            {
                "n_twins": n_twins,
                "twins": twins_now,
                "n": n_twins,
                "seconds": round(spent, 3),
                "values_per_s": round(n_twins * len(PROPS) / spent),
                "observations_per_s": round(n_twins / spent),
                "peak_rss_mb": round(hwm_loaded, 1),
                "ru_maxrss_mb": round(maxrss_loaded, 1),
                "vm_rss_mb": round(rss_loaded, 1),
                "peak_rss_after_close_mb": round(_status_mb("VmHWM"), 1),
                "ru_maxrss_after_close_mb": round(_ru_maxrss_mb(), 1),
                "rss_before_platform_mb": round(rss_start, 1),
                "close_seconds": round(close_s, 3),
                "batch": MEMORY_BATCH,
            }
        )
    )


def _ru_maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _status_mb(field: str) -> float:
    """A memory figure of this process (VmRSS: now, VmHWM: peak) in MiB."""
    return _proc_status_mb("self", field)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--memory-child":
        _memory_child(int(sys.argv[2]), sys.argv[3])
    else:
        backend = sys.argv[sys.argv.index("--backend") + 1] if "--backend" in sys.argv else None
        main(json_only="--json" in sys.argv, quick="--quick" in sys.argv, backend=backend)
