"""The model registry over its REST API: immutable versions with metadata, aliases with history,
archiving instead of deleting, artifacts (content-addressed files), serving, namespaces, the
migration of a registry.db from before namespaces, and bad input."""

from __future__ import annotations

import hashlib
import sqlite3
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient

from livetwin.api.app import create_app
from livetwin.errors import InvalidInput, NotFound
from livetwin.examples.rollers import DRAGS, GEOMETRY, ROLLER_LINE, roller_line
from livetwin.platform import Platform, Settings
from livetwin.registry import FileArtifactStore, Registry, RegistryStore, fit_linear

LIMIT = 4096

ROLLER_V = {
    "kind": "deductive",
    "ref": ROLLER_LINE,
    "author": "ana",
    "description": "roller line, bearing drags",
    "training": {"start": "2026-11-01T00:00:00Z", "end": "2026-11-22T00:00:00Z"},
    "metrics": {"rmse_T1": 1.9},
    "hyperparameters": {"dt": 0.1, **GEOMETRY, **{b: 0.02 for b in DRAGS}},
    "tags": {"site": "plant-a"},
}


@pytest.fixture
def platform(tmp_path, clock):
    settings = Settings(max_body_bytes=200_000, max_artifact_bytes=LIMIT)
    with Platform(tmp_path / "data", clock=clock, settings=settings) as p:
        yield p


@pytest.fixture
def registry(platform):
    return platform.registry


@pytest.fixture
def api(platform):
    with TestClient(create_app(platform)) as client:
        yield client


def error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["message"] and body["fix"], body
    return body


def test_versions_are_numbered_described_and_listed(api):
    r = api.post("/api/models/rollers/versions", json=ROLLER_V)
    assert r.status_code == 201, r.text
    v1 = r.json()
    assert v1["version"] == 1 and v1["kind"] == "deductive" and v1["author"] == "ana"
    assert v1["training"] == {
        "start": "2026-11-01T00:00:00.000Z",
        "end": "2026-11-22T00:00:00.000Z",
        "description": None,
    }
    assert len(v1["code_hash"]) == 64 and v1["metrics"] == {"rmse_T1": 1.9}
    assert v1["tags"] == {"site": "plant-a"} and v1["archived"] is False
    assert v1["lineage"] == "model:rollers/1"
    v2 = api.post(
        "/api/models/rollers/versions",
        json={**ROLLER_V, "parents": [{"name": "rollers", "version": 1}], "version": 2},
    ).json()
    assert v2["version"] == 2 and v2["parents"] == [{"name": "rollers", "version": 1}]
    api.post("/api/models/other/versions", json={"kind": "inductive", "flavor": "linear"})

    listed = api.get("/api/models").json()
    assert [(m["name"], m["versions"], m["latest"]) for m in listed] == [
        ("other", 1, 1),
        ("rollers", 2, 2),
    ]
    assert [v["version"] for v in api.get("/api/models/rollers/versions").json()] == [1, 2]
    assert api.get("/api/models/rollers/versions/1").json()["created"] == v1["created"]
    # the parent link is in the lineage graph too
    walk = api.get("/api/lineage/model:rollers/2", params={"direction": "up"}).json()
    assert {n["id"] for n in walk["nodes"]} >= {"model:rollers/1", "model:rollers/2"}


def test_aliases_move_with_history_and_archive_hides(api):
    for _ in range(3):
        api.post("/api/models/rollers/versions", json=ROLLER_V)
    assert api.put("/api/models/rollers/aliases/production", json={"version": 1}).status_code == 200
    r = api.put("/api/models/rollers/aliases/production", json={"version": 2, "author": "bo"})
    aliases = r.json()
    assert aliases["aliases"] == {"production": 2}
    assert [(h["version"], h["author"]) for h in aliases["history"]] == [(1, None), (2, "bo")]
    got = api.get("/api/models/rollers/versions/production").json()
    assert got["version"] == 2 and got["aliases"] == ["production"]

    archived = api.post("/api/models/rollers/versions/1/archive").json()
    assert archived["archived"] is True
    assert [v["version"] for v in api.get("/api/models/rollers/versions").json()] == [2, 3]
    every = api.get("/api/models/rollers/versions", params={"archived": True}).json()
    assert [v["version"] for v in every] == [1, 2, 3]
    assert api.get("/api/models/rollers/versions/1").json()["archived"] is True
    assert api.get("/api/models").json()[0]["versions"] == 2
    body = error(api.put("/api/models/rollers/aliases/staging", json={"version": 1}), 409)
    assert "unarchive" in body["fix"]
    assert api.post("/api/models/rollers/versions/1/unarchive").json()["archived"] is False
    assert api.put("/api/models/rollers/aliases/staging", json={"version": 1}).status_code == 200


