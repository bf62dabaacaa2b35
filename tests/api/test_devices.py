"""Device credentials: issued per device for a twin or pattern, hashed at rest, good for sending
their own twins' observations and nothing else, revoked at once; the CLI and the Mosquitto files."""

from __future__ import annotations

import base64
import hashlib
import json
import time

import pytest
from conftest import PUMP, T0, obs
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from livetwin.api.app import create_app
from livetwin.api.auth import install_auth
from livetwin.auth.devices import DevicePrincipal, DeviceStore, TwinPattern
from livetwin.auth.rules import Unauthorized
from livetwin.cli.devices import devices_app
from livetwin.errors import InvalidInput

TWIN_A, TWIN_B = "plant-a/pump-1", "plant-b/pump-1"


@pytest.fixture
def secured(platform):
    """An app with token auth over `platform`; a fleet admin's headers; the token store."""
    platform.put_type("pump", PUMP)
    assert platform.ingest([obs(TWIN_B, T0, flow=10.0)]).accepted == 1
    app = create_app(platform)
    tokens = install_auth(app, platform, mode="tokens")
    admin = tokens.create(name="root", scope="admin", namespace="*")["token"]
    with TestClient(app) as client:
        yield client, _bearer(admin), tokens


def _bearer(credential: str) -> dict:
    return {"authorization": f"Bearer {credential}"}


def _journaled(platform) -> int:
    return platform.stats()["journal_observations"]


def test_a_device_writes_its_own_twins_and_nothing_else(secured, platform):
    client, admin, _ = secured
    made = client.post(
        "/api/devices", json={"name": "line gateway", "twins": "plant-a/pump-*"}, headers=admin
    )
    assert made.status_code == 201, made.text
    device = made.json()
    credential = device["credential"]
    assert credential.startswith(f"ltd_{device['id']}_")
    assert device["namespace"] == "plant-a" and device["mqtt_username"] == device["id"]
    assert device["mqtt_topic"] == f"devices/{device['id']}/"
    # shown once: never again in a list or a read
    listed = client.get("/api/devices", headers=admin)
    assert [d["id"] for d in listed.json()] == [device["id"]] and credential not in listed.text
    got = client.get(f"/api/devices/{device['id']}", headers=admin).json()
    assert "credential" not in got and got["revoked"] is None

    mine = _bearer(credential)
    own = [obs(TWIN_A, T0, flow=1.5), obs("plant-a/pump-2", T0, flow=2.5)]
    response = client.post("/api/ingest", json=own, headers=mine)
    assert response.status_code == 200 and response.json()["accepted"] == 2
    assert platform.twin(TWIN_A)["properties"]["flow"] == 1.5

    before = _journaled(platform)
    for batch, field, named in (
        ([obs(TWIN_A, T0 + 1, flow=9.0), obs(TWIN_B, T0 + 1, flow=9.0)], "[1].twin", TWIN_B),
        ([obs("plant-a/valve-1", T0, flow=9.0)], "[0].twin", "plant-a/valve-1"),
        ([obs("plant-a/pump-1/sub", T0, flow=9.0)], "[0].twin", "plant-a/pump-1/sub"),
        ([{**obs("plant-a/pump-3", T0, flow=9.0), "parent": TWIN_B}], "[0].parent", TWIN_B),
    ):
        refused = client.post("/api/ingest?atomic=false", json=batch, headers=mine)
        assert refused.status_code == 403, refused.text
        error = refused.json()["error"]
        assert error["code"] == "forbidden" and error["field"] == field
        assert named in error["message"] and "plant-a/pump-*" in error["message"]
        assert "POST /api/devices" in error["fix"]
    assert _journaled(platform) == before  # nothing of a refused batch was written
    assert platform.twin(TWIN_B)["properties"]["flow"] == 10.0
    # a parent in its own namespace is fine
    linked = [{**obs("plant-a/pump-3", T0, flow=3.0), "parent": "plant-a/line-1"}]
    platform.put_type("line", {"properties": {"speed": {}}, "children": ["pump"]})
    assert platform.ingest([obs("plant-a/line-1", T0, "line", speed=1.0)]).accepted == 1
    response = client.post("/api/ingest", json=linked, headers=mine)
    assert response.json()["accepted"] == 1, response.text

    # a device credential calls no other API, not even reads of its own twins
    for method, path in (
        ("GET", f"/api/twins/{TWIN_A}"),
        ("GET", "/api/twins"),
        ("GET", "/api/devices"),
        ("POST", "/api/devices"),
        ("POST", "/api/ingest/some-extractor"),
        ("GET", "/api/stream"),
        ("GET", "/metrics"),
        ("PUT", "/api/types/pump"),
    ):
        response = client.request(method, path, headers=mine, json={"twins": "plant-a/**"})
        assert response.status_code == 403, f"{method} {path}: {response.text}"
        assert "POST /api/ingest" in response.json()["error"]["message"]
    assert [d["id"] for d in client.get("/api/devices", headers=admin).json()] == [device["id"]]


