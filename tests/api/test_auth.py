"""Auth: tokens hashed at rest, the access rule on every route of the API, JWTs from a JWKS URL."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from conftest import PUMP, T0, obs
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from typer.testing import CliRunner
from webhook_support import LOOPBACK

from livetwin.api.app import create_app
from livetwin.api.auth import install_auth
from livetwin.auth import (
    ALL,
    Grant,
    Principal,
    TokenStore,
    Unauthorized,
    grants_from_claims,
    namespace_of,
    requirement,
)
from livetwin.cli.admin import token_app
from livetwin.outbound import OutboundPolicy

SECRET_VALUE = 424.125  # a value only plant-a's twin holds: it must never appear in a refusal
TWIN_A = "plant-a/pump-1"
TWIN_B = "plant-b/pump-1"


@pytest.fixture
def secured(platform):
    """An app with every route module there is, ops routes and token auth; the token store."""
    platform.put_type("pump", PUMP)
    result = platform.ingest(
        [
            obs(TWIN_A, T0, flow=SECRET_VALUE, pressure=3.0),
            obs(TWIN_B, T0, flow=10.0, pressure=2.0),
            obs("pump-9", T0, flow=11.0, pressure=2.0),
        ]
    )
    assert result.accepted == 3, result.rejected
    app = create_app(platform)  # every route module of the platform is wired in
    tokens = install_auth(app, platform, mode="tokens")
    with TestClient(app) as client:
        yield client, tokens


def _bearer(token: str) -> dict:
    return {"authorization": f"Bearer {token}"}


def _concrete(path: str) -> str:
    """An OpenAPI path with its parameters filled: twins are plant-a's, anything else 'x'."""
    out = path
    for part in path.split("{")[1:]:
        name = part.split("}")[0]
        value = TWIN_A if name.split(":")[0] in ("twin_id", "twin") else "x"
        out = out.replace("{" + name + "}", value)
    return out


def _operations(client) -> list[tuple[str, str, str]]:
    """(method, template, concrete path) of every operation in the OpenAPI document."""
    paths = client.app.openapi()["paths"]
    return [
        (method.upper(), template, _concrete(template))
        for template, item in paths.items()
        for method in item
        if method in ("get", "head", "post", "put", "patch", "delete")
    ]


def _assert_refused(response, status: int, what: str) -> None:
    assert response.status_code == status, f"{what}: {response.status_code} {response.text[:300]}"
    body = response.json()
    assert set(body) == {"error"}, what
    codes = {401: "unauthorized", 403: "forbidden", 404: "not_found"}
    assert body["error"]["code"] == codes[status], what
    assert body["error"]["fix"], what
    assert str(SECRET_VALUE) not in response.text, f"{what} leaked twin data"
    assert "flow" not in response.text and "pressure" not in response.text, what


