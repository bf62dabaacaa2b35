"""OPC UA connectors against a real asyncua server started by the test on a free port."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import PUMP
from fastapi.testclient import TestClient
from opcua_support import OpcServer, client_certificate, free_port
from webhook_support import wait_for

from livetwin.api.app import create_app
from livetwin.auth.rules import requirement
from livetwin.errors import InvalidInput, NotFound
from livetwin.ingest.opcua_spec import parse_connector
from livetwin.platform import Platform
from livetwin.settings import Settings

LOOPBACK = Settings(webhooks=False, run_schedules=False, outbound_allow=("127.0.0.0/8",))


@pytest.fixture
def server():
    opc = OpcServer().start()
    yield opc
    opc.close()


def open_platform(path: Path, settings: Settings = LOOPBACK) -> Platform:
    platform = Platform(path, settings=settings)  # the wall clock: OPC UA stamps real times
    platform.put_type("pump", PUMP)
    return platform


@pytest.fixture
def platform(tmp_path, server):  # after the server: stopped before it
    with open_platform(tmp_path / "data") as p:
        yield p


@pytest.fixture
def api(platform):
    with TestClient(create_app(platform)) as c:
        yield c


def nodes_spec(server: OpcServer, **extra) -> dict:
    return {
        "endpoint": server.endpoint,
        "type": "pump",
        "nodes": [
            {"node": f"ns={server.ns};s=pump-1.flow", "twin": "pump-1", "property": "flow"},
            {"node": f"ns={server.ns};s=pump-1.pressure", "twin": "pump-1", "property": "pressure"},
        ],
        "sampling_ms": 20,
        "publishing_ms": 50,
        **extra,
    }


def value(platform: Platform, twin: str, name: str):
    """A twin's current value (None before the twin or the value exists)."""
    try:
        return platform.twin(twin)["properties"].get(name)
    except NotFound:
        return None


def flows(platform: Platform, twin: str) -> list:
    platform.snapshot()  # flush history
    series = platform.history(twin, ["flow"])["series"]["flow"]
    return [v for v in series if v is not None]  # rows of other properties have no flow


def test_data_changes_arrive_as_observations(platform, server):
    view = platform.opcua.put_connector("line-1", nodes_spec(server))
    assert view["status"]["connected"] is True and view["status"]["nodes"] == 2
    wait_for(lambda: value(platform, "pump-1", "pressure") == 2.0)  # initial values
    for flow in (3.5, 4.5, 5.5):
        server.write("pump-1.flow", flow)
        wait_for(lambda v=flow: value(platform, "pump-1", "flow") == v)
    assert flows(platform, "pump-1") == [1.0, 3.5, 4.5, 5.5]  # each change once, in order
    status = platform.opcua.connector("line-1")["status"]
    assert status["values_received"] >= 5 and status["values_rejected"] == 0
    assert status["last_value_at"] is not None and status["last_error"] is None


def test_browse_pattern_makes_wildcard_names_twin_ids(platform, server):
    path = f"{server.ns}:Plant/pump-*/{server.ns}:*"
    spec = {
        "endpoint": server.endpoint,
        "type": "pump",
        "browse": [{"path": path, "twin": "{1}", "property": "{2}"}],
        "publishing_ms": 50,
    }
    view = platform.opcua.put_connector("plant", spec)
    assert view["status"]["nodes"] == 6  # flow, pressure and serial of pump-1 and pump-2
    server.write("pump-2.flow", 7.25)
    wait_for(lambda: value(platform, "pump-2", "flow") == 7.25)
    wait_for(lambda: value(platform, "pump-1", "pressure") == 2.0)
    status = platform.opcua.connector("plant")["status"]
    assert status["values_rejected"] == 2  # the serials: strings, refused with the reason
    assert status["last_rejected"]["node"].endswith(".serial")
    assert "properties take numbers" in status["last_rejected"]["reason"]


def test_values_ingest_refuses_are_counted_with_the_reason(platform, server):
    spec = nodes_spec(server)
    spec["nodes"][1]["property"] = "presure"  # not a property of pump
    platform.opcua.put_connector("line-1", spec)
    server.write("pump-1.flow", 6.5)
    wait_for(lambda: value(platform, "pump-1", "flow") == 6.5)  # the good values go in
    wait_for(lambda: platform.opcua.connector("line-1")["status"]["values_rejected"] >= 1)
    rejected = platform.opcua.connector("line-1")["status"]["last_rejected"]
    assert rejected["node"] == f"ns={server.ns};s=pump-1.pressure"
    assert "presure" in rejected["reason"]