@pytest.mark.platform_services("webhooks")
def test_a_device_credential_is_refused_by_every_operation_but_ingest(secured, platform):
    """Every operation of the OpenAPI document, called with a device credential: 403 (public
    ones aside), and nothing written; only POST /api/ingest with its own twin is let through."""
    client, admin, _ = secured
    made = client.post("/api/devices", json={"name": "d", "twins": TWIN_A}, headers=admin)
    mine = _bearer(made.json()["credential"])
    body = [obs(TWIN_A, T0, flow=1.0)]
    before, let_through = _journaled(platform), []
    for template, item in client.app.openapi()["paths"].items():
        path = template.replace("{twin_id}", TWIN_A)
        path = "/".join("x" if p.startswith("{") else p for p in path.split("/"))
        for method in item:
            if "security" not in item[method]:
                continue  # public: /api/health
            send = {"json": body} if method in ("post", "put", "patch") else {}
            response = client.request(method.upper(), path, headers=mine, **send)
            if response.status_code != 403:
                let_through.append((method.upper(), template, response.status_code))
            else:
                assert response.json()["error"]["field"] == "authorization", template
    assert let_through == [("POST", "/api/ingest", 200)]
    assert _journaled(platform) == before + 1


def test_revocation_takes_effect_at_once_and_is_measured(secured, platform, tmp_path):
    """Revoked by the CLI (another process's view of the same store), the running server refuses
    the device's next request: the test measures the time until the first refusal."""
    client, admin, _ = secured
    device = client.post("/api/devices", json={"name": "p1", "twins": TWIN_A}, headers=admin).json()
    mine = _bearer(device["credential"])
    assert client.post("/api/ingest", json=[obs(TWIN_A, T0, flow=1.0)], headers=mine).is_success
    revoked = CliRunner().invoke(
        devices_app, ["revoke", device["id"], "--data", str(tmp_path / "data")]
    )
    assert revoked.exit_code == 0, revoked.output
    started, i = time.monotonic(), 0
    while True:
        i += 1
        response = client.post("/api/ingest", json=[obs(TWIN_A, T0 + i, flow=2.0)], headers=mine)
        if response.status_code == 401:
            break
        assert time.monotonic() - started < 5, "revocation did not take effect within 5 s"
    took = time.monotonic() - started
    assert took < 2.0 and i == 1, f"refused after {took:.3f} s and {i} requests"
    error = response.json()["error"]
    assert "revoked" in error["message"] and error["field"] == "authorization"
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert platform.twin(TWIN_A)["properties"]["flow"] == 1.0
    listed = client.get(f"/api/devices/{device['id']}", headers=admin).json()
    assert listed["revoked"] is not None
    # revoking over HTTP works the same, and twice is harmless
    other = client.post("/api/devices", json={"name": "p2", "twins": TWIN_A}, headers=admin)
    other_id = other.json()["id"]
    assert client.delete(f"/api/devices/{other_id}", headers=admin).json()["revoked"]
    assert client.delete(f"/api/devices/{other_id}", headers=admin).status_code == 200
    response = client.post(
        "/api/ingest", json=[obs(TWIN_A, T0, flow=3.0)], headers=_bearer(other.json()["credential"])
    )
    assert response.status_code == 401


def test_namespace_admins_manage_their_own_namespaces_devices(secured):
    client, admin, tokens = secured
    admin_a = _bearer(tokens.create(name="aa", scope="admin", namespace="plant-a")["token"])
    admin_b = _bearer(tokens.create(name="ab", scope="admin", namespace="plant-b")["token"])
    write_a = _bearer(tokens.create(name="wa", scope="write", namespace="plant-a")["token"])
    made = client.post("/api/devices", json={"name": "a", "twins": "plant-a/**"}, headers=admin_a)
    assert made.status_code == 201
    device_id = made.json()["id"]
    # another namespace's devices do not exist for you; nor may you issue them
    response = client.post("/api/devices", json={"name": "b", "twins": TWIN_B}, headers=admin_a)
    assert response.status_code == 404 and "plant-b" in response.json()["error"]["message"]
    assert client.get("/api/devices", headers=admin_b).json() == []
    for method in ("GET", "DELETE"):
        response = client.request(method, f"/api/devices/{device_id}", headers=admin_b)
        assert response.status_code == 404
    assert client.get(f"/api/devices/{device_id}", headers=admin).status_code == 200
    # issuing credentials needs admin
    response = client.post("/api/devices", json={"name": "w", "twins": TWIN_A}, headers=write_a)
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
    assert client.get("/api/devices", headers=write_a).status_code == 403
    assert client.get("/api/devices?namespace=plant-b", headers=admin_a).status_code == 404