# Every operation of the API, classified (docs/tenants.md). A new route fails
# `test_every_operation_is_classified` until it is added here:
#   public: no credentials needed            twin: a twin in the path; another namespace's is 404
#   tenant: takes an `Access` (lists filter,  fleet: needs the scope on '*'
#           objects of other namespaces 404)  ingest: the body's twins are checked
ROUTES = {
    "GET /api/types": "tenant",
    "PUT /api/types/{name}": "tenant",
    "GET /api/types/{name}": "tenant",
    "DELETE /api/types/{name}": "tenant",
    "POST /api/types/import": "fleet",
    "GET /api/types/{name}/aggregate": "fleet",
    "GET /api/opcua": "fleet",
    "GET /api/opcua/connectors/{name}": "fleet",
    "PUT /api/opcua/connectors/{name}": "fleet",
    "DELETE /api/opcua/connectors/{name}": "fleet",
    "GET /ngsi-ld/v1/entities": "fleet",
    "GET /ngsi-ld/v1/entities/{entity_id}": "fleet",
    "GET /api/extractors": "tenant",
    "PUT /api/extractors/{name}": "tenant",
    "GET /api/extractors/{name}": "tenant",
    "POST /api/ingest": "ingest",
    "POST /api/ingest/{extractor}": "fleet",
    "POST /api/types/{name}/calibrate": "fleet",
    "GET /api/types/{name}/calibration": "tenant",
    "POST /api/twins/{twin_id}/calibrate": "twin",
    "GET /api/twins/{twin_id}/calibration": "twin",
    "GET /api/stream": "tenant",
    "PUT /api/twins/{twin_id}/desired": "twin",
    "GET /api/twins/{twin_id}/desired": "twin",
    "GET /api/twins": "tenant",
    "GET /api/twins/{twin_id}/history": "twin",
    "GET /api/twins/{twin_id}/observations": "twin",
    "GET /api/twins/{twin_id}/events": "twin",
    "GET /api/twins/{twin_id}": "twin",
    "POST /api/twins": "tenant",
    "PATCH /api/twins/{twin_id}": "twin",
    "DELETE /api/twins/{twin_id}": "twin",
    "GET /metrics": "fleet",
    "GET /api/health": "public",
    "GET /api/cluster": "fleet",
    "GET /api/alarms": "tenant",
    "GET /api/alarms/counts": "tenant",
    "GET /api/alarms/{alarm_id}": "tenant",
    "POST /api/alarms/{alarm_id}/ack": "tenant",
    "POST /api/alarms/{alarm_id}/clear": "tenant",
    "POST /api/alarms/{alarm_id}/comments": "tenant",
    "GET /api/mqtt": "fleet",
    "GET /api/mqtt/subscriptions": "fleet",
    "GET /api/mqtt/subscriptions/{name}": "fleet",
    "PUT /api/mqtt/subscriptions/{name}": "fleet",
    "DELETE /api/mqtt/subscriptions/{name}": "fleet",
    "POST /api/webhooks": "tenant",
    "GET /api/webhooks": "tenant",
    "GET /api/webhooks/dead": "tenant",
    "GET /api/webhooks/{sub_id}": "tenant",
    "DELETE /api/webhooks/{sub_id}": "tenant",
    "GET /api/webhooks/{sub_id}/deliveries": "tenant",
    "POST /api/webhooks/{sub_id}/redeliver": "tenant",
    "PUT /api/functions/{name}": "fleet",
    "GET /api/functions/{name}": "tenant",
    "DELETE /api/functions/{name}": "fleet",
    "GET /api/functions": "tenant",
    "POST /api/functions/{name}/run": "tenant",
    "POST /api/schedules": "tenant",
    "GET /api/schedules": "tenant",
    "GET /api/schedules/{schedule_id}": "tenant",
    "PATCH /api/schedules/{schedule_id}": "tenant",
    "DELETE /api/schedules/{schedule_id}": "tenant",
    "POST /api/schedules/{schedule_id}/run": "tenant",
    "GET /api/events/waiting": "tenant",
    "POST /api/events": "tenant",
    "GET /api/runs": "tenant",
    "GET /api/runs/{run_id}": "tenant",
    "POST /api/runs/{run_id}/cancel": "tenant",
    "POST /api/backtests": "fleet",
    "GET /api/backtests": "fleet",
    "GET /api/backtests/{backtest_id}": "fleet",
    "GET /api/models": "tenant",
    "DELETE /api/models": "fleet",
    "POST /api/models/{name}/versions": "tenant",
    "GET /api/models/{name}/versions": "tenant",
    "DELETE /api/models/{name}/versions": "fleet",
    "GET /api/models/{name}/versions/{version}": "tenant",
    "PUT /api/models/{name}/versions/{version}": "tenant",
    "DELETE /api/models/{name}/versions/{version}": "fleet",
    "POST /api/models/{name}/versions/{version}/archive": "tenant",
    "DELETE /api/models/{name}/versions/{version}/archive": "fleet",
    "POST /api/models/{name}/versions/{version}/unarchive": "tenant",
    "DELETE /api/models/{name}/versions/{version}/unarchive": "fleet",
    "PUT /api/models/{name}/versions/{version}/artifacts/{filename}": "tenant",
    "GET /api/models/{name}/versions/{version}/artifacts/{filename}": "tenant",
    "DELETE /api/models/{name}/versions/{version}/artifacts/{filename}": "fleet",
    "GET /api/models/{name}/aliases": "tenant",
    "DELETE /api/models/{name}/aliases": "fleet",
    "PUT /api/models/{name}/aliases/{alias}": "tenant",
    "DELETE /api/models/{name}/aliases/{alias}": "fleet",
    "POST /api/models/{name}/predict": "tenant",
    "DELETE /api/models/{name}/predict": "fleet",
    "DELETE /api/models/{name}": "fleet",
    "GET /api/lineage/value": "fleet",
    "GET /api/lineage/{node_id}": "fleet",
    "GET /api/mappings": "tenant",
    "PUT /api/mappings/{name}": "tenant",
    "GET /api/mappings/{name}": "tenant",
    "DELETE /api/mappings/{name}": "tenant",
    "POST /api/imports": "fleet",
    "GET /api/types/{name}/export": "fleet",
    "POST /api/scenarios": "tenant",
    "GET /api/scenarios": "tenant",
    "GET /api/scenarios/{scenario_id}": "tenant",
    "GET /api/namespaces/{namespace}/export": "tenant",
    "DELETE /api/namespaces/{namespace}": "tenant",
    "GET /api/tokens": "fleet",
    "POST /api/tokens": "fleet",
    "DELETE /api/tokens/{token_id}": "fleet",
    "POST /api/devices": "tenant",
    "GET /api/devices": "tenant",
    "GET /api/devices/{device_id}": "tenant",
    "DELETE /api/devices/{device_id}": "tenant",
    "GET /api/auth/config": "public",
    "GET /api/auth/me": "tenant",
    "POST /api/auth/ticket": "tenant",
}
NEVER_ANSWERS = {"GET /api/stream"}  # an allowed caller gets an endless stream


