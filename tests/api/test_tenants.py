"""Namespaces as tenants: each token sees and changes its own namespace's objects only."""

from __future__ import annotations

import pytest
from conftest import PUMP, T0, obs
from fastapi.testclient import TestClient

from livetwin.api.app import create_app
from livetwin.api.auth import install_auth
from livetwin.auth import Access
from livetwin.errors import InvalidInput, NotFound
from livetwin.namespaces import check_namespace, namespace_of, twin_filter_sql

HOOK = {"url": "https://hooks.example.com/in", "secret": "s3cret-s3cret-s3cret"}
MODEL = {"kind": "deductive", "ref": "livetwin.examples.rollers:roller_line"}


@pytest.fixture
def tenants(platform):
    platform.put_type("pump", PUMP)
    twins = ("plant-a/p1", "plant-a/p2", "plant_b/p1", "loose")
    assert platform.ingest([obs(t, T0, flow=1.0) for t in twins]).accepted == 4
    app = create_app(platform)
    tokens = install_auth(app, platform, mode="tokens")

    def bearer(scope: str, namespace: str) -> dict:
        token = tokens.create(name=f"{scope}-{namespace}", scope=scope, namespace=namespace)
        return {"authorization": f"Bearer {token['token']}"}

    with TestClient(app) as client:
        yield client, bearer


def test_the_one_namespace_rule_and_twin_namespaces():
    assert check_namespace("home:7") == "home:7" and check_namespace(None) == "default"
    for bad in ("", "a/b", "a" * 65, "-x", "a b"):
        with pytest.raises(InvalidInput) as caught:
            check_namespace(bad, "filters.namespace")
        assert caught.value.field == "filters.namespace"
    assert namespace_of("a/b/c") == "a" and namespace_of("x") == "default"
    clause, args = twin_filter_sql("twin", {"plant_b", "default"})
    assert args == ["plant!_b/%"] and "NOT LIKE '%/%'" in clause  # '_' is no wildcard
    scoped = Access(frozenset({"a", "b"}))
    assert scoped.pick("a").namespaces == {"a"} and scoped.target("b") == "b"
    with pytest.raises(NotFound):
        scoped.pick("c")
    assert Access(frozenset({"a"})).target(None) == "a" and Access().target(None) == "default"


def test_lists_filter_and_other_namespaces_answer_404(tenants):
    client, bearer = tenants
    a, b, fleet = bearer("read", "plant-a"), bearer("read", "plant_b"), bearer("read", "*")
    ids = lambda h, q="": [t["id"] for t in client.get(f"/api/twins{q}", headers=h).json()["items"]]  # noqa: E731
    assert ids(a) == ["plant-a/p1", "plant-a/p2"] and ids(b) == ["plant_b/p1"]
    assert sorted(ids(fleet)) == ["loose", "plant-a/p1", "plant-a/p2", "plant_b/p1"]
    assert ids(fleet, "?namespace=default") == ["loose"]
    assert client.get("/api/twins?namespace=plant-a", headers=b).status_code == 404
    assert client.get("/api/twins/plant-a/p1", headers=b).status_code == 404
    assert client.get("/api/twins/plant-a/p1", headers=a).status_code == 200
    bad = client.get("/api/twins?namespace=a/b", headers=fleet)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "namespace"


@pytest.mark.platform_services("webhooks")
def test_scoped_admins_declare_types_webhooks_and_models_in_their_namespace(tenants):
    client, bearer = tenants
    admin_a, admin_b = bearer("admin", "plant-a"), bearer("admin", "plant_b")
    fleet = bearer("admin", "*")
    # types: declared into the token's namespace, invisible to the other
    assert client.put(
        "/api/types/valve", json={"properties": {"x": {}}}, headers=admin_a
    ).is_success
    assert [t["name"] for t in client.get("/api/types", headers=admin_a).json()] == ["valve"]
    assert client.get("/api/types/valve", headers=admin_b).status_code == 404
    moved = client.put(
        "/api/types/valve", json={"namespace": "plant_b", "properties": {}}, headers=admin_a
    )
    assert moved.status_code == 404  # a namespace it does not hold
    # webhooks: filters.namespace set from the token; the other tenant cannot see or delete it
    hook = client.post("/api/webhooks", json=HOOK, headers=admin_a)
    assert hook.status_code == 201, hook.text
    assert hook.json()["filters"]["namespace"] == "plant-a"
    sub = hook.json()["id"]
    assert client.get("/api/webhooks", headers=admin_b).json() == []
    assert client.delete(f"/api/webhooks/{sub}", headers=admin_b).status_code == 404
    assert [h["id"] for h in client.get("/api/webhooks", headers=fleet).json()] == [sub]
    # models: registered in the token's namespace
    made = client.post("/api/models/m/versions", json=MODEL, headers=admin_a)
    assert made.status_code == 201 and made.json()["namespace"] == "plant-a", made.text
    assert [m["name"] for m in client.get("/api/models", headers=admin_a).json()] == ["m"]
    assert client.get("/api/models", headers=admin_b).json() == []
    assert client.get("/api/models/m/versions/1", headers=admin_b).status_code == 404
    assert client.get("/api/models/m/versions/1?namespace=plant-a", headers=fleet).is_success