def test_bad_device_requests_and_credentials_name_the_field(secured):
    client, admin, _ = secured
    for body, field in (
        ([{"name": "x", "twins": TWIN_A}], "body"),
        ({"name": "x", "twins": TWIN_A, "scope": "admin"}, "scope"),
        ({"twins": TWIN_A}, "name"),
        ({"name": " ", "twins": TWIN_A}, "name"),
        ({"name": "x"}, "twins"),
        ({"name": "x", "twins": ""}, "twins"),
        ({"name": "x", "twins": 7}, "twins"),
        ({"name": "x", "twins": "*/pump-1"}, "twins"),
        ({"name": "x", "twins": "plant-?/pump-1"}, "twins"),
        ({"name": "x", "twins": "**"}, "twins"),
        ({"name": "x", "twins": "bad ns!/pump-1"}, "twins"),
        ({"name": "x", "twins": "a/" + "b" * 600}, "twins"),
        ({"name": "x", "twins": "pump\n1"}, "twins"),
        ({"name": "x", "twins": TWIN_A, "namespace": "plant-b"}, "namespace"),
    ):
        response = client.post("/api/devices", json=body, headers=admin)
        assert response.status_code == 422, f"{body}: {response.text}"
        error = response.json()["error"]
        assert error["field"] == field and error["fix"], body
    response = client.post("/api/devices", content=b"{not json", headers=admin)
    assert response.status_code == 400
    assert client.get("/api/devices/nope", headers=admin).status_code == 404
    assert client.get("/api/devices", headers=admin).json() == []  # nothing was issued

    good = client.post("/api/devices", json={"name": "g", "twins": TWIN_A}, headers=admin).json()
    credential = good["credential"]
    wrong_secret = credential[:-4] + ("AAAA" if not credential.endswith("AAAA") else "BBBB")
    unknown_id = "ltd_000000000000_" + credential.split("_", 2)[2]
    for presented in ("ltd_", "ltd_123_abc", wrong_secret, unknown_id, credential + "x"):
        response = client.post(
            "/api/ingest", json=[obs(TWIN_A, T0, flow=1.0)], headers=_bearer(presented)
        )
        assert response.status_code == 401, presented
        assert response.json()["error"]["field"] == "authorization"
    assert "flow" not in client.get(f"/api/twins/{TWIN_A}", headers=admin).text


def test_credentials_are_stored_hashed_with_a_broker_hash_that_verifies(tmp_path):
    with DeviceStore.in_directory(tmp_path) as store:
        made = store.create(name="gw", twins="plant-a/pump-7")
        credential = made["credential"]
        principal = store.authenticate(credential)
    assert isinstance(principal, DevicePrincipal) and principal.grants == ()
    secret = credential.split("_", 2)[2]
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("auth.db*"))
    assert secret.encode() not in raw and credential.encode() not in raw
    assert hashlib.sha256(secret.encode()).digest() in raw
    passwords, acl = tmp_path / "mq" / "passwords", tmp_path / "mq" / "acl"
    with DeviceStore.in_directory(tmp_path) as store:
        assert store.export_mosquitto(passwords, acl) == 1
    user, stored = passwords.read_text().strip().split(":", 1)
    assert user == made["id"]
    _, seven, iterations, salt, derived = stored.split("$")
    assert seven == "7"  # mosquitto_passwd's PBKDF2-SHA512 format, checked against the secret
    expected = hashlib.pbkdf2_hmac(
        "sha512", credential.encode(), base64.b64decode(salt), int(iterations)
    )
    assert base64.b64decode(derived) == expected
    assert (passwords.stat().st_mode & 0o777) == 0o600


def test_twin_patterns():
    cases = {
        "plant-a/pump-7": (["plant-a/pump-7"], ["plant-a/pump-70", "plant-b/pump-7"]),
        "plant-a/pump-*": (["plant-a/pump-1", "plant-a/pump-"], ["plant-a/pump-1/x", "plant-a/v"]),
        "plant-a/line-?/**": (["plant-a/line-1/a/b", "plant-a/line-2/x"], ["plant-a/line-10/x"]),
        "plant-a/**": (["plant-a/x", "plant-a/x/y"], ["plant-b/x", "plant-a"]),
        "pump-*": (["pump-1"], ["plant-a/pump-1", "x/pump-1"]),
        "plant.a:1/p+[1]": (["plant.a:1/p+[1]"], ["plant.a:1/p1"]),
    }
    for text, (yes, no) in cases.items():
        pattern = TwinPattern.parse(text)
        assert all(pattern.matches(t) for t in yes), text
        assert not any(pattern.matches(t) for t in no), text
    assert TwinPattern.parse("plant-a/**").namespace == "plant-a"
    assert TwinPattern.parse("pump-*").namespace == "default"
    assert TwinPattern.parse("plant-a/**").allows("parent", "plant-a/line")
    assert not TwinPattern.parse("plant-a/**").allows("parent", "plant-b/line")
    for bad in ("*/x", "**", "x**", "", "a b/c"):
        with pytest.raises(InvalidInput) as caught:
            TwinPattern.parse(bad)
        assert caught.value.field == "twins"