def _needed_scope(method: str, template: str) -> str:
    return requirement(method, template, None).scope


@pytest.mark.platform_services("webhooks")
def test_every_operation_is_classified(secured):
    client, _ = secured
    operations = {f"{m} {t}" for m, t, _ in _operations(client)}
    assert sorted(operations - set(ROUTES)) == [], "classify these routes in ROUTES"
    assert sorted(set(ROUTES) - operations) == [], "these routes are gone: drop them from ROUTES"


@pytest.mark.platform_services("webhooks")
def test_auth_matrix_every_operation_by_every_kind_of_caller(secured, platform):
    """Every operation x {no token, too weak a scope, another namespace, the right namespace,
    fleet admin}: 401, 403, 404 (another tenant's twin) or allowed, per its class in ROUTES."""
    client, tokens = secured
    made = {
        name: tokens.create(name=name, scope=scope, namespace=ns)["token"]
        for name, scope, ns in (
            ("read-all", "read", "*"),
            ("write-all", "write", "*"),
            ("admin-b", "admin", "plant-b"),
            ("admin-a", "admin", "plant-a"),
            ("admin-all", "admin", "*"),
        )
    }
    weaker = {"write": made["read-all"], "admin": made["write-all"]}
    body = [{"twin": TWIN_A, "type": "pump", "values": {"flow": 1.0}}]
    journal_before = platform.stats()["journal_observations"]
    allowed: list[tuple[str, str, dict]] = []
    for method, template, path in _operations(client):
        key = f"{method} {template}"
        kind, scope = ROUTES[key], _needed_scope(method, template)
        send = {"json": body} if method in ("POST", "PUT", "PATCH") else {}

        def call(token: str | None, send=send, method=method, path=path):
            headers = _bearer(token) if token else {}
            return client.request(method, path, headers=headers, **send)

        if kind == "public":
            assert call(None).status_code not in (401, 403), key
            continue
        _assert_refused(call(None), 401, f"{key} without a token")
        if scope in weaker:
            _assert_refused(call(weaker[scope]), 403, f"{key} with a scope below {scope}")
        other = call(made["admin-b"]) if key not in NEVER_ANSWERS else None
        if other is None:
            pass  # an endless stream (it is tenant-aware: filtered to the caller's twins)
        elif kind in ("fleet", "ingest"):
            _assert_refused(other, 403, f"{key} with another namespace's token")
        elif kind == "twin":
            _assert_refused(other, 404, f"{key} on another namespace's twin")
        else:  # tenant: allowed, and nothing of plant-a's shows
            assert other.status_code not in (401, 403), f"{key}: {other.text[:200]}"
            assert TWIN_A not in other.text and str(SECRET_VALUE) not in other.text, key
        if kind == "fleet":
            _assert_refused(call(made["admin-a"]), 403, f"{key} needs '*'")
        elif key not in NEVER_ANSWERS:
            allowed.append((key, "admin-a", send))
        if key not in NEVER_ANSWERS:
            allowed.append((key, "admin-all", send))
    # nothing refused wrote anything
    assert platform.stats()["journal_observations"] == journal_before
    assert platform.twin(TWIN_A)["properties"]["flow"] == SECRET_VALUE
    for key, who, send in allowed:
        method, template = key.split(" ", 1)
        response = client.request(method, _concrete(template), headers=_bearer(made[who]), **send)
        assert response.status_code not in (401, 403), f"{key} as {who}: {response.text[:200]}"
    assert len(allowed) >= 100