EXTRACTOR = {"twin": "$.id", "type": "pump", "values": {"flow": "$.flow"}}
MAPPING = {"type": "pump", "twin": "plant-a/{id}", "ts_column": "time", "values": {"flow": "q"}}


@pytest.mark.parametrize(
    "route, spec", [("/api/extractors", EXTRACTOR), ("/api/mappings", MAPPING)]
)
def test_extractors_and_mappings_belong_to_a_namespace(tenants, route, spec):
    client, bearer = tenants
    admin_a, admin_b = bearer("admin", "plant-a"), bearer("admin", "plant_b")
    read_a, fleet = bearer("read", "plant-a"), bearer("admin", "*")
    made = client.put(f"{route}/line-a", json=spec, headers=admin_a)
    assert made.status_code == 200, made.text
    assert made.json()["namespace"] == "plant-a"  # the token's only namespace
    assert client.put(f"{route}/shared", json=spec, headers=fleet).json().get("namespace") is None
    names = lambda h, q="": [x["name"] for x in client.get(f"{route}{q}", headers=h).json()]  # noqa: E731
    assert names(read_a) == ["line-a"] and names(admin_b) == []
    assert names(fleet) == ["line-a", "shared"] and names(fleet, "?namespace=default") == ["shared"]
    assert client.get(f"{route}?namespace=plant-a", headers=admin_b).status_code == 404
    # another namespace's object does not exist for this token, and its name is not free
    assert client.get(f"{route}/line-a", headers=read_a).json()["namespace"] == "plant-a"
    for token in (admin_b, bearer("read", "plant_b")):
        missing = client.get(f"{route}/line-a", headers=token)
        assert missing.status_code == 404 and "plant-a" not in missing.text
    assert client.get(f"{route}/shared", headers=admin_a).status_code == 404
    taken = client.put(f"{route}/line-a", json=spec, headers=admin_b)
    assert taken.status_code == 409 and taken.json()["error"]["field"] == "name"
    moved = client.put(f"{route}/line-a", json={**spec, "namespace": "plant_b"}, headers=admin_a)
    assert moved.status_code == 404  # a namespace the token does not hold
    bad = client.put(f"{route}/x", json={**spec, "namespace": "a/b"}, headers=fleet)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "namespace"
    # too weak a scope within the namespace stays a 403
    assert client.put(f"{route}/line-a", json=spec, headers=read_a).status_code == 403
    # a replacement without a namespace keeps the one it had
    again = client.put(f"{route}/line-a", json=spec, headers=fleet)
    assert again.json()["namespace"] == "plant-a"
    if route == "/api/mappings":
        assert client.delete(f"{route}/line-a", headers=admin_b).status_code == 404
        assert client.delete(f"{route}/line-a", headers=admin_a).status_code == 200
        assert names(fleet) == ["shared"]


@pytest.mark.platform_services("webhooks")
def test_a_namespace_exports_everything_it_owns_and_nothing_else(tenants):
    client, bearer = tenants
    admin_a, fleet = bearer("admin", "plant-a"), bearer("admin", "*")
    client.put("/api/types/valve", json={"properties": {"x": {}}}, headers=admin_a)
    client.post("/api/webhooks", json=HOOK, headers=admin_a)
    client.post("/api/models/m/versions", json=MODEL, headers=admin_a)
    client.put("/api/extractors/e-a", json=EXTRACTOR, headers=admin_a)
    client.put("/api/mappings/m-a", json=MAPPING, headers=admin_a)
    client.put("/api/mappings/m-all", json=MAPPING, headers=fleet)  # in default
    client.post("/api/webhooks", json=HOOK, headers=fleet)  # fleet-wide: not plant-a's
    got = client.get("/api/namespaces/plant-a/export", headers=admin_a)
    assert got.status_code == 200, got.text
    export = got.json()
    assert [t["id"] for t in export["twins"]] == ["plant-a/p1", "plant-a/p2"]
    assert export["twins"][0]["properties"]["flow"] == 1.0
    assert [t["name"] for t in export["types"]] == ["valve"]
    assert len(export["webhooks"]) == 1 and export["webhooks"][0]["filters"]["namespace"]
    assert [m["name"] for m in export["models"]] == ["m"] and export["models"][0]["versions"]
    assert [e["name"] for e in export["extractors"]] == ["e-a"]
    assert [m["name"] for m in export["mappings"]] == ["m-a"]
    assert client.get("/api/namespaces/plant_b/export", headers=admin_a).status_code == 404
    plant_b = client.get("/api/namespaces/plant_b/export", headers=fleet).json()
    assert [t["id"] for t in plant_b["twins"]] == ["plant_b/p1"] and plant_b["webhooks"] == []
    bad = client.get("/api/namespaces/a:b c/export", headers=fleet)
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "namespace"