def test_reconnects_after_the_server_restarts(platform, server, api):
    platform.opcua.put_connector("line-1", nodes_spec(server))
    assert api.get("/api/health").json()["checks"]["opcua"] == {"status": "ok", "connectors": 1}
    server.stop()
    wait_for(lambda: not platform.opcua.connector("line-1")["status"]["connected"])
    down = api.get("/api/health")
    assert down.status_code == 503
    assert "line-1" in down.json()["checks"]["opcua"]["error"]
    status = platform.opcua.connector("line-1")["status"]
    assert status["last_error"] and status["fix"]
    server.start()  # the same port
    assert platform.opcua.wait_connected("line-1", timeout=30)
    server.write("pump-1.flow", 42.0)
    wait_for(lambda: value(platform, "pump-1", "flow") == 42.0)
    assert platform.opcua.connector("line-1")["status"]["connects"] == 2


def test_unreachable_server_is_stored_and_connected_once_it_runs(platform):
    server = OpcServer(free_port())  # not started yet
    try:
        view = platform.opcua.put_connector("late", nodes_spec(server))
        assert view["status"]["connected"] is False
        assert "cannot reach" in view["status"]["last_error"]
        server.start()
        assert platform.opcua.wait_connected("late", timeout=30)
    finally:
        server.close()


def test_wrong_security_policy_is_refused_with_the_fix(platform, server, api):
    pki = platform.path / "opcua"
    pki.mkdir()
    (pki / "client.der").write_bytes(b"not checked before the policy")
    (pki / "client.pem").write_bytes(b"-")
    security = {
        "policy": "Basic256Sha256",
        "mode": "SignAndEncrypt",
        "certificate": "client.der",
        "private_key": "client.pem",
    }
    answer = api.put("/api/opcua/connectors/secure", json=nodes_spec(server, security=security))
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error["field"] == "security.policy"
    assert "refuses security policy Basic256Sha256" in error["message"]
    assert "None/None" in error["message"]  # what it offers
    assert "security.policy" in error["fix"]
    assert api.get("/api/opcua/connectors/secure").status_code == 404  # nothing stored


def test_signed_and_encrypted_session_with_a_client_certificate(platform, tmp_path):
    server = OpcServer(pki=tmp_path).start()
    try:
        with pytest.raises(InvalidInput) as plain:  # the server offers no unsecured endpoint
            platform.opcua.put_connector("secure", nodes_spec(server))
        assert plain.value.field == "security.policy"
        assert "offers: Basic256Sha256/SignAndEncrypt" in plain.value.message
        client_certificate(platform.path / "opcua")
        security = {
            "policy": "Basic256Sha256",
            "mode": "SignAndEncrypt",
            "certificate": "livetwin-cert.der",
            "private_key": "livetwin-key.pem",
        }
        view = platform.opcua.put_connector("secure", nodes_spec(server, security=security))
        assert view["status"]["connected"], view["status"]
        server.write("pump-1.flow", 11.0)
        wait_for(lambda: value(platform, "pump-1", "flow") == 11.0)
    finally:
        server.close()


def test_credentials_are_checked(platform):
    server = OpcServer(users=True).start()
    try:
        with pytest.raises(InvalidInput) as anonymous:
            platform.opcua.put_connector("c", nodes_spec(server))
        assert anonymous.value.field == "username"
        assert "anonymous" in anonymous.value.message
        with pytest.raises(InvalidInput) as wrong:
            platform.opcua.put_connector(
                "c", nodes_spec(server, username="operator", password="wrong")
            )
        assert wrong.value.field == "password"
        assert "refused the credentials" in wrong.value.message
        view = platform.opcua.put_connector(
            "c", nodes_spec(server, username="operator", password="secret")
        )
        assert view["status"]["connected"] and "password" not in view
        assert view["password_set"] is True
    finally:
        server.close()


def test_unknown_node_id_is_a_clear_error(platform, server):
    spec = nodes_spec(server)
    spec["nodes"][1]["node"] = f"ns={server.ns};s=pump-9.flow"
    with pytest.raises(InvalidInput) as unknown:
        platform.opcua.put_connector("line-1", spec)
    assert unknown.value.field == "nodes[1].node"
    assert "has no node ns=2;s=pump-9.flow (BadNodeIdUnknown)" in unknown.value.message
    assert platform.opcua.connectors() == []