def test_no_route_deletes_a_version(api, registry, platform):
    registry.register("keep", {"kind": "inductive", "flavor": "linear"}, {"linear.json": b"{}"})
    api.put("/api/models/keep/aliases/production", json={"version": 1})
    values = {"name": "keep", "version": "1", "filename": "linear.json", "alias": "production"}
    paths = {
        route.path
        for route in api.app.routes
        if getattr(route, "path", "").startswith("/api/models")
    }
    assert len(paths) >= 8
    for path in sorted(paths):
        url = path.format(**values)
        for method in ("DELETE",):
            r = api.request(method, url)
            body = error(r, 405)
            assert "archive" in body["fix"], (url, body)
    # the only routes that accept DELETE are the refusing ones
    for route in api.app.routes:
        if "DELETE" in getattr(route, "methods", ()) and route.path.startswith("/api/models"):
            assert route.endpoint.__name__ == "_refuser"
    registry.register("keep", {"kind": "inductive"}, {"w.bin": b"1"}, namespace="fleet-a")
    for path in sorted(paths):  # a namespace changes nothing: still refused
        url = path.format(**{**values, "filename": "w.bin"})
        error(api.request("DELETE", url, params={"namespace": "fleet-a"}), 405)
    assert api.get("/api/models/keep/versions/1").status_code == 200
    assert api.get("/api/models/keep/versions/1/artifacts/linear.json").content == b"{}"
    kept = api.get("/api/models/keep/versions/1/artifacts/w.bin", params={"namespace": "fleet-a"})
    assert kept.content == b"1"
    # nor does the Python API or the artifact store offer a way
    for cls in (Registry, RegistryStore, FileArtifactStore):
        assert not [m for m in dir(cls) if any(w in m for w in ("delete", "remove", "drop"))]


def test_artifacts_are_content_addressed_and_immutable(api, platform):
    meta = {"kind": "inductive", "flavor": "linear", "artifacts": ["linear.json", "notes.txt"]}
    assert api.post("/api/models/fit/versions", json=meta).status_code == 201
    got = api.get("/api/models/fit/versions/1").json()
    assert [a["uploaded"] for a in got["artifacts"]] == [False, False]
    content = b'{"features": ["x"], "targets": ["y"], "coef": [[2.0]], "intercept": [1.0]}'
    r = api.put("/api/models/fit/versions/1/artifacts/linear.json", content=content)
    assert r.status_code == 201, r.text
    digest = hashlib.sha256(content).hexdigest()
    assert r.json()["sha256"] == digest and r.json()["size"] == len(content)
    blob = platform.path / "artifacts" / "sha256" / digest[:2] / digest
    assert blob.read_bytes() == content
    down = api.get("/api/models/fit/versions/1/artifacts/linear.json")
    assert down.content == content and down.headers["etag"] == f'"{digest}"'
    # the same bytes in another version are stored once
    api.post("/api/models/fit/versions", json=meta)
    api.put("/api/models/fit/versions/2/artifacts/linear.json", content=content)
    assert len(list((platform.path / "artifacts" / "sha256").rglob("*"))) == 2  # dir + blob
    # written once; a version's file list is fixed
    body = error(api.put("/api/models/fit/versions/1/artifacts/linear.json", content=b"{}"), 409)
    assert "new version" in body["fix"]
    error(api.put("/api/models/fit/versions/1/artifacts/extra.bin", content=b"x"), 409)
    assert api.get("/api/models/fit/versions/1/artifacts/linear.json").content == content
    error(api.get("/api/models/fit/versions/1/artifacts/notes.txt"), 404)  # not uploaded yet


def test_writes_to_an_existing_version_conflict(api):
    api.post("/api/models/m/versions", json=ROLLER_V)
    body = error(api.put("/api/models/m/versions/1", json=ROLLER_V), 409)
    assert body["field"] == "version" and "POST /api/models/m/versions" in body["fix"]
    body = error(api.post("/api/models/m/versions", json={**ROLLER_V, "version": 1}), 409)
    assert "immutable" in body["message"]
    error(api.post("/api/models/m/versions", json={**ROLLER_V, "version": 5}), 409)
    assert api.post("/api/models/m/versions", json={**ROLLER_V, "version": 2}).status_code == 201
    assert api.get("/api/models/m/versions/1").json()["description"] == ROLLER_V["description"]