def test_expired_malformed_unknown_and_revoked_tokens_are_401(secured, clock):
    client, tokens = secured
    url = f"/api/twins/{TWIN_A}"
    short = tokens.create(name="short", scope="read", namespace="plant-a", expires="1h")
    assert client.get(url, headers=_bearer(short["token"])).status_code == 200
    clock.now += 2 * 3_600_000
    response = client.get(url, headers=_bearer(short["token"]))
    _assert_refused(response, 401, "expired")
    assert "expired" in response.json()["error"]["message"]
    assert response.headers["www-authenticate"].startswith("Bearer")

    good = tokens.create(name="good", scope="read", namespace="*")["token"]
    wrong_secret = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    unknown_id = "lt_000000000000_" + good.split("_", 2)[2]
    for header in (
        "Bearer garbage",
        "Bearer lt_123",
        f"Bearer {wrong_secret}",
        f"Bearer {unknown_id}",
        f"Bearer {good}x",
        "Bearer a.b.c",  # JWT-shaped, but this server accepts API tokens only
        "Basic dXNlcjpwdw==",
        "Bearer ",
    ):
        _assert_refused(client.get(url, headers={"authorization": header}), 401, header)
    tokens.revoke(good.split("_")[1])
    response = client.get(url, headers=_bearer(good))
    _assert_refused(response, 401, "revoked")
    assert "revoked" in response.json()["error"]["message"]


