"""The dashboard's sign-in routes: /api/auth/config (public), /api/auth/me, and stream tickets
(single use, 60 s, read only, the live stream only); credentials in URLs are refused."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from conftest import PUMP, T0, obs, served
from fastapi.testclient import TestClient
from test_stream import stream_in_background

from livetwin.api.app import create_app
from livetwin.api.auth import install_auth
from livetwin.auth import Grant, Principal, TicketStore, Unauthorized

TWIN_A, TWIN_B = "plant-a/pump-1", "plant-b/pump-1"


def _bearer(token: str) -> dict:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture
def secured(platform):
    """A token-protected app; the token store."""
    platform.put_type("pump", PUMP)
    app = create_app(platform)
    tokens = install_auth(app, platform, mode="tokens")
    with TestClient(app) as client:
        yield client, tokens


def test_config_is_public_and_names_how_to_sign_in(platform, secured):
    client, _ = secured
    config = client.get("/api/auth/config")
    assert config.status_code == 200
    assert config.json() == {
        "mode": "tokens",
        "login": True,
        "tokens": True,
        "oidc": {
            "enabled": False,
            "issuer": None,
            "client_id": None,
            "scopes": "openid",
            "audience": None,
            "why_not": None,
        },
    }
    with TestClient(create_app(platform)) as open_client:  # auth off: no login
        config = open_client.get("/api/auth/config").json()
        assert (config["mode"], config["login"]) == ("open", False)
        assert not config["oidc"]["enabled"]
        me = open_client.get("/api/auth/me").json()
        assert me["subject"] is None and me["fleet"] and me["namespaces"] == ["*"]
        refused = open_client.post("/api/auth/ticket")
        assert refused.status_code == 409 and "without a ticket" in refused.json()["error"]["fix"]


def test_oidc_config_names_issuer_client_and_scopes_or_the_missing_setting(platform):
    from livetwin.outbound import OutboundPolicy

    platform.outbound = OutboundPolicy(("127.0.0.0/8",))
    jwks = "http://127.0.0.1:9/jwks.json"  # never fetched here
    app = create_app(platform)
    install_auth(app, platform, mode="oidc", jwks_url=jwks, issuer="https://idp.test/")
    with TestClient(app) as client:
        oidc = client.get("/api/auth/config").json()["oidc"]
        assert not oidc["enabled"] and "LIVETWIN_OIDC_CLIENT_ID" in oidc["why_not"]
    app = create_app(platform)
    install_auth(
        app,
        platform,
        mode="oidc",
        jwks_url=jwks,
        issuer="https://idp.test/",
        audience="livetwin",
        oidc_client_id="dashboard",
        oidc_scopes="openid read:plant-a",
    )
    with TestClient(app) as client:
        response = client.get("/api/auth/config")
        assert response.json()["oidc"] == {
            "enabled": True,
            "issuer": "https://idp.test/",
            "client_id": "dashboard",
            "scopes": "openid read:plant-a",
            "audience": "livetwin",
            "why_not": None,
        }
        assert "jwks" not in response.text


def test_me_says_who_the_credentials_are(secured):
    client, tokens = secured
    reader = tokens.create(name="ra", scope="read", namespace="plant-a")
    me = client.get("/api/auth/me", headers=_bearer(reader["token"]))
    assert me.status_code == 200
    assert me.json() == {
        "subject": f"token:{reader['id']}",
        "mode": "tokens",
        "grants": ["read:plant-a"],
        "scopes": ["read"],
        "namespaces": ["plant-a"],
        "fleet": False,
    }
    admin = tokens.create(name="root", scope="admin", namespace="*")["token"]
    assert client.get("/api/auth/me", headers=_bearer(admin)).json()["fleet"] is True
    missing = client.get("/api/auth/me")
    assert missing.status_code == 401 and missing.json()["error"]["field"] == "authorization"


def test_a_stream_ticket_opens_one_stream_with_the_callers_namespaces(platform, clock):
    platform.put_type("pump", PUMP)
    app = create_app(platform)
    tokens = install_auth(app, platform, mode="tokens")
    reader = tokens.create(name="ra", scope="read", namespace="plant-a")["token"]
    with served(platform, app) as url:
        made = httpx.post(f"{url}/api/auth/ticket", headers=_bearer(reader))
        assert made.status_code == 201, made.text
        ticket = made.json()
        assert ticket["ticket"].startswith("ltt_") and ticket["expires_in"] == 60
        assert ticket["stream"] == "/api/stream"
        stream = f"{url}/api/stream?ticket={ticket['ticket']}"
        thread, got = stream_in_background(stream, 1)
        platform.ingest([obs(TWIN_B, T0, flow=9.0), obs(TWIN_A, T0, flow=1.0)])
        thread.join(10)
        assert [e["data"]["twin"] for e in got] == [TWIN_A]  # plant-b's event is not sent

        again = httpx.get(stream)  # single use
        assert again.status_code == 401, again.text
        assert "already used" in again.json()["error"]["message"]
        assert "/api/auth/ticket" in again.json()["error"]["fix"]

        late = httpx.post(f"{url}/api/auth/ticket", headers=_bearer(reader)).json()["ticket"]
        clock.now += 61_000
        expired = httpx.get(f"{url}/api/stream?ticket={late}")
        assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]

        other = httpx.post(f"{url}/api/auth/ticket", headers=_bearer(reader)).json()["ticket"]
        elsewhere = httpx.get(f"{url}/api/twins/{TWIN_A}?ticket={other}")
        assert elsewhere.status_code == 401
        assert elsewhere.json()["error"]["field"] == "ticket"
        as_header = httpx.get(f"{url}/api/twins/{TWIN_A}", headers=_bearer(other))
        assert as_header.status_code == 401
        bad = httpx.get(f"{url}/api/stream?ticket=ltt_nope")
        assert bad.status_code == 401 and bad.json()["error"]["field"] == "ticket"


def test_credentials_in_urls_are_refused_with_the_fix(secured):
    client, tokens = secured
    reader = tokens.create(name="ra", scope="read", namespace="*")["token"]
    for path in ("/api/stream", f"/api/twins/{TWIN_A}", "/api/twins"):
        response = client.get(f"{path}?access_token={reader}")
        assert response.status_code == 400, (path, response.text)
        error = response.json()["error"]
        assert error["field"] == "access_token"
        assert "Authorization: Bearer" in error["fix"] and "/api/auth/ticket" in error["fix"]
        assert reader not in response.text
    # even with a good header: the token in the URL already leaked into logs
    response = client.get(f"/api/twins?access_token={reader}", headers=_bearer(reader))
    assert response.status_code == 400


def test_a_reader_may_get_a_ticket(secured):
    client, tokens = secured
    reader = tokens.create(name="ra", scope="read", namespace="plant-a")["token"]
    assert client.post("/api/auth/ticket", headers=_bearer(reader)).status_code == 201
    nothing = client.post("/api/auth/ticket")
    assert nothing.status_code == 401


def test_ticket_store_keeps_hashes_narrows_to_read_and_sweeps(tmp_path, clock):
    from livetwin.store.servicedb import service_db_opener

    store = TicketStore(service_db_opener(tmp_path, database_url=""), clock=clock).start()
    try:
        writer = Principal("token:abc", (Grant("write", "plant-a"), Grant("admin", "plant-b")))
        made = store.issue(writer)
        secret = made["ticket"].split("_", 2)[2]
        raw = b"".join(p.read_bytes() for p in tmp_path.glob("auth.db*"))
        assert secret.encode() not in raw and hashlib.sha256(secret.encode()).digest() in raw
        redeemed = store.redeem(made["ticket"])
        assert redeemed.subject == "token:abc"
        assert set(redeemed.grants) == {Grant("read", "plant-a"), Grant("read", "plant-b")}
        with pytest.raises(Unauthorized):
            store.redeem(made["ticket"])
        stale = store.issue(writer)["ticket"]
        clock.now += 61_000
        store.issue(writer)  # sweeps the expired one
        with pytest.raises(Unauthorized) as caught:
            store.redeem(stale)
        assert "already used" in caught.value.message  # swept: gone like a used one
        (count,) = store._opened().read().execute("SELECT count(*) FROM tickets").fetchone()
        assert count == 1
    finally:
        store.stop()


def test_the_oidc_client_settings_come_from_the_environment():
    from livetwin.settings import Settings

    env = {"LIVETWIN_OIDC_CLIENT_ID": "dashboard", "LIVETWIN_OIDC_SCOPES": "openid read:a"}
    settings = Settings.from_env(environ=env)
    assert (settings.oidc_client_id, settings.oidc_scopes) == ("dashboard", "openid read:a")
    assert Settings.from_env(Settings(oidc_client_id="cli"), env).oidc_client_id == "cli"


@pytest.mark.services
def test_tickets_live_in_postgresql_next_to_the_tokens(tmp_path, clock):
    """With PostgreSQL configured, a ticket issued by one front end is redeemed by another
    (schema `<schema>_auth`, table `tickets`), once."""
    from postgres_support import fresh_schema

    from livetwin.store.servicedb import service_db_opener

    with fresh_schema() as url:
        issuer = TicketStore(service_db_opener(tmp_path / "a", database_url=url), clock=clock)
        other = TicketStore(service_db_opener(tmp_path / "b", database_url=url), clock=clock)
        try:
            ticket = issuer.start().issue(Principal("jwt:ana", (Grant("read", "plant-a"),)))
            assert other.start().redeem(ticket["ticket"]).subject == "jwt:ana"
            with pytest.raises(Unauthorized):
                issuer.redeem(ticket["ticket"])
        finally:
            issuer.stop()
            other.stop()
        assert not (tmp_path / "a" / "auth.db").exists()


def test_serve_hands_the_oidc_client_settings_to_the_dashboard(tmp_path, monkeypatch):
    import gc
    import socket
    import sys

    from typer.testing import CliRunner

    from livetwin.cli import app as cli

    seen: dict = {}

    def run(api, **kwargs):  # instead of uvicorn: ask the app that would be served
        with TestClient(api) as client:
            seen["config"] = client.get("/api/auth/config").json()

    monkeypatch.setattr("uvicorn.run", run)
    monkeypatch.setenv("LIVETWIN_OUTBOUND_ALLOW", "127.0.0.0/8")  # the JWKS URL below
    monkeypatch.setenv("LIVETWIN_OIDC_SCOPES", "openid read:plant-a")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["serve", "--data", str(tmp_path / "d"), "--port", str(port), "--auth", "oidc"]
    args += ["--jwks-url", "http://127.0.0.1:9/jwks.json", "--issuer", "https://idp.test/"]
    args += ["--audience", "livetwin", "--oidc-client-id", "dashboard"]
    interval, threshold = sys.getswitchinterval(), gc.get_threshold()
    try:
        result = CliRunner().invoke(cli, args)
    finally:  # serve tunes the interpreter for a server process: undo it for the other tests
        sys.setswitchinterval(interval)
        gc.set_threshold(*threshold)
        gc.unfreeze()
    assert result.exit_code == 0, result.output
    assert seen["config"]["oidc"] == {
        "enabled": True,
        "issuer": "https://idp.test/",
        "client_id": "dashboard",
        "scopes": "openid read:plant-a",
        "audience": "livetwin",
        "why_not": None,
    }