def test_artifact_too_large(api):
    api.post("/api/models/big/versions", json={"kind": "inductive", "artifacts": ["w.bin"]})
    url = "/api/models/big/versions/1/artifacts/w.bin"
    body = error(api.put(url, content=b"x" * (LIMIT + 1)), 413)
    assert "smaller" in body["fix"]

    def chunks():  # no content-length: the limit is enforced while streaming
        for _ in range(10):
            yield b"y" * 1000

    error(api.put(url, content=chunks()), 413)
    assert api.put(url, content=b"z" * LIMIT).status_code == 201
    assert api.get(url).content == b"z" * LIMIT


@pytest.mark.parametrize(
    ("method", "url", "json", "status", "field"),
    [
        ("GET", "/api/models/nope/versions", None, 404, "name"),
        ("GET", "/api/models/m/versions/9", None, 404, "version"),
        ("GET", "/api/models/m/versions/staging", None, 404, "alias"),
        ("GET", "/api/models/m/versions/1/artifacts/x.bin", None, 409, "filename"),
        ("POST", "/api/models/nope/predict", {"rows": [{}]}, 404, "name"),
        ("PUT", "/api/models/m/aliases/production", {"version": 7}, 404, "version"),
        ("POST", "/api/models/9lives/versions", {"kind": "deductive"}, 422, "name"),
        ("POST", "/api/models/a%20b/versions", {"kind": "deductive"}, 422, "name"),
        ("PUT", "/api/models/m/aliases/1st", {"version": 1}, 422, "alias"),
        ("PUT", "/api/models/m/aliases/production", {"version": "1"}, 422, "version"),
        ("PUT", "/api/models/m/versions/1/artifacts/.hidden", None, 422, "filename"),
        ("PUT", "/api/models/m/versions/latest/artifacts/a.bin", None, 422, "version"),
        ("POST", "/api/models/m/versions", {"kind": "magic"}, 422, "kind"),
        ("POST", "/api/models/m/versions", {"kind": "deductive", "colour": 1}, 422, "colour"),
        ("POST", "/api/models/m/versions", {"kind": "deductive"}, 422, "ref"),
        ("POST", "/api/models/m/versions", {"kind": "deductive", "ref": "no.such:f"}, 422, "ref"),
        (
            "POST",
            "/api/models/m/versions",
            {"kind": "hybrid", "ref": ROLLER_LINE, "parents": [{"name": "m", "version": 4}]},
            404,
            "parents",
        ),
        (
            "POST",
            "/api/models/m/versions",
            {"kind": "inductive", "training": {"start": "yesterday", "end": 1795341600000}},
            422,
            "training.start",
        ),
        (
            "POST",
            "/api/models/m/versions",
            {"kind": "inductive", "artifacts": ["../x"]},
            422,
            "artifacts.0",
        ),
    ],
)
def test_bad_input(api, method, url, json, status, field):
    api.post("/api/models/m/versions", json=ROLLER_V)
    body = error(api.request(method, url, json=json), status)
    assert body["field"] == field, body


def test_malformed_json_is_refused(api):
    r = api.post("/api/models/m/versions", content=b"{kind:", headers={"content-type": "x"})
    assert error(r, 400)["field"] == "body"  # malformed JSON is a 400, as on every route