def test_scoped_tokens_reach_their_namespace_only(secured, platform):
    client, tokens = secured
    read_a = tokens.create(name="ra", scope="read", namespace="plant-a")["token"]
    write_a = tokens.create(name="wa", scope="write", namespace="plant-a")["token"]
    admin = tokens.create(name="root", scope="admin", namespace="*")["token"]
    got = client.get(f"/api/twins/{TWIN_A}", headers=_bearer(read_a))
    assert got.status_code == 200 and got.json()["properties"]["flow"] == SECRET_VALUE
    assert client.get(f"/api/twins/{TWIN_A}/history", headers=_bearer(read_a)).status_code == 200
    # another namespace's twins do not exist for this token (404, as for a missing twin)
    for other in (TWIN_B, "pump-9", "plant-b/nothing-here"):
        response = client.get(f"/api/twins/{other}", headers=_bearer(read_a))
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
        assert "flow" not in response.text
    # lists answer with the token's namespace only
    listed = client.get("/api/twins", headers=_bearer(read_a)).json()
    assert [t["id"] for t in listed["items"]] == [TWIN_A] and listed["total"] == 1
    assert client.get("/api/twins?namespace=plant-b", headers=_bearer(read_a)).status_code == 404
    # a token in the URL is refused (EventSource uses a stream ticket: tests/api/test_login_api.py)
    refused = client.get(f"/api/twins/{TWIN_A}?access_token={read_a}")
    assert refused.status_code == 400 and refused.json()["error"]["field"] == "access_token"
    # namespaced ingest: the body's twins (and parents) are checked
    mine = [obs(TWIN_A, T0 + 1000, flow=5.0), obs("plant-a/pump-2", T0, flow=6.0)]
    response = client.post("/api/ingest", json=mine, headers=_bearer(write_a))
    assert response.status_code == 200 and response.json()["accepted"] == 2
    mixed = [obs(TWIN_A, T0 + 2000, flow=7.0), obs(TWIN_B, T0 + 2000, flow=7.0)]
    response = client.post("/api/ingest", json=mixed, headers=_bearer(write_a))
    _assert_refused(response, 403, "ingest into plant-b")
    assert response.json()["error"]["field"] == "[1].twin"
    adopt = [{**obs("plant-a/pump-3", T0, flow=1.0), "parent": TWIN_B}]
    _assert_refused(client.post("/api/ingest", json=adopt, headers=_bearer(write_a)), 403, "parent")
    assert client.post("/api/ingest", json=mine, headers=_bearer(read_a)).status_code == 403
    assert platform.twin(TWIN_B)["properties"]["flow"] == 10.0
    # type definitions and token management need admin
    response = client.put(
        "/api/types/valve", json={"properties": {"x": {}}}, headers=_bearer(write_a)
    )
    _assert_refused(response, 403, "define a type with write")
    admin_a = tokens.create(name="aa", scope="admin", namespace="plant-a")["token"]
    response = client.put(
        "/api/types/valve-a", json={"properties": {"x": {}}}, headers=_bearer(admin_a)
    )
    assert response.status_code == 200
    assert platform.get_type("valve-a")["spec"]["namespace"] == "plant-a"
    response = client.put("/api/types/pump", json=PUMP, headers=_bearer(admin_a))
    assert response.status_code == 409 and response.json()["error"]["field"] == "name"
    mine = client.get("/api/types", headers=_bearer(read_a)).json()
    assert [t["name"] for t in mine] == ["valve-a"]
    assert client.get("/api/types/pump", headers=_bearer(read_a)).status_code == 404
    response = client.put(
        "/api/types/valve", json={"properties": {"x": {}}}, headers=_bearer(admin)
    )
    assert response.status_code == 200
    created = client.post(
        "/api/tokens", json={"name": "new", "scope": "read"}, headers=_bearer(admin)
    )
    assert created.status_code == 201 and created.json()["token"].startswith("lt_")
    listed = client.get("/api/tokens", headers=_bearer(admin)).json()
    assert {t["name"] for t in listed} >= {"ra", "wa", "root", "new"}
    assert all("token" not in t for t in listed)
    # health stays public for load balancers
    assert client.get("/api/health").status_code == 200
    # the UI's static files are public; /metrics needs read on '*'
    assert client.get("/metrics", headers=_bearer(read_a)).status_code == 403


def test_tokens_are_stored_hashed_and_shown_once(tmp_path):
    with TokenStore.in_directory(tmp_path) as store:
        created = store.create(name="ci", scope="write", namespace="plant-a")
        secret = created["token"].split("_", 2)[2]
        assert store.get(created["id"]).get("token") is None
        principal = store.authenticate(created["token"])
    assert principal.grants == (Grant("write", "plant-a"),)
    raw = (tmp_path / "auth.db").read_bytes() + b"".join(
        p.read_bytes() for p in tmp_path.glob("auth.db-*")
    )
    assert secret.encode() not in raw
    assert hashlib.sha256(secret.encode()).digest() in raw