def test_api_round_trip_survives_a_restart(tmp_path, server):
    data = tmp_path / "data"
    with open_platform(data) as platform, TestClient(create_app(platform)) as api:
        body = nodes_spec(server, username="operator", password="pw")
        put = api.put("/api/opcua/connectors/line-1", json=body)
        assert put.status_code == 200, put.text
        assert put.json()["password_set"] is True and "password" not in put.json()
        listed = api.get("/api/opcua").json()
        assert listed["available"] is True
        assert [c["name"] for c in listed["connectors"]] == ["line-1"]
        assert api.get("/api/opcua/connectors/line-1").json()["endpoint"] == server.endpoint
        metrics = api.get("/metrics").text
        assert 'livetwin_opcua_connected{name="line-1"} 1.0' in metrics
        assert 'livetwin_opcua_values_received_total{name="line-1"}' in metrics
    with open_platform(data) as platform, TestClient(create_app(platform)) as api:
        assert platform.opcua.wait_connected("line-1", timeout=30)
        server.write("pump-1.flow", 9.0)
        wait_for(lambda: value(platform, "pump-1", "flow") == 9.0)
        assert api.get("/api/health").json()["checks"]["opcua"]["status"] == "ok"
        assert api.delete("/api/opcua/connectors/line-1").status_code == 204
        assert api.get("/api/opcua/connectors/line-1").status_code == 404
        assert api.delete("/api/opcua/connectors/line-1").status_code == 404
    with open_platform(data) as platform:
        assert platform.opcua.connectors() == []


def test_a_stored_connector_that_cannot_run_says_why(tmp_path, server):
    data = tmp_path / "data"
    with open_platform(data) as platform:
        platform.core.store.put_config("opcua", "old", '{"endpoint": "opc.tcp://plc:4840"}', 0)
    with open_platform(data) as platform, TestClient(create_app(platform)) as api:
        listed = api.get("/api/opcua")
        assert listed.status_code == 200
        (old,) = listed.json()["connectors"]
        assert old["name"] == "old" and old["endpoint"] == "opc.tcp://plc:4840"
        assert "maps no nodes" in old["status"]["last_error"] and old["status"]["fix"]
        health = api.get("/api/health")
        assert health.status_code == 503 and "maps no nodes" in health.text
        put = api.put("/api/opcua/connectors/old", json=nodes_spec(server))
        assert put.status_code == 200 and put.json()["status"]["connected"]
        assert api.get("/api/health").status_code == 200


def test_loopback_endpoint_needs_the_outbound_allow_list(tmp_path, server):
    with open_platform(tmp_path / "data", Settings(webhooks=False, run_schedules=False)) as p:
        with pytest.raises(InvalidInput) as denied:
            p.opcua.put_connector("line-1", nodes_spec(server))
    assert denied.value.field == "endpoint"
    assert "loopback" in denied.value.message and "LIVETWIN_OUTBOUND_ALLOW" in denied.value.fix


def test_connector_routes_need_admin_to_change():
    path = "/api/opcua/connectors/line-1"
    assert requirement("PUT", path, None).scope == "admin"
    assert requirement("DELETE", path, None).scope == "admin"
    assert requirement("GET", path, None).scope == "read"
    assert requirement("GET", "/api/opcua", None).scope == "read"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"endpoint": "http://plc:4840"}, "endpoint"),
        ({"endpoint": "opc.tcp://user:pw@plc:4840"}, "endpoint"),
        ({"type": None}, "nodes[0].type"),
        ({"nodes": []}, "nodes"),
        ({"nodes": [{"node": "Pump1.Flow", "twin": "p", "property": "flow"}]}, "nodes[0].node"),
        ({"browse": [{"path": "2:Plant/*", "twin": "{2}", "property": "flow"}]}, "browse[0].twin"),
        ({"browse": [{"path": "2:Plant//x", "twin": "a", "property": "flow"}]}, "browse[0].path"),
        ({"password": "pw"}, "username"),
        ({"security": {"policy": "Basic999"}}, "security.policy"),
        ({"security": {"policy": "Basic256Sha256", "mode": "None"}}, "security.mode"),
        (
            {"security": {"policy": "Basic256Sha256", "mode": "Sign", "certificate": "c.der"}},
            "security.certificate",
        ),
        ({"sampling_ms": -1}, "sampling_ms"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_specs_name_the_field(tmp_path, change, field):
    body = {
        "endpoint": "opc.tcp://plc-7.example:4840",
        "type": "pump",
        "nodes": [{"node": "ns=2;s=Pump1.Flow", "twin": "pump-1", "property": "flow"}],
        **change,
    }
    with pytest.raises(InvalidInput) as bad:
        parse_connector("line-1", body, pki_dir=tmp_path)
    assert bad.value.field == field
    assert bad.value.fix