def test_serving_a_python_physics_model(api):
    api.post("/api/models/rollers/versions", json=ROLLER_V)
    states = {"w1": 50.0, "w2": 50.1, "w3": 50.2, "w4": 50.3, "T1": 100.0, "T2": 110.0, "T3": 120.0}
    rows = [{**states, "brake_torque": 10.0, "motor_torque": 12.0, "b1": b} for b in (0.01, 0.04)]
    r = api.post("/api/models/rollers/predict", json={"rows": rows, "steps": 3})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["version"] == 1 and len(out["outputs"]) == 2
    # the same numbers as calling the model directly
    order = [f"J{i}" for i in range(1, 5)] + ["r", "EA", "L"]
    params = np.array([[b, 0.02, 0.02, 0.02] + [GEOMETRY[k] for k in order] for b in (0.01, 0.04)])
    x = np.tile(list(states.values()), (2, 1))
    u = np.array([[10.0, 12.0]] * 2)
    for _ in range(3):
        x, y = roller_line(x, params, u, 0.1)
    np.testing.assert_allclose([o["T1"] for o in out["outputs"]], y[:, 4], rtol=1e-12)
    np.testing.assert_allclose([s["w1"] for s in out["states"]], x[:, 0], rtol=1e-12)
    assert out["outputs"][0]["T1"] != out["outputs"][1]["T1"]  # the drag made a difference

    missing = {k: v for k, v in rows[0].items() if k != "w2"}
    body = error(api.post("/api/models/rollers/predict", json={"rows": [missing]}), 422)
    assert body["field"] == "rows.0.w2"
    body = error(api.post("/api/models/rollers/predict", json={"rows": [{"b9": 1}]}), 422)
    assert body["field"] == "rows.0.b9"
    error(api.post("/api/models/rollers/predict", json={"rows": rows, "dt": -1}), 422)


def test_serving_a_fitted_inductive_model_by_alias(api):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 2))
    y = 3.0 * x[:, :1] - 2.0 * x[:, 1:] + 0.5 + rng.normal(0, 0.01, (200, 1))
    artifact, metrics = fit_linear(x, y, ["a", "b"], ["y"])
    meta = {
        "kind": "inductive",
        "flavor": "linear",
        "metrics": metrics,
        "artifacts": ["linear.json"],
    }
    api.post("/api/models/lin/versions", json=meta)
    body = error(api.post("/api/models/lin/predict", json={"rows": [{"a": 1, "b": 1}]}), 409)
    assert "linear.json" in body["fix"]  # incomplete until its artifact is uploaded
    api.put("/api/models/lin/versions/1/artifacts/linear.json", content=artifact)
    api.post("/api/models/lin/versions", json={**meta, "artifacts": []})  # v2 lacks the file
    api.put("/api/models/lin/aliases/production", json={"version": 1})
    r = api.post("/api/models/lin/predict", json={"rows": [{"a": 1, "b": 1}, {"a": 0, "b": 0}]})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1
    got = [p["y"] for p in r.json()["predictions"]]
    np.testing.assert_allclose(got, [1.5, 0.5], atol=0.01)
    error(api.post("/api/models/lin/predict?version=2", json={"rows": [{"a": 1, "b": 1}]}), 422)
    error(api.post("/api/models/lin/predict", json={"rows": [{"a": "x", "b": 1}]}), 422)
    error(api.post("/api/models/lin/predict", json={"rows": []}), 422)


def test_versions_survive_a_restart_and_numbering_continues(tmp_path, clock):
    with Platform(tmp_path / "d", clock=clock) as platform:
        platform.registry.register("m", ROLLER_V, {"notes.txt": b"hello"})
        platform.registry.set_alias("m", "production", 1)
    with Platform(tmp_path / "d", clock=clock) as platform:
        reg = platform.registry
        assert reg.get("m", "production")["version"] == 1
        assert reg.register("m", ROLLER_V)["version"] == 2
        _, chunks = reg.artifact("m", 1, "notes.txt")
        assert b"".join(chunks) == b"hello"


def test_concurrent_registrations_get_distinct_numbers(registry):
    numbers, errors = [], []

    def register() -> None:
        try:
            for _ in range(5):
                numbers.append(registry.register("busy", {"kind": "inductive"})["version"])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=register) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and sorted(numbers) == list(range(1, 21))


# ---- namespaces ----------------------------------------------------------------------------------

FLEET = {"namespace": "fleet-a"}


def linear_artifact(slope: float) -> bytes:
    x = np.arange(10.0).reshape(-1, 1)
    return fit_linear(x, slope * x, ["x"], ["y"])[0]