def test_bad_token_requests_name_the_field(tmp_path):
    from livetwin.errors import InvalidInput

    with TokenStore.in_directory(tmp_path) as store:
        for kwargs, field in (
            ({"name": "x", "scope": "root", "namespace": "*"}, "scope"),
            ({"name": "x", "scope": "read", "namespace": "a/b"}, "namespace"),
            ({"name": "", "scope": "read", "namespace": "*"}, "name"),
            ({"name": "x", "scope": "read", "namespace": "*", "expires": "soon"}, "expires"),
        ):
            with pytest.raises(InvalidInput) as caught:
                store.create(**kwargs)
            assert caught.value.field == field
        with pytest.raises(Unauthorized):
            store.authenticate("lt_" + "0" * 12 + "_" + "A" * 43)


def test_the_rule():
    assert namespace_of("plant-a/pump-1") == "plant-a"
    assert namespace_of("b1/f1/r2") == "b1"
    assert namespace_of("pump-1") == "default" and namespace_of("/x") == "default"
    assert requirement("GET", "/api/twins/a/b", "a/b").scope == "read"
    assert requirement("POST", "/api/twins/a/b/calibrate", "a/b").scope == "write"
    assert requirement("PUT", "/api/types/pump", None).scope == "admin"
    assert requirement("POST", "/api/types/pump/calibrate", None).scope == "write"
    assert requirement("GET", "/api/tokens", None).scope == "admin"
    assert requirement("DELETE", "/api/alarms/1", None).scope == "write"
    p = Principal("t", (Grant("write", "plant-a"),))
    assert p.allows("read", "plant-a") and not p.allows("admin", "plant-a")
    assert not p.allows("read", "plant-b") and not p.allows("read", ALL)
    assert grants_from_claims({"permissions": ["read:plant-a", "write:*", "bogus", "x:y"]}) == (
        Grant("read", "plant-a"),
        Grant("write", "*"),
    )
    assert grants_from_claims({"scope": "openid admin:plant-b"}) == (Grant("admin", "plant-b"),)


def test_open_mode_warns_loudly_and_checks_nothing(platform, caplog):
    app = create_app(platform)
    with caplog.at_level(logging.WARNING):
        assert install_auth(app, platform, mode="open", host="127.0.0.1") is None
    assert "AUTHENTICATION IS OFF" in caplog.text
    with TestClient(app) as client:
        assert client.get("/api/twins").status_code == 200


def test_cli_token_create_list_revoke(tmp_path):
    runner = CliRunner()
    data = str(tmp_path / "d")
    made = runner.invoke(
        token_app,
        [
            "create",
            "--scope",
            "write",
            "--namespace",
            "plant-a",
            "--name",
            "ci",
            "--data",
            data,
        ],  # fmt: skip
    )
    assert made.exit_code == 0, made.output
    token = made.output.strip().splitlines()[-1]
    assert token.startswith("lt_")
    listed = runner.invoke(token_app, ["list", "--json", "--data", data])
    rows = json.loads(listed.output)
    assert [(r["name"], r["scope"], r["namespace"]) for r in rows] == [("ci", "write", "plant-a")]
    assert token not in listed.output
    revoked = runner.invoke(token_app, ["revoke", rows[0]["id"], "--data", data])
    assert revoked.exit_code == 0, revoked.output
    with TokenStore.in_directory(tmp_path / "d") as store, pytest.raises(Unauthorized):
        store.authenticate(token)
    bad = runner.invoke(token_app, ["create", "--scope", "root", "--name", "x", "--data", data])
    assert bad.exit_code == 2 and "fix:" in bad.output
    missing = runner.invoke(token_app, ["revoke", "nope", "--data", data])
    assert missing.exit_code == 2 and "no token" in missing.output


