"""Lineage: calibration runs record what they read (data window, model ref or registered
version, code hash) and what they published; a published parameter traces back to its run,
model version and data window; walks export as JSON and GraphML; bad input is refused."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from conftest import T0
from fastapi.testclient import TestClient

from livetwin.api.app import create_app
from livetwin.errors import Conflict, InvalidInput, NotFound
from livetwin.examples.rollers import ROLLER_LINE, ROLLER_TYPE, observations, roller_fleet
from livetwin.platform import Platform
from livetwin.registry import LineageStore, to_graphml
from livetwin.timefmt import format_ts

LINES = [f"line-{i}" for i in range(4)]
STEP_MS = 100
GRAPHML = "{http://graphml.graphdrawing.org/xmlns}"


def feed(platform: Platform, sim, steps: int, start: int) -> None:
    rows = []
    for k in range(steps):
        rows += observations(sim.step(), LINES, T0 + (start + k) * STEP_MS)
    assert platform.ingest(rows).accepted == len(rows)


def published_ts(platform: Platform, twin: str, name: str) -> list[int]:
    history = platform.history(twin, [name])
    return [t for t, v in zip(history["ts"], history["series"][name], strict=True) if v is not None]


def test_the_demo_registers_its_roller_model_once_and_runs_link_to_it(tmp_path, clock):
    from livetwin.examples.roller_demo import RollerDemo

    clock.now = T0 + 10**8
    with Platform(tmp_path / "d", clock=clock) as platform:
        demo = RollerDemo(platform, lines=2, every_s=3600)
        RollerDemo(platform, lines=2)  # a restarted demo: the same code, no new version
        (model,) = platform.registry.models()
        assert (model["name"], model["versions"], model["kind"]) == ("roller_line", 1, "deductive")
        demo.run_until(T0 + 3_000)
        run = platform.calibrate("roller_line")
        assert run["status"] == "succeeded"
        used = platform.lineage.node(run["lineage"])["inputs"]["model"]["registry"]
        assert (used["name"], used["version"], used["code_matches"]) == ("roller_line", 1, True)
        (use,) = platform.registry.get("roller_line", 1)["used_by"]
        assert use["newest"] == run["lineage"] and use["twins"] == ["line-1", "line-2"]


def test_a_calibrated_parameter_traces_to_its_model_version_and_data_window(tmp_path, clock):
    clock.now = T0 + 10**8
    sim = roller_fleet(len(LINES), seed=5)
    with Platform(tmp_path / "d", clock=clock) as platform:
        platform.put_type("roller_line", ROLLER_TYPE)
        # first run: no registry service anywhere, the model is not registered
        feed(platform, sim, 30, 0)
        first = platform.calibrate("roller_line")
        assert first["status"] == "succeeded" and first["lineage"]
        run1 = platform.lineage.node(first["lineage"])
        assert run1["inputs"]["model"]["registry"] is None
        assert len(run1["inputs"]["model"]["code_hash"]) == 64
        unregistered = [p for p in run1["parents"] if p.startswith("model:")]
        assert unregistered == [f"model:{ROLLER_LINE}@{run1['code_hash'][:12]}"]

        # register the model; the next run links to the registered version
        registry = platform.registry
        version = registry.register("roller_line", {"kind": "deductive", "ref": ROLLER_LINE})
        assert version["code_hash"] == run1["code_hash"]
        feed(platform, sim, 30, 30)
        second = platform.calibrate("roller_line")
        assert second["status"] == "succeeded" and second["steps"] == 30

        with TestClient(create_app(platform)) as api:
            ts = published_ts(platform, "line-2", "b1")
            assert len(ts) == 60
            r = api.get(
                "/api/lineage/value",
                params={"twin": "line-2", "name": "b1", "ts": format_ts(ts[-1])},
            )
            assert r.status_code == 200, r.text
            graph = r.json()
            nodes = {n["id"]: n for n in graph["nodes"]}
            assert (
                graph["root"].startswith("value:line-2/b1@") and graph["run"] == second["lineage"]
            )
            run = nodes[second["lineage"]]
            assert run["kind"] == "run" and run["name"] == "calibrate:roller_line"
            assert run["inputs"]["model"]["registry"] == {
                "namespace": "default",
                "name": "roller_line",
                "version": 1,
                "code_matches": True,
            }
            assert {"b1", "b1_std", "T1", "slip1_upper"} <= set(run["outputs"]["names"])
            assert run["outputs"]["parameters"] == ["b1", "b2", "b3", "b4"]
            # the model version and the data window are reached from the value
            assert nodes["model:roller_line/1"]["kind"] == "model"
            data = [n for n in nodes.values() if n["kind"] == "data" and n["id"] in run["parents"]]
            assert len(data) == 1
            window = data[0]["inputs"]
            assert window["type"] == "roller_line"
            assert window["from"] == format_ts(T0 + 30 * STEP_MS)
            assert window["windows"][0]["twins"] == LINES
            assert window["from"] <= format_ts(ts[-1]) < window["to"]
            assert set(window["columns"]) >= {"brake_torque", "motor_torque", "w1"}
            # the resumed filter state links the run to the one before it
            assert first["lineage"] in run["parents"] and first["lineage"] in nodes
            edges = {(e["from"], e["to"]) for e in graph["edges"]}
            assert ("model:roller_line/1", second["lineage"]) in edges
            assert (second["lineage"], graph["root"]) in edges

            # an early value traces to the first run and the unregistered code
            early = api.get(
                "/api/lineage/value",
                params={"twin": "line-0", "name": "T1_upper", "ts": ts[0], "depth": 1},
            ).json()
            assert early["run"] == first["lineage"]
            assert unregistered[0] in {n["id"] for n in early["nodes"]}

            # down from the model version: the run that used it
            down = api.get(
                "/api/lineage/model:roller_line/1", params={"direction": "down", "depth": 3}
            ).json()
            assert second["lineage"] in {n["id"] for n in down["nodes"]}
            assert first["lineage"] not in {n["id"] for n in down["nodes"]}
            # the version says who used it: the second run only, and the twins it calibrated
            (used,) = api.get("/api/models/roller_line/versions/1").json()["used_by"]
            assert used["name"] == "calibrate:roller_line" and used["count"] == 1
            assert used["newest"] == second["lineage"] and used["twins"] == LINES
            assert api.get("/api/models/roller_line/versions").json()[0]["used_by"] == [used]

            # GraphML of the same walk
            r = api.get(
                "/api/lineage/value",
                params={"twin": "line-2", "name": "b1", "ts": ts[-1], "format": "graphml"},
            )
            assert r.headers["content-type"].startswith("application/graphml+xml")
            root = ET.fromstring(r.content)
            g = root.find(f"{GRAPHML}graph")
            assert len(g.findall(f"{GRAPHML}node")) == len(graph["nodes"])
            assert len(g.findall(f"{GRAPHML}edge")) == len(graph["edges"])
            kinds = {
                n.get("id"): n.find(f"{GRAPHML}data[@key='kind']").text
                for n in g.findall(f"{GRAPHML}node")
            }
            assert kinds["model:roller_line/1"] == "model" and kinds[graph["root"]] == "value"

            # a measured value has no producing run
            r = api.get("/api/lineage/value", params={"twin": "line-2", "name": "w1", "ts": ts[-1]})
            assert r.status_code == 404 and "measured" in r.json()["error"]["fix"]
            r = api.get("/api/lineage/value", params={"twin": "line-2", "name": "b1", "ts": "soon"})
            assert r.status_code == 422 and r.json()["error"]["field"] == "ts"
            for params, field in (
                ({"direction": "sideways"}, "direction"),
                ({"depth": 0}, "depth"),
                ({"format": "dot"}, "format"),
            ):
                r = api.get(f"/api/lineage/{second['lineage']}", params=params)
                assert r.status_code == 422 and r.json()["error"]["field"] == field
            assert api.get("/api/lineage/run-nothing").status_code == 404


def test_a_run_without_new_data_records_nothing(tmp_path, clock):
    clock.now = T0 + 10**8
    with Platform(tmp_path / "d", clock=clock) as platform:
        platform.put_type("roller_line", ROLLER_TYPE)
        feed(platform, roller_fleet(len(LINES), seed=2), 3, 0)
        record = platform.calibrate("roller_line")
        assert record["status"] == "no-data" and record["lineage"] is None


def test_the_store_records_immutable_nodes_and_walks_both_ways(tmp_path):
    store = LineageStore(tmp_path)
    data = store.record("data", "sales 2026", id="data:sales")
    model = store.record("model", "m", id="model:m/1", parents=[data], code_hash="ab" * 32)
    run = store.record(
        "run",
        "predict",
        inputs={"window": [1, 2]},
        outputs={"names": ["y"]},
        parents=[data, model],
        started=T0,
        finished=T0 + 5,
        produced=[("t1", T0, T0 + 1000)],
    )
    node = store.node(run)
    assert node["parents"] == sorted([data, model]) and node["host"]
    assert node["started"] == format_ts(T0) and node["inputs"] == {"window": [1, 2]}
    assert store.producer("t1", "y", T0 + 999)["id"] == run
    with pytest.raises(NotFound):
        store.producer("t1", "y", T0 + 1000)  # the window is half-open
    with pytest.raises(NotFound):
        store.producer("t1", "z", T0)
    up = store.walk(run, "up", 1)
    assert {n["id"] for n in up["nodes"]} == {run, data, model}
    assert len(up["edges"]) == 2  # the edges walked (data->model lies one level further up)
    down = store.walk(data, "down", 5)
    assert {n["id"] for n in down["nodes"]} == {data, model, run}
    shallow = store.walk(data, "down", 1)
    assert {n["id"] for n in shallow["nodes"]} == {data, model, run}
    assert ET.fromstring(to_graphml(down)).tag.endswith("graphml")
    with pytest.raises(Conflict):
        store.record("run", "again", id=run)
    with pytest.raises(InvalidInput) as info:
        store.record("run", "orphan", parents=["nowhere"])
    assert info.value.field == "parents"
    with pytest.raises(InvalidInput):
        store.record("job", "x")
    store.close()
    reopened = LineageStore(tmp_path)  # durable
    assert reopened.node(run)["outputs"] == {"names": ["y"]}
    reopened.close()


def test_model_nodes_stay_apart_across_namespaces_and_calibration_finds_any(platform):
    from livetwin.jobs.lineage import model_node
    from livetwin.models.base import resolve_model

    fn = resolve_model(ROLLER_LINE).fn
    body = {"kind": "deductive", "ref": ROLLER_LINE}
    platform.registry.register("roller_line", body, namespace="fleet-a")
    node_id, info = model_node(platform.lineage, platform.registry.store, ROLLER_LINE, fn)
    assert node_id == "model:fleet-a/roller_line/1"
    assert info["registry"] == {
        "namespace": "fleet-a",
        "name": "roller_line",
        "version": 1,
        "code_matches": True,
    }
    store = platform.registry.store
    assert store.lookup_ref(ROLLER_LINE, info["code_hash"], namespace="default") is None
    platform.clock.now += 1000  # the newest registration of the ref wins
    platform.registry.register("roller_line", body)
    assert (
        model_node(platform.lineage, platform.registry.store, ROLLER_LINE, fn)[0]
        == "model:roller_line/1"
    )
    fleet, default = (platform.lineage.node(n) for n in (node_id, "model:roller_line/1"))
    assert fleet["inputs"]["namespace"] == "fleet-a" and default["inputs"]["namespace"] == "default"
    assert store.lookup_ref(ROLLER_LINE, "other-code", namespace="fleet-a") == {
        **info["registry"],
        "code_matches": False,
    }