def test_the_client_sends_its_namespace_with_every_request():
    import httpx

    from livetwin.client import Client

    seen: list[httpx.URL] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(200, json={"items": [], "total": 0, "offset": 0, "limit": 5})

    with Client("http://twins", namespace="home-7", transport=httpx.MockTransport(answer)) as c:
        c.twins(limit=5)
        c.alarms.list()
    assert [dict(u.params) for u in seen] == [
        {"namespace": "home-7", "limit": "5", "offset": "0"},
        {"namespace": "home-7"},
    ]


@pytest.mark.platform_services("webhooks")
def test_deleting_a_namespace_removes_what_it_owns_and_archives_its_models(tenants, platform):
    client, bearer = tenants
    admin_a, admin_b = bearer("admin", "plant-a"), bearer("admin", "plant_b")
    write_a, fleet = bearer("write", "plant-a"), bearer("admin", "*")
    client.put("/api/types/valve", json={"properties": {"x": {}}}, headers=admin_a)
    client.post("/api/ingest", json=[obs("plant-a/v", T0, "valve", x=1.0)], headers=admin_a)
    client.put("/api/types/gauge", json={"properties": {"x": {}}}, headers=admin_a)
    client.post("/api/ingest", json=[obs("plant_b/g", T0, "gauge", x=1.0)], headers=fleet)
    client.post("/api/webhooks", json=HOOK, headers=admin_a)
    client.post("/api/webhooks", json=HOOK, headers=fleet)  # fleet-wide: kept
    client.post("/api/models/m/versions", json=MODEL, headers=admin_a)
    client.put("/api/extractors/e-a", json=EXTRACTOR, headers=admin_a)
    client.put("/api/mappings/m-a", json=MAPPING, headers=admin_a)
    client.put("/api/mappings/m-all", json=MAPPING, headers=fleet)
    spec = {"kind": "builtin", "job": "calibrate", "args": {"type": "valve"}}
    platform.scheduler.define_function("nightly", spec, "plant-a")
    trigger = {"kind": "cron", "cron": "0 3 * * *"}
    body = {"id": "night", "function": "nightly", "namespace": "plant-a", "trigger": trigger}
    platform.scheduler.add_schedule(body)

    url = "/api/namespaces/plant-a"
    unconfirmed = client.delete(url, headers=admin_a)
    assert unconfirmed.status_code == 400
    assert unconfirmed.json()["error"]["field"] == "confirm"
    assert "confirm=plant-a" in unconfirmed.json()["error"]["fix"]
    assert client.delete(url, params={"confirm": "plant-a"}, headers=write_a).status_code == 403
    assert client.delete(url, params={"confirm": "plant-a"}, headers=admin_b).status_code == 404
    assert platform.twin("plant-a/p1")  # nothing refused changed anything

    done = client.delete(url, params={"confirm": "plant-a"}, headers=admin_a)
    assert done.status_code == 200, done.text
    answer = done.json()
    assert sorted(answer["deleted"]["twins"]) == ["plant-a/p1", "plant-a/p2", "plant-a/v"]
    assert answer["deleted"]["types"] == ["valve"]
    assert answer["kept_types"] == ["gauge"]  # plant_b's twin uses it
    assert answer["deleted"]["schedules"] == ["night"]
    assert answer["deleted"]["functions"] == ["nightly"]
    assert len(answer["deleted"]["webhooks"]) == 1
    assert answer["deleted"]["extractors"] == ["e-a"] and answer["deleted"]["mappings"] == ["m-a"]
    assert answer["archived_models"] == [{"model": "m", "version": 1}]

    left = client.get("/api/namespaces/plant-a/export", headers=fleet).json()
    for key in ("twins", "webhooks", "extractors", "mappings", "functions", "schedules"):
        assert left[key] == [], key
    assert [t["name"] for t in left["types"]] == ["gauge"]
    assert left["models"][0]["versions"][0]["archived"] is not None  # kept, archived
    assert [t["id"] for t in client.get("/api/twins", headers=fleet).json()["items"]] == [
        "plant_b/p1",
        "loose",
        "plant_b/g",
    ]
    assert [m["name"] for m in platform.list_mappings()] == ["m-all"]
    assert len(platform.webhooks.subscriptions()) == 1
