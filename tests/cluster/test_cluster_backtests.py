"""Back-tests on a cluster front end over four shards (in this process, no Ray): each shard
replays its own journal and the front end merges the reports, which must equal one node's
report of the same fleet and candidate; the REST route runs it as a run of the leader."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
from backtest_support import END, START, TWINS, record

from livetwin.backtest.merge import weighted_quantiles
from livetwin.cluster.meta import shards_of

pytestmark = pytest.mark.services  # PostgreSQL

_ids = itertools.count()


class _Writer:
    """What `record` calls, on a cluster front end."""

    def __init__(self, frontend):
        self.frontend = frontend
        self.alarms = self  # sync: the shards raise their own alarms

    def put_type(self, name: str, spec: dict) -> dict:
        return self.frontend.put_type(name, spec)

    def ingest(self, rows: list[dict]):
        return self.frontend.submit(rows).result(timeout=30)

    def sync(self) -> None:
        pass


def _run(service, candidate: dict, **extra) -> dict:
    """Check and run a back-test of the oven fleet through `service`; its kept report."""
    body = {"type": "oven", "candidate": candidate, "from": START, "to": END, **extra}
    run_id = f"run_bt_{next(_ids)}"
    service.run(service.plan(body), run_id)
    return service.report(run_id)


def _in_time_order(rule: dict) -> dict:
    """A rule's report with its listed alarms in the order a cluster lists them."""
    kinds = ("would_raise", "never_raised", "cleared_differently")
    return rule | {
        f"{k}_alarms": sorted(rule[f"{k}_alarms"], key=lambda a: (a["raised"], a["twin"]))
        for k in kinds
    }


@pytest.fixture
def both(front, platform):
    """The same recorded fleet on one node and on the cluster's four shards."""
    _, _, frontend = front
    record(platform)
    record(_Writer(frontend))
    assert len(set(shards_of(TWINS, 4))) > 1  # the fleet is spread over the shards
    return platform.backtests, frontend.backtests


CANDIDATES = [
    {"patch": {"derived": {"temp_avg": "avg(temp, '30m')"}}},  # a changed window
    {"patch": {"rules": {"hot": {"when": "temp > 80", "for": "5m"}}}},  # a new rule
    {"patch": {"rules": {"fan_stuck": {"when": "fan > 9", "for": "2m"}}}},  # a changed rule
    {"patch": {"derived": {"per_valve": "temp / valve", "x": "temp * 2 + fan"}}},  # new outputs
]


@pytest.mark.parametrize("candidate", CANDIDATES, ids=["window", "new-rule", "rule", "new"])
def test_a_cluster_back_test_equals_the_single_node_one(both, candidate):
    single, cluster = (_run(service, candidate) for service in both)
    assert cluster["observations"] == single["observations"]
    assert cluster["identical"] == single["identical"] is False
    assert cluster["changes"] == single["changes"]
    assert [o["name"] for o in cluster["outputs"]] == [o["name"] for o in single["outputs"]]
    for c, s in zip(cluster["outputs"], single["outputs"], strict=True):
        for key in ("compared", "differing", "twins_affected", "first_divergence", "max_at"):
            assert c[key] == s[key], key
        assert c["max_abs_diff"] == pytest.approx(s["max_abs_diff"], rel=1e-12)
        assert c["rms_diff"] == pytest.approx(s["rms_diff"], rel=1e-9)
        assert c["worst_twins"] == s["worst_twins"]
    assert cluster["rules"] == [_in_time_order(r) for r in single["rules"]]
    assert cluster["failures"] == [
        f | {"examples": sorted(f["examples"], key=lambda e: e["ts"])} for f in single["failures"]
    ]
    for c, s in zip(cluster["new_outputs"], single["new_outputs"], strict=True):
        assert c.keys() == s.keys() and "sample" not in c
        for key in ("count", "known", "min", "max"):
            assert c.get(key) == s.get(key)
        for key in ("mean", "std"):
            assert c.get(key) == pytest.approx(s.get(key), rel=1e-9)
        assert c.get("quantiles") == pytest.approx(s.get("quantiles"), rel=1e-9)
    if single["new_outputs"]:  # series of some twins with the new outputs
        assert len(cluster["series"]) == len(single["series"]) > 0
    else:  # the fleet's worst twins, each kept by its own shard
        assert cluster["series"] == single["series"]
    assert sorted(cluster["after_seq"]) == sorted(cluster["shards"])


def test_an_unchanged_candidate_gives_an_empty_diff_on_the_cluster(both):
    _, cluster = both
    report = _run(cluster, {"patch": {}})
    assert report["identical"] and not report["outputs"] and not report["new_outputs"]
    assert len(report["shards"]) == len(set(shards_of(TWINS, 4)))


def test_a_twin_filter_asks_only_the_shards_of_its_twins(both):
    _, cluster = both
    ids = ["oven-1", "oven-4"]
    plan = cluster.plan(
        {
            "type": "oven",
            "candidate": {"patch": {}},
            "from": START,
            "to": END,
            "twins": {"ids": ids},
        }
    )
    assert plan.shards == sorted(set(shards_of(ids, 4)))
    assert plan.args["twins"] == {"ids": ids}  # as asked, not one shard's share
    report = _run(cluster, CANDIDATES[0], twins={"ids": ids}, plot=["oven-4"])
    assert report["observations"]["twins"] == 2
    assert {w["twin"] for w in report["outputs"][0]["worst_twins"]} == set(ids)
    assert "oven-4" in report["series"]