def test_cli_devices_create_list_revoke_export(tmp_path):
    runner = CliRunner()
    data = str(tmp_path / "d")
    made = runner.invoke(
        devices_app, ["create", "--twins", "plant-a/pump-*", "--name", "gw", "--data", data]
    )
    assert made.exit_code == 0, made.output
    credential = made.output.strip().splitlines()[-1]
    assert credential.startswith("ltd_")
    other = runner.invoke(devices_app, ["create", "--twins", TWIN_B, "--name", "b", "--data", data])
    listed = json.loads(runner.invoke(devices_app, ["list", "--json", "--data", data]).output)
    assert [(d["name"], d["twins"], d["namespace"]) for d in listed] == [
        ("gw", "plant-a/pump-*", "plant-a"),
        ("b", TWIN_B, "plant-b"),
    ]
    assert credential not in runner.invoke(devices_app, ["list", "--data", data]).output
    gw, b = listed[0]["id"], listed[1]["id"]
    revoked = runner.invoke(devices_app, ["revoke", gw, "--data", data])
    assert revoked.exit_code == 0 and "export-mosquitto" in revoked.output
    with DeviceStore.in_directory(tmp_path / "d") as store, pytest.raises(Unauthorized):
        store.authenticate(credential)

    (secret := tmp_path / "bridge-password").write_text("bridge-Pa55\n")
    passwords, acl = tmp_path / "passwords", tmp_path / "acl"
    exported = runner.invoke(
        devices_app,
        ["export-mosquitto", "--passwords", str(passwords), "--acl", str(acl), "--bridge-user",
         "livetwin", "--bridge-password-file", str(secret), "--data", data],
    )  # fmt: skip
    assert exported.exit_code == 0, exported.output
    users = [line.split(":")[0] for line in passwords.read_text().splitlines()]
    assert users == ["livetwin", b]  # the revoked device is left out
    rules = acl.read_text()
    assert f"user {b}\ntopic readwrite devices/{b}/#" in rules
    assert "user livetwin\ntopic readwrite #" in rules and gw not in rules
    assert other.output.strip().splitlines()[-1] not in passwords.read_text()

    for args, words in (
        (["create", "--twins", "**", "--name", "x"], "namespace"),
        (["create", "--twins", TWIN_A, "--name", ""], "name"),
        (["revoke", "nope"], "no device"),
        (["export-mosquitto", "--passwords", "p", "--acl", "a", "--bridge-password-file",
          str(secret)], "--bridge-user"),
        (["export-mosquitto", "--passwords", "p", "--acl", "a", "--bridge-user", "lt",
          "--bridge-password-file", str(tmp_path / "missing")], "cannot read"),
    ):  # fmt: skip
        bad = runner.invoke(devices_app, [*args, "--data", data])
        assert bad.exit_code == 2 and "fix:" in bad.output and words in bad.output, bad.output


@pytest.mark.services
def test_devices_live_in_postgresql_when_it_is_configured(tmp_path, monkeypatch):
    """With LIVETWIN_DATABASE_URL set, the CLI and a server share devices in PostgreSQL (schema
    `<schema>_auth`, table `devices`); no auth.db file is written."""
    import psycopg
    from postgres_support import PG_URL, fresh_schema

    with fresh_schema() as url:
        schema = url.rsplit("%3D", 1)[1]
        monkeypatch.setenv("LIVETWIN_DATABASE_URL", url)
        runner = CliRunner()
        data = str(tmp_path / "d")
        made = runner.invoke(
            devices_app, ["create", "--twins", TWIN_A, "--name", "gw", "--data", data]
        )
        assert made.exit_code == 0, made.output
        credential = made.output.strip().splitlines()[-1]
        with DeviceStore.in_directory(tmp_path / "elsewhere", database_url=url) as store:
            assert store.authenticate(credential).twins.text == TWIN_A
            assert store.owner(credential.split("_")[1]).text == TWIN_A
            store.revoke(credential.split("_")[1])
            with pytest.raises(Unauthorized):
                store.authenticate(credential)
        with psycopg.connect(PG_URL) as conn:
            (count,) = conn.execute(f'SELECT count(*) FROM "{schema}_auth".devices').fetchone()
        assert count == 1
        assert not (tmp_path / "d" / "auth.db").exists()