# ---- OIDC / JWT ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def jwks():
    """An RSA key and a real JWKS endpoint on loopback serving its public half."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    document = json.dumps({"keys": [{**public, "kid": "k1", "use": "sig", "alg": "RS256"}]})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = document.encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield key, f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
    server.shutdown()
    thread.join(5)


def _jwt(key, permissions, *, exp_in=300, kid="k1", aud="livetwin", iss="https://idp.test/"):
    now = int(time.time())
    claims = {"sub": "alice", "permissions": permissions, "iat": now, "exp": now + exp_in}
    claims |= {"aud": aud, "iss": iss}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


def test_oidc_bearer_jwts_with_permission_claims(platform, jwks):
    key, url = jwks
    platform.put_type("pump", PUMP)
    platform.ingest([obs(TWIN_A, T0, flow=SECRET_VALUE), obs(TWIN_B, T0, flow=1.0)])
    platform.outbound = OutboundPolicy(LOOPBACK)  # the identity provider here is on loopback
    app = create_app(platform)
    tokens = install_auth(
        app, platform, mode="oidc", jwks_url=url, audience="livetwin", issuer="https://idp.test/"
    )
    with TestClient(app) as client:
        reader = _jwt(key, ["read:plant-a"])
        assert client.get(f"/api/twins/{TWIN_A}", headers=_bearer(reader)).status_code == 200
        _assert_refused(client.get(f"/api/twins/{TWIN_B}", headers=_bearer(reader)), 404, "b")
        _assert_refused(client.get("/metrics", headers=_bearer(reader)), 403, "fleet")
        listed = client.get("/api/twins", headers=_bearer(reader)).json()["items"]
        assert [t["id"] for t in listed] == [TWIN_A]
        everything = _jwt(key, ["write:*"])
        assert client.get("/api/twins", headers=_bearer(everything)).status_code == 200
        other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        for bad, why in (
            (_jwt(key, ["read:*"], exp_in=-120), "expired"),
            (_jwt(other_key, ["read:*"]), "signature"),
            (_jwt(key, ["read:*"], kid="unknown"), "kid"),
            (_jwt(key, ["read:*"], aud="someone-else"), "audience"),
            (_jwt(key, ["read:*"], iss="https://evil.test/"), "issuer"),
            (reader[:-6] + "AAAAAA", "tampered"),
        ):
            response = client.get(f"/api/twins/{TWIN_A}", headers=_bearer(bad))
            _assert_refused(response, 401, why)
        # API tokens keep working next to JWTs
        api_token = tokens.create(name="gw", scope="read", namespace="plant-a")["token"]
        assert client.get(f"/api/twins/{TWIN_A}", headers=_bearer(api_token)).status_code == 200


def test_oidc_needs_a_jwks_url_and_modes_are_checked(platform):
    from livetwin.errors import InvalidInput

    with pytest.raises(InvalidInput) as caught:
        install_auth(create_app(platform), platform, mode="oidc")
    assert caught.value.field == "jwks_url"
    with pytest.raises(InvalidInput) as caught:
        install_auth(create_app(platform), platform, mode="password")
    assert caught.value.field == "auth"


def test_oidc_keys_are_fetched_only_from_allowed_destinations(platform, jwks):
    from livetwin.auth.oidc import JwtVerifier
    from livetwin.errors import InvalidInput

    key, url = jwks
    with pytest.raises(InvalidInput) as caught:  # the default policy: loopback is refused
        install_auth(create_app(platform), platform, mode="oidc", jwks_url=url)
    assert caught.value.field == "jwks_url" and "LIVETWIN_OUTBOUND_ALLOW" in caught.value.fix
    verifier = JwtVerifier(url, outbound=OutboundPolicy(LOOPBACK))
    assert verifier.authenticate(_jwt(key, ["read:*"], aud=None)).subject == "jwt:alice"


@pytest.mark.services
def test_tokens_live_in_postgresql_when_it_is_configured(tmp_path, monkeypatch):
    """With LIVETWIN_DATABASE_URL set, the CLI and a server share tokens in PostgreSQL (schema
    `<schema>_auth`, table `tokens`); no auth.db file is written."""
    import psycopg
    from postgres_support import PG_URL, fresh_schema

    with fresh_schema() as url:
        schema = url.rsplit("%3D", 1)[1]
        monkeypatch.setenv("LIVETWIN_DATABASE_URL", url)
        runner = CliRunner()
        data = str(tmp_path / "d")
        made = runner.invoke(token_app, ["create", "--name", "ci", "--data", data])
        assert made.exit_code == 0, made.output
        token = made.output.strip().splitlines()[-1]
        with TokenStore.in_directory(tmp_path / "elsewhere", database_url=url) as store:
            assert store.authenticate(token).grants == (Grant("read", ALL),)
            assert [t["name"] for t in store.list()] == ["ci"]
        with psycopg.connect(PG_URL) as conn:
            (count,) = conn.execute(f'SELECT count(*) FROM "{schema}_auth".tokens').fetchone()
        assert count == 1
        assert not (tmp_path / "d" / "auth.db").exists()


def test_token_namespaces_follow_the_one_namespace_rule(tmp_path):
    """Grants use `livetwin.namespaces` (plus '*'); a namespace holds no '/' because it is the
    head of twin ids. Scopes with such namespaces still parse, others are ignored."""
    from livetwin.auth import check_namespace, parse_grant
    from livetwin.errors import InvalidInput

    for name in ("*", "plant-a", "plant.a_1", "site:7", "a" * 64):
        assert check_namespace(name) == name
    for name in ("", "-a", "a b", "a/b", "a" * 65, None, 7):
        with pytest.raises(InvalidInput) as caught:
            check_namespace(name)
        assert caught.value.field == "namespace"
    assert parse_grant("write:site:7") == Grant("write", "site:7")
    assert parse_grant("read:pump-1/*") is None and parse_grant("read:") is None
    with TokenStore.in_directory(tmp_path) as store:
        created = store.create(name="x", scope="read", namespace="site:7")
        principal = store.authenticate(created["token"])
    assert principal.allows("read", namespace_of("site:7/pump-1"))


def test_two_tenants_sending_the_same_key_both_store_their_observation(secured, platform):
    client, tokens = secured
    write_a = tokens.create(name="wa", scope="write", namespace="plant-a")["token"]
    write_b = tokens.create(name="wb", scope="write", namespace="plant-b")["token"]
    before = platform.stats()["journal_observations"]
    for twin, token, flow in ((TWIN_A, write_a, 21.0), (TWIN_B, write_b, 22.0)):
        body = [{**obs(twin, T0 + 1000, flow=flow), "key": "reading-1"}]
        response = client.post("/api/ingest", json=body, headers=_bearer(token))
        assert response.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    assert platform.twin(TWIN_A)["properties"]["flow"] == 21.0
    assert platform.twin(TWIN_B)["properties"]["flow"] == 22.0
    retry = [{**obs(TWIN_B, T0 + 2000, flow=23.0), "key": "reading-1"}]  # a retry of plant-b's
    response = client.post("/api/ingest", json=retry, headers=_bearer(write_b))
    assert response.json() == {"accepted": 0, "duplicates": 1, "rejected": []}
    assert platform.stats()["journal_observations"] == before + 2


@pytest.mark.platform_services("webhooks")
def test_only_admin_may_create_webhooks_and_declare_functions(secured):
    client, tokens = secured
    hook = {"url": "http://10.0.0.7/hook", "secret": "s3cret-s3cret-s3cret"}
    function = {"kind": "http", "url": "http://127.0.0.1:8080/admin/secret"}
    for scope in ("read", "write"):
        token = tokens.create(name=scope, scope=scope, namespace="*")["token"]
        response = client.post("/api/webhooks", json=hook, headers=_bearer(token))
        _assert_refused(response, 403, f"POST /api/webhooks with {scope}")
        response = client.put("/api/functions/f", json=function, headers=_bearer(token))
        _assert_refused(response, 403, f"PUT /api/functions/f with {scope}")
    admin = _bearer(tokens.create(name="admin", scope="admin", namespace="*")["token"])
    # admin passes the access rule; the outbound policy then refuses these inside destinations
    assert client.post("/api/webhooks", json=hook, headers=admin).status_code == 422
    assert client.put("/api/functions/f", json=function, headers=admin).status_code == 422
    assert requirement("POST", "/api/functions/f/run", None).scope == "write"  # running: write