def test_a_name_in_two_namespaces_is_two_models(api):
    for _ in range(2):
        assert api.post("/api/models/rollers/versions", json=ROLLER_V).status_code == 201
    r = api.post("/api/models/rollers/versions", json=ROLLER_V, params=FLEET)
    assert r.status_code == 201, r.text
    mine = r.json()
    assert (mine["namespace"], mine["version"]) == ("fleet-a", 1)  # numbered on its own
    assert mine["lineage"] == "model:fleet-a/rollers/1"
    assert api.get("/api/models/rollers/versions/1").json()["lineage"] == "model:rollers/1"
    body = error(
        api.post("/api/models/rollers/versions", json=ROLLER_V | {"version": 1}, params=FLEET), 409
    )
    assert "?namespace=fleet-a" in body["fix"] and "the next is 2" in body["fix"]
    api.post(
        "/api/models/solo/versions", json={"kind": "inductive"}, params={"namespace": "pump-1"}
    )

    def listed(**params) -> list[tuple]:
        models = api.get("/api/models", params=params).json()
        return [(m["namespace"], m["name"], m["versions"]) for m in models]

    assert listed() == [("default", "rollers", 2)]
    assert listed(namespace="default") == listed()
    assert listed(namespace="fleet-a") == [("fleet-a", "rollers", 1)]
    assert listed(namespace="*") == [
        ("default", "rollers", 2),
        ("fleet-a", "rollers", 1),
        ("pump-1", "solo", 1),
    ]
    assert listed(namespace="nobody") == []
    versions = api.get("/api/models/rollers/versions", params=FLEET).json()
    assert [(v["namespace"], v["version"]) for v in versions] == [("fleet-a", 1)]
    assert api.get("/api/models/rollers/versions/2", params=FLEET).status_code == 404
    body = error(api.get("/api/models/solo/versions"), 404)  # only in pump-1
    assert body["field"] == "name" and "namespace=*" in body["fix"]

    # a parent in another namespace is named with its namespace; both model nodes stay apart
    child = {**ROLLER_V, "parents": [{"name": "rollers", "version": 2, "namespace": "default"}]}
    r = api.post("/api/models/rollers/versions", json=child, params=FLEET)
    assert r.status_code == 201 and r.json()["parents"] == child["parents"]
    walk = api.get("/api/lineage/model:fleet-a/rollers/2", params={"direction": "up"}).json()
    ids = {n["id"] for n in walk["nodes"]}
    assert {"model:rollers/2", "model:fleet-a/rollers/2"} <= ids
    assert "model:fleet-a/rollers/1" not in ids
    same_ns = {**ROLLER_V, "parents": [{"name": "rollers", "version": 1}]}  # its own namespace
    r = api.post("/api/models/rollers/versions", json=same_ns, params=FLEET)
    walk = api.get(f"/api/lineage/{r.json()['lineage']}", params={"depth": 1}).json()
    assert "model:fleet-a/rollers/1" in {n["id"] for n in walk["nodes"]}
    gone = {**ROLLER_V, "parents": [{"name": "rollers", "version": 3, "namespace": "default"}]}
    assert error(api.post("/api/models/x/versions", json=gone, params=FLEET), 404)["field"] == (
        "parents"
    )


def test_aliases_archive_artifacts_and_predict_are_per_namespace(api):
    meta = {"kind": "inductive", "flavor": "linear", "artifacts": ["linear.json"]}
    for namespace, slope in (("default", 2.0), ("default", 5.0), ("fleet-a", 3.0)):
        params = {"namespace": namespace}
        number = api.post("/api/models/lin/versions", json=meta, params=params).json()["version"]
        url = f"/api/models/lin/versions/{number}/artifacts/linear.json"
        assert api.put(url, content=linear_artifact(slope), params=params).status_code == 201
    row = {"rows": [{"x": 1.0}]}

    def predicted(**params) -> tuple[str, int, float]:
        r = api.post("/api/models/lin/predict", json=row, params=params)
        assert r.status_code == 200, r.text
        out = r.json()
        return out["namespace"], out["version"], round(out["predictions"][0]["y"], 6)

    assert predicted() == ("default", 2, 5.0)
    assert predicted(**FLEET) == ("fleet-a", 1, 3.0)
    api.put("/api/models/lin/aliases/production", json={"version": 1})
    assert predicted() == ("default", 1, 2.0)
    assert predicted(**FLEET) == ("fleet-a", 1, 3.0)  # the alias is not fleet-a's
    assert api.get("/api/models/lin/aliases", params=FLEET).json() == {
        "namespace": "fleet-a",
        "name": "lin",
        "aliases": {},
        "history": [],
    }
    body = error(
        api.post("/api/models/lin/predict", json=row, params={"version": "production", **FLEET}),
        404,
    )
    assert body["field"] == "alias" and "?namespace=fleet-a" in body["fix"]
    # archiving v1 of default leaves fleet-a's v1 alone
    assert api.post("/api/models/lin/versions/1/archive").json()["archived"] is True
    assert api.get("/api/models/lin/versions/1", params=FLEET).json()["archived"] is False
    assert [v["version"] for v in api.get("/api/models/lin/versions", params=FLEET).json()] == [1]
    # uploads are per namespace too: fleet-a's file is taken, v2 exists only in default
    again = api.put("/api/models/lin/versions/1/artifacts/linear.json", content=b"{}", params=FLEET)
    assert error(again, 409)["field"] == "filename"
    missing = api.put(
        "/api/models/lin/versions/2/artifacts/linear.json", content=b"{}", params=FLEET
    )
    assert error(missing, 404)["field"] == "version"


