"""Cluster mode benchmarks: durable HTTP ingest and read p99 of a `serve --cluster` front end on
local Ray clusters of 1, 2 and 3 worker nodes, beside single-node `serve` on PostgreSQL in the
same run; then the time a lost shard takes to serve again after its node is killed.

Run with `livetwin bench cluster [--json] [--quick]` (needs `livetwin[ray]` and PostgreSQL at
LIVETWIN_TEST_DATABASE_URL, default postgresql://postgres@127.0.0.1:5432/test). Every node runs
on this machine: on a few cores the figures show the cluster's overhead, not its scaling
(docs/cluster.md has the scaling model).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import orjson

_HERE = Path(__file__).resolve().parent
for path in (_HERE, _HERE.parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_ingest import BATCH, HTTP_CLIENTS, _post_all  # noqa: E402
from common import (  # noqa: E402
    PROPS,
    T0,
    Report,
    Server,
    percentile_ms,
    rolling_batch,
    temp_dir,
    type_spec,
)

PG_URL = os.environ.get("LIVETWIN_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
SHARDS = 4
N_TWINS = 10_000
READS = 500


def main(json_only: bool = False, quick: bool = False) -> None:
    report = Report(json_only, quick)
    batches = 100 if quick else 400
    kills = 2 if quick else 5
    recovery_twins = 10_000 if quick else 100_000  # per shard
    rng = np.random.default_rng(1)
    warmup = N_TWINS // BATCH
    bodies = [orjson.dumps(rolling_batch(k, N_TWINS, BATCH, rng)) for k in range(warmup + batches)]
    with temp_dir("livetwin-bench-cluster-") as tmp:
        report.note("single node on PostgreSQL ...")
        base = single_node(tmp, bodies, warmup)
        report.emit(
            "single_node_postgres",
            values_per_s=base["values_per_s"],
            observations_per_s=base["observations_per_s"],
            p99_ms=base["request_p99_ms"],
            read_p99_ms=base["read_p99_ms"],
            read_p50_ms=base["read_p50_ms"],
            n=base["n"],
            seconds=base["seconds"],
            clients=HTTP_CLIENTS,
            note="livetwin serve with LIVETWIN_DATABASE_URL (a fresh schema); the baseline of "
            "the cluster rows; p99_ms is the POST round trip, read_p99_ms GET /api/twins/{id}",
        )
        for nodes in (1, 2, 3):
            report.note(f"cluster of {nodes} worker node(s), {SHARDS} shards ...")
            last = nodes == 3
            got = cluster_run(
                tmp, nodes, bodies, warmup, kills if last else 0, recovery_twins, report
            )
            ratio = got["values_per_s"] / base["values_per_s"]
            report.emit(
                f"cluster_{nodes}_node{'s' if nodes > 1 else ''}",
                values_per_s=got["values_per_s"],
                observations_per_s=got["observations_per_s"],
                p99_ms=got["request_p99_ms"],
                baseline_ratio=ratio,
                target=">= 0.6 x single node" if nodes == 1 else None,
                meets_target=ratio >= 0.6 if nodes == 1 else None,
                read_p99_ms=got["read_p99_ms"],
                read_p50_ms=got["read_p50_ms"],
                n=got["n"],
                seconds=got["seconds"],
                shards=SHARDS,
                nodes=nodes,
                clients=HTTP_CLIENTS,
                per_shard_values_per_s=round(got["values_per_s"] / SHARDS),
                note="one front end (serve --cluster) and the worker nodes share this "
                "machine's cores with PostgreSQL and the load generator: overhead, not scaling",
            )
            if last:
                times = got["recoveries"]
                report.emit(
                    "shard_recovery",
                    values_per_s=None,
                    observations_per_s=None,
                    p50_s=round(float(np.percentile(times, 50)), 2),
                    max_s=round(max(times), 2),
                    recoveries_s=times,
                    twins_per_shard=recovery_twins,
                    target="< 10 s",
                    meets_target=max(times) < 10,
                    note="SIGKILL of the worker node (raylet + workers) hosting a shard, until "
                    "a keyed batch over every shard is acknowledged whole through the front "
                    "end (Ray notices the node's loss, restarts the actor elsewhere, the "
                    "shard loads its snapshot and replays its journal tail)",
                )
    report.table("livetwin bench cluster" + (" (--quick)" if quick else ""))


def fresh_schema_url() -> tuple[str, str]:
    from livetwin.cluster.meta import with_schema

    schema = f"bench_{uuid.uuid4().hex[:10]}"
    return schema, with_schema(PG_URL, schema)


def single_node(tmp: Path, bodies: list[bytes], warmup: int) -> dict:
    import psycopg

    schema, url = fresh_schema_url()
    try:
        with Server(tmp / "single", env={"LIVETWIN_DATABASE_URL": url}) as server:
            return measure(server.url, bodies, warmup)
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            for (name,) in conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (schema + "%",)
            ).fetchall():
                conn.execute(f'DROP SCHEMA "{name}" CASCADE')


def measure(url: str, bodies: list[bytes], warmup: int) -> dict:
    """Ingest (the warm-up untimed: it creates the twins), then GET a random twin `READS` times."""
    import httpx

    httpx.put(url + "/api/types/bench", json=type_spec(), timeout=60).raise_for_status()
    _post_all(url, bodies[:warmup], clients=1)
    load = _post_all(url, bodies[warmup:], clients=HTTP_CLIENTS)
    if load["failures"]:
        raise RuntimeError(f"ingest failed: {load['first_failure']}")
    rng = np.random.default_rng(7)
    samples = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(READS):
            path = f"/api/twins/t{int(rng.integers(N_TWINS))}"
            t = time.perf_counter()
            client.get(path).raise_for_status()
            samples.append(time.perf_counter() - t)
    load["read_p50_ms"] = round(percentile_ms(samples, 50), 2)
    load["read_p99_ms"] = round(percentile_ms(samples, 99), 2)
    return load


def cluster_run(
    tmp: Path,
    nodes: int,
    bodies: list[bytes],
    warmup: int,
    kills: int,
    recovery_twins: int,
    report: Report,
) -> dict:
    from livetwin.cluster.local import LocalRayCluster
    from livetwin.cluster.meta import drop_cluster

    name = f"bench{uuid.uuid4().hex[:8]}"
    options = [
        "--cluster", "", "--database", PG_URL, "--cluster-name", name, "--shards", str(SHARDS),
    ]  # fmt: skip
    with LocalRayCluster(nodes=nodes) as ray_cluster:
        options[1] = ray_cluster.address
        env = {"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}
        try:
            with Server(tmp / f"front{nodes}", *options, env=env, ready_s=300) as server:
                got = measure(server.url, bodies, warmup)
                if kills:
                    report.note(f"{recovery_twins:,} twins per shard, then {kills} node kills ...")
                    fill(server.url, recovery_twins * SHARDS)
                    got["recoveries"] = recoveries(server.url, ray_cluster, kills)
                return got
        finally:
            drop_cluster(PG_URL, name)


def fill(url: str, twins: int) -> None:
    """One observation for each of `twins` new twins (r0, r1, ...)."""
    rng = np.random.default_rng(3)
    bodies = []
    for k in range(twins // BATCH):
        ids = [f"r{k * BATCH + i}" for i in range(BATCH)]
        values = rng.uniform(0, 100, (BATCH, len(PROPS))).round(3).tolist()
        rows = [
            {"twin": t, "type": "bench", "ts": T0, "values": dict(zip(PROPS, v, strict=True))}
            for t, v in zip(ids, values, strict=True)
        ]
        bodies.append(orjson.dumps(rows))
    load = _post_all(url, bodies, clients=HTTP_CLIENTS)
    if load["failures"]:
        raise RuntimeError(f"filling failed: {load['first_failure']}")


def recoveries(url: str, ray_cluster, kills: int) -> list[float]:
    """Kill the node of shard k (k = 0, 1, ...), time until every shard takes writes again, then
    start a fresh node: the seconds of each recovery."""
    import httpx

    probe = [
        {"twin": f"t{i}", "type": "bench", "ts": T0 + 10**9, "values": {"a": 1.0}, "key": "probe"}
        for i in range(64)  # over every shard
    ]
    times = []
    with httpx.Client(base_url=url, timeout=60) as client:
        for k in range(kills):
            shards = client.get("/api/cluster").json()["shard_list"]
            node = ray_cluster.node_of_pid(shards[k % SHARDS]["pid"])
            killed = time.monotonic()
            ray_cluster.kill_node(node)
            for i, row in enumerate(probe):
                row["key"] = f"probe-{k}-{i}"
            while client.post("/api/ingest", json=probe).status_code != 200:
                if time.monotonic() - killed > 120:
                    raise RuntimeError("a lost shard did not recover within 120 s")
                time.sleep(0.05)
            times.append(round(time.monotonic() - killed, 2))
            ray_cluster.add_node()
    return times
