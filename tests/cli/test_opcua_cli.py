"""OPC UA from the command line: `opcua:` connectors in the `serve --config` file, and
`livetwin opcua list|put|delete` on a data directory and against a running server, with a real
asyncua server started by the test."""

from __future__ import annotations

import json

import httpx
import pytest
from cli_support import refused, run, serving
from conftest import PUMP
from opcua_support import OpcServer
from webhook_support import free_port, wait_for

from livetwin.cli.serve import load_config
from livetwin.errors import InvalidInput
from livetwin.platform import Platform


@pytest.fixture
def server():
    opc = OpcServer().start()
    yield opc
    opc.close()


@pytest.fixture
def loopback(monkeypatch):
    """The test server listens on loopback, which the outbound policy refuses by default."""
    monkeypatch.setenv("LIVETWIN_OUTBOUND_ALLOW", "127.0.0.0/8")


def connector(server: OpcServer, **extra) -> dict:
    return {
        "endpoint": server.endpoint,
        "type": "pump",
        "browse": [{"path": "2:Plant/*/2:flow", "twin": "{1}", "property": "flow"}],
        "sampling_ms": 20,
        "publishing_ms": 50,
        **extra,
    }


def data_dir(tmp_path):
    data = tmp_path / "d"
    with Platform(data) as p:
        p.put_type("pump", PUMP)
    return data


def test_the_config_file_reads_opcua_connectors_with_their_password_file(tmp_path):
    (tmp_path / "opc-password").write_text("secret\n")
    config = tmp_path / "livetwin.yaml"
    spec = {"endpoint": "opc.tcp://plc:4840", "username": "operator"}
    config.write_text(
        json.dumps({"opcua": {"connectors": {"line-1": {**spec, "password_file": "opc-password"}}}})
    )
    connection, subscriptions, connectors = load_config(config)
    assert connection is None and subscriptions == {}  # no mqtt: section, no broker
    assert connectors == {"line-1": {**spec, "password": "secret"}}
    config.write_text(
        json.dumps({"mqtt": {"host": "broker", "port": 1884}, "opcua": {"connectors": {}}})
    )
    connection, _, connectors = load_config(config)
    assert (connection.host, connection.port, connectors) == ("broker", 1884, {})


@pytest.mark.parametrize(
    "section, field",
    [
        ({"connector": {}}, "opcua.connector"),
        ({"connectors": ["line-1"]}, "opcua.connectors"),
        ({"connectors": {"a": {"password_file": "missing"}}}, "opcua.connectors.a.password_file"),
        ("line-1", "opcua"),
    ],
)
def test_a_bad_opcua_section_names_the_field(tmp_path, section, field):
    config = tmp_path / "livetwin.yaml"
    config.write_text(json.dumps({"opcua": section}))
    with pytest.raises(InvalidInput) as caught:
        load_config(config)
    assert caught.value.field == field and caught.value.fix


def test_serve_runs_the_connectors_of_its_config_file(tmp_path, server, loopback):
    data = data_dir(tmp_path)
    config = tmp_path / "livetwin.yaml"
    config.write_text(json.dumps({"opcua": {"connectors": {"plant": connector(server)}}}))
    with serving(tmp_path, data, free_port(), "--config", str(config)) as (_, base):
        server.write("pump-2.flow", 7.5)

        def flow():
            twin = httpx.get(f"{base}/api/twins/pump-2", timeout=5)
            return twin.status_code == 200 and twin.json()["properties"]["flow"] == 7.5

        wait_for(flow)
        listed = run("opcua", "list", "--url", base)
        assert listed.exit_code == 0, listed.output
        (plant,) = json.loads(listed.stdout)["connectors"]
        assert plant["name"] == "plant" and plant["status"]["connected"]
        deleted = run("opcua", "delete", "plant", "--url", base)
        assert deleted.exit_code == 0, deleted.output
        assert httpx.get(f"{base}/api/opcua", timeout=5).json()["connectors"] == []


def test_serve_refuses_a_connector_the_server_refuses(tmp_path, server, loopback):
    config = tmp_path / "livetwin.yaml"
    nodes = [{"node": "ns=2;s=pump-9.flow", "twin": "p", "property": "flow"}]
    spec = {**connector(server), "browse": [], "nodes": nodes}
    config.write_text(json.dumps({"opcua": {"connectors": {"plant": spec}}}))
    port = free_port()
    result = run(
        "serve", "--data", str(data_dir(tmp_path)), "--port", str(port), "--config", str(config)
    )
    refused(result, "pump-9", "fix:")


def test_put_list_delete_on_a_data_directory(tmp_path, server, loopback):
    data = data_dir(tmp_path)
    spec_file = tmp_path / "line-1.json"
    spec_file.write_text(json.dumps(connector(server)))
    put = run("opcua", "put", "line-1", str(spec_file), "--data", str(data))
    assert put.exit_code == 0, put.output
    shown = json.loads(put.stdout)
    assert shown["name"] == "line-1" and shown["status"]["connected"]
    listed = run("opcua", "list", "--data", str(data))
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.stdout)["available"] is True
    assert [c["name"] for c in json.loads(listed.stdout)["connectors"]] == ["line-1"]
    with Platform(data) as platform:  # stored: a restart runs it
        assert platform.opcua.wait_connected("line-1", timeout=30)
        server.write("pump-1.flow", 3.25)
        wait_for(lambda: platform.twin("pump-1")["properties"]["flow"] == 3.25)
    assert run("opcua", "delete", "line-1", "--data", str(data)).exit_code == 0
    assert json.loads(run("opcua", "list", "--data", str(data)).stdout)["connectors"] == []
    refused(run("opcua", "delete", "line-1", "--data", str(data)), "no OPC UA connector")


def test_put_refuses_a_bad_spec_file_with_the_field(tmp_path, server, loopback):
    data = data_dir(tmp_path)
    spec_file = tmp_path / "bad.yaml"
    spec_file.write_text(f"endpoint: {server.endpoint}\ntype: pump\n")
    refused(run("opcua", "put", "x", str(spec_file), "--data", str(data)), "maps no nodes")
    spec_file.write_text("- not a mapping\n")
    refused(run("opcua", "put", "x", str(spec_file), "--data", str(data)), "no connector object")
    refused(
        run("opcua", "put", "x", str(tmp_path / "none.yaml"), "--data", str(data)), "cannot read"
    )
    spec_file.write_text(json.dumps(connector(server, username="u", password_file="nope")))
    refused(run("opcua", "put", "x", str(spec_file), "--data", str(data)), "password_file")
    assert json.loads(run("opcua", "list", "--data", str(data)).stdout)["connectors"] == []


def test_bench_opcua_counts_the_changes_it_stored():
    """A smoke run of `livetwin bench opcua --json --quick` (no speed is asserted here)."""
    done = run("bench", "opcua", "--json", "--quick")
    assert done.exit_code == 0, done.output
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert row["scenario"] == "opcua_subscribe" and row["variables"] == 100
    assert 0 < row["values_stored"] <= row["values_received"]
    assert row["values_per_s"] > 0 and row["values_rejected"] == 0