def test_the_python_api_takes_a_namespace(registry):
    meta = {"kind": "inductive", "flavor": "linear"}
    first = registry.register("lin", meta, {"linear.json": linear_artifact(4.0)}, namespace="t-1")
    assert (first["namespace"], first["version"]) == ("t-1", 1)
    registry.register("lin", meta, {"linear.json": linear_artifact(7.0)})  # the default one
    registry.set_alias("lin", "production", 1, namespace="t-1")
    rows = {"rows": [{"x": 2.0}]}
    assert registry.predict("lin", rows, namespace="t-1")["predictions"][0]["y"] == pytest.approx(8)
    assert registry.predict("lin", rows)["predictions"][0]["y"] == pytest.approx(14)
    assert registry.get("lin", "production", namespace="t-1")["version"] == 1
    with pytest.raises(NotFound):
        registry.get("lin", "production")
    assert [m["namespace"] for m in registry.models(namespace="*")] == ["default", "t-1"]
    _, chunks = registry.artifact("lin", 1, "linear.json", namespace="t-1")
    assert b"".join(chunks) == linear_artifact(4.0)
    for bad in ("", "a b", "*", "x" * 201, 7):
        with pytest.raises(InvalidInput) as info:
            registry.get("lin", 1, namespace=bad)
        assert info.value.field == "namespace" and info.value.fix


BAD_NAMESPACES = [
    ("GET", "/api/models", "a b"),
    ("GET", "/api/models/m/versions", "*"),  # '*' only lists models
    ("GET", "/api/models/m/versions/1", "-x"),
    ("POST", "/api/models/m/versions", "a?b"),
    ("PUT", "/api/models/m/aliases/production", "é"),
    ("POST", "/api/models/m/predict", ""),
    ("PUT", "/api/models/m/versions/1/artifacts/a.bin", "x" * 201),
]


def test_a_bad_namespace_is_refused(api):
    api.post("/api/models/m/versions", json=ROLLER_V)
    for method, url, namespace in BAD_NAMESPACES:
        r = api.request(method, url, params={"namespace": namespace}, json={"version": 1})
        body = error(r, 422)
        assert body["field"] == "namespace" and "fleet-a" in body["fix"], (url, body)


# the registry.db schema from before namespaces, as the earlier registry created it
OLD_SCHEMA = """
CREATE TABLE versions (
    name TEXT NOT NULL, version INTEGER NOT NULL, created INTEGER NOT NULL, body TEXT NOT NULL,
    PRIMARY KEY (name, version));
CREATE TABLE artifacts (
    name TEXT NOT NULL, version INTEGER NOT NULL, filename TEXT NOT NULL,
    sha256 TEXT NOT NULL, size INTEGER NOT NULL, uploaded INTEGER NOT NULL,
    PRIMARY KEY (name, version, filename));
CREATE TABLE archive_log (
    n INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, version INTEGER NOT NULL,
    archived INTEGER NOT NULL, at INTEGER NOT NULL);
CREATE INDEX archive_log_version ON archive_log (name, version, n);
CREATE TABLE aliases (
    n INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, alias TEXT NOT NULL,
    version INTEGER NOT NULL, at INTEGER NOT NULL, author TEXT);
CREATE INDEX aliases_name ON aliases (name, alias, n);
"""