def test_bad_back_tests_are_refused_before_any_work_naming_the_field(front):
    client, _, _ = front
    later = {"twin": "p1", "type": "pump", "ts": END + 86_400_000, "values": {"flow": 1.0}}
    assert client.post("/api/ingest", json=[later]).json()["accepted"] == 1
    body = {"type": "pump", "candidate": {"patch": {}}, "from": START, "to": END}
    for change, field in [
        ({"type": "nope"}, "type"),
        ({"candidate": {"patch": {"derived": {"x": "flow +"}}}}, "candidate.patch.derived.x"),
        ({"twins": {"ids": ["nobody"]}}, "twins"),
        ({}, "from"),  # the pump reported only after the window
    ]:
        answer = client.post("/api/backtests", json=body | change)
        assert 400 <= answer.status_code < 500, (change, answer.text)
        assert answer.json()["error"]["field"].startswith(field), answer.json()


def test_post_api_backtests_runs_on_the_shards_as_a_run_of_the_leader(front):
    client, _, frontend = front
    record(_Writer(frontend))
    body = {"type": "oven", "candidate": CANDIDATES[0], "from": START, "to": END}
    started = client.post("/api/backtests", json=body)
    assert started.status_code == 202, started.text
    run_id = started.json()["id"]
    deadline = time.monotonic() + 60
    while (got := client.get(f"/api/backtests/{run_id}").json())["state"] not in (
        "succeeded",
        "failed",
    ):
        assert time.monotonic() < deadline, got
        time.sleep(0.1)
    assert got["state"] == "succeeded", got
    report = got["report"]
    assert report["outputs"][0]["name"] == "temp_avg" and report["id"] == run_id
    assert client.get(f"/api/backtests/{run_id}?format=csv").text.startswith("kind,name")
    assert run_id in {b["id"] for b in client.get("/api/backtests").json()}
    graph = client.get(f"/api/lineage/{run_id}").json()  # in the cluster's lineage schema
    nodes = {n["id"]: n for n in graph["nodes"]}
    assert nodes[run_id]["kind"] == "run" and nodes[run_id]["name"] == "backtest:oven"
    parents = {e["from"] for e in graph["edges"] if e["to"] == run_id}
    assert "type:oven@1" in parents and any("@candidate-" in p for p in parents)


def test_weighted_quantiles_equal_numpy_s_for_equal_weights_and_honour_weights():
    rng = np.random.default_rng(1)
    x = rng.normal(size=1001)
    qs = [0.05, 0.5, 0.95]
    assert weighted_quantiles(x, np.ones(len(x)), qs) == pytest.approx(np.quantile(x, qs))
    # a value standing for 3 values is the same as the value three times
    thinned = np.repeat(x[:200], 3)
    assert weighted_quantiles(x[:200], np.full(200, 3.0), qs) == pytest.approx(
        np.quantile(thinned, qs), abs=0.05
    )


def test_a_calibration_back_test_on_the_cluster_equals_the_single_node_one(front, platform, clock):
    """Changed calibration settings on a roller fleet spread over the shards: each shard
    filters its own lines under both settings; errors and coverage combine exactly."""
    from calibration_support import STEP_MS, feed
    from conftest import T0

    from livetwin.examples.rollers import DRAGS, ROLLER_TYPE, SPEEDS, roller_fleet

    _, _, frontend = front
    ids = [f"line-{i}" for i in range(8)]
    assert len(set(shards_of(ids, 4))) > 1
    clock.now = T0 + 10**8
    spec = {**ROLLER_TYPE, "calibration": {**ROLLER_TYPE["calibration"], "backend": "numpy"}}
    for target in (platform, _Writer(frontend)):
        target.put_type("roller_line", spec)
        feed(target, roller_fleet(len(ids), seed=5), ids, 120, 0)
    body = {
        "type": "roller_line",
        "candidate": {"patch": {"calibration": {"measurement_noise": {w: 1.0 for w in SPEEDS}}}},
        "from": T0,
        "to": T0 + 120 * STEP_MS,
    }
    single, cluster = (
        service.report(service.run(service.plan(body), f"run_cal_{name}")["backtest"])
        for name, service in (("one", platform.backtests), ("many", frontend.backtests))
    )
    one, many = single["calibration"], cluster["calibration"]
    assert many["twins"] == one["twins"] == len(ids) and many["steps"] == one["steps"]
    assert len(many["shards"]) == len(set(shards_of(ids, 4)))
    for o, m in zip(one["outputs"], many["outputs"], strict=True):
        assert m["better"] == o["better"]
        for side in ("baseline", "candidate"):
            assert m[side]["predictions"] == o[side]["predictions"]
            for key in ("rms_error", "coverage_95"):
                assert m[side][key] == pytest.approx(o[side][key], rel=1e-9), (side, key)
    parameters = {p["name"]: p for p in many["parameters"]}
    for p in one["parameters"]:
        assert parameters[p["name"]]["twins_affected"] == p["twins_affected"]
        assert parameters[p["name"]]["max_abs_diff"] == pytest.approx(p["max_abs_diff"])
        assert parameters[p["name"]]["rms_diff"] == pytest.approx(p["rms_diff"], rel=1e-9)
    assert set(parameters) == set(DRAGS) | {p["name"] for p in one["parameters"]}