def old_registry(directory, clock) -> str:
    """A registry.db in the old schema: m/1 (an uploaded file), m/2 (archived), m/3, an alias
    moved twice, and other/1; returns the uploaded file's sha256."""
    content = b"old bytes"
    blob = directory / "upload"
    blob.write_bytes(content)
    sha256 = hashlib.sha256(content).hexdigest()
    FileArtifactStore(directory / "artifacts").put(blob, sha256)
    body = '{"kind": "inductive", "flavor": null, "ref": null, "description": "v%d", '
    body += '"author": "ana", "training": null, "metrics": {}, "hyperparameters": {}, '
    body += '"parents": %s, "tags": {}, "code_hash": null}'
    db = sqlite3.connect(directory / "registry.db")
    db.executescript(OLD_SCHEMA)
    with db:
        for name, number in (("m", 1), ("m", 2), ("m", 3), ("other", 1)):
            parents = '[{"name": "m", "version": 1}]' if number == 2 else "[]"
            db.execute(
                "INSERT INTO versions VALUES (?,?,?,?)",
                (name, number, clock.now - 1000 + number, body % (number, parents)),
            )
        db.execute("INSERT INTO artifacts VALUES ('m', 1, 'w.bin', ?, ?, ?)", (sha256, 9, 1))
        db.execute("INSERT INTO artifacts VALUES ('m', 3, 'late.bin', '', 0, 0)")
        db.execute("INSERT INTO archive_log (name, version, archived, at) VALUES ('m', 2, 1, 5)")
        for version, author in ((1, "ana"), (3, "bo")):
            db.execute(
                "INSERT INTO aliases (name, alias, version, at, author) VALUES (?,?,?,?,?)",
                ("m", "production", version, 7, author),
            )
    db.close()
    blob.unlink()
    return sha256


def test_a_registry_db_from_before_namespaces_is_migrated_in_place(tmp_path, clock):
    data = tmp_path / "d"
    data.mkdir()
    sha256 = old_registry(data, clock)
    with Platform(data, clock=clock) as platform:
        reg = platform.registry
        every = reg.versions("m", archived=True)
        assert [(v["namespace"], v["version"], v["description"]) for v in every] == [
            ("default", 1, "v1"),
            ("default", 2, "v2"),
            ("default", 3, "v3"),
        ]
        assert every[1]["archived"] and every[1]["parents"] == [{"name": "m", "version": 1}]
        assert [v["version"] for v in reg.versions("m")] == [1, 3]
        assert reg.get("m", "production")["version"] == 3
        history = reg.aliases("m")["history"]
        assert [(h["version"], h["author"]) for h in history] == [(1, "ana"), (3, "bo")]
        info, chunks = reg.artifact("m", 1, "w.bin")
        assert info["sha256"] == sha256 and b"".join(chunks) == b"old bytes"
        assert reg.get("m", 3)["artifacts"][0] == {
            "filename": "late.bin",
            "uploaded": False,
            "sha256": None,
            "size": None,
        }
        assert [(m["namespace"], m["name"]) for m in reg.models(namespace="*")] == [
            ("default", "m"),
            ("default", "other"),
        ]
        # still writable: numbering continues, and the name is free in another namespace
        assert reg.register("m", {"kind": "inductive"})["version"] == 4
        assert reg.register("m", {"kind": "inductive"}, namespace="fleet-a")["version"] == 1
        reg.put_artifact("m", 3, "late.bin", [b"now"])
        reg.set_alias("m", "production", 4)
        reg.archive("m", 2, False)
    with Platform(data, clock=clock) as platform:  # opening a migrated file changes nothing
        reg = platform.registry
        assert [v["version"] for v in reg.versions("m")] == [1, 2, 3, 4]
        assert reg.get("m", "production")["version"] == 4
        assert [h["version"] for h in reg.aliases("m")["history"]] == [1, 3, 4]
        assert reg.get("m", 3)["artifacts"][0]["uploaded"] is True
        assert reg.versions("m", namespace="fleet-a")[0]["version"] == 1
        assert reg.register("m", {"kind": "inductive"})["version"] == 5
    db = sqlite3.connect(data / "registry.db")
    tables = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "versions_before_namespaces" not in tables
    assert db.execute("SELECT count(*) FROM versions").fetchone()[0] == 7
    for table in ("versions", "artifacts", "archive_log", "aliases"):
        columns = [row[1] for row in db.execute(f"PRAGMA table_info({table})")]
        assert "namespace" in columns, table
    keyed = {row[1]: row[5] for row in db.execute("PRAGMA table_info(versions)")}
    assert keyed["namespace"] and keyed["name"] and keyed["version"]  # the primary key
    indexed = [row[2] for row in db.execute("PRAGMA index_info(aliases_name)")]
    assert indexed == ["namespace", "name", "alias", "n"]
    db.close()
