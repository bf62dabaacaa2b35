"""`livetwin twins create|update|delete` and `livetwin types delete` on a data directory."""

from __future__ import annotations

import json

from cli_support import refused, run
from conftest import T0, obs

from livetwin.platform import Platform

VALVE = {"properties": {"flow": {}}, "attributes": {"mode": {"type": "enum", "values": ["a", "b"]}}}


def test_twins_and_types_from_the_command_line(tmp_path):
    data = tmp_path / "d"
    with Platform(data) as p:
        p.put_type("valve", VALVE)
        p.ingest([obs("v0", T0, type="valve", flow=1.0)])
    made = run("twins", "create", "v1", "--type", "valve", "--attr", "mode=a", "--data", str(data))
    assert made.exit_code == 0, made.output
    assert json.loads(made.stdout)["created"] is True
    refused(run("twins", "create", "v1", "--type", "valve", "--data", str(data)), "already exists")
    refused(run("twins", "update", "v1", "--attr", "mode=c", "--data", str(data)), "a, b")
    refused(run("twins", "update", "v1", "--attr", "mode", "--data", str(data)), "NAME=VALUE")
    assert run("twins", "update", "v1", "--parent", "v0", "--data", str(data)).exit_code == 2
    assert run("twins", "update", "v1", "--attr", "mode=b", "--data", str(data)).exit_code == 0
    refused(run("types", "delete", "valve", "--data", str(data)), "cascade")
    deleted = run("twins", "delete", "v0", "--purge", "--data", str(data))
    assert json.loads(deleted.stdout)["purged"] is True
    with Platform(data) as p:
        assert p.twin("v1")["attributes"] == {"mode": "b"}
    dropped = run("types", "delete", "valve", "--cascade", "--data", str(data))
    assert dropped.exit_code == 0, dropped.output
    assert json.loads(dropped.stdout)["removed"] == ["v1"]
    refused(run("twins", "delete", "v1", "--data", str(tmp_path / "none")), "no livetwin data")


def test_twins_commands_talk_to_a_running_server_with_url(platform, live_server):
    platform.put_type("valve", VALVE)
    made = run("twins", "create", "v1", "--type", "valve", "--attr", "mode=b", "--url", live_server)
    assert made.exit_code == 0, made.output
    assert platform.twin("v1")["attributes"] == {"mode": "b"}
    refused(run("types", "delete", "valve", "--url", live_server), "cascade=true")
    assert run("twins", "delete", "v1", "--url", live_server).exit_code == 0
    assert platform.list_types()[0]["twins"] == 0


def test_namespaces_export_and_delete_from_the_command_line(tmp_path, platform, live_server):
    data = tmp_path / "d"
    with Platform(data) as p:
        p.put_type("valve", {**VALVE, "namespace": "plant-a"})
        p.put_type("gauge", {"properties": {"x": {}}})
        p.ingest([obs("plant-a/v", T0, type="valve", flow=1.0), obs("g0", T0, "gauge", x=1.0)])
    exported = json.loads(run("namespaces", "export", "plant-a", "--data", str(data)).stdout)
    assert [t["id"] for t in exported["twins"]] == ["plant-a/v"]
    refused(run("namespaces", "delete", "plant-a", "--data", str(data)), "confirm=plant-a")
    refused(run("namespaces", "delete", "x/y", "--confirm", "x/y", "--data", str(data)), "'x'")
    deleted = run("namespaces", "delete", "plant-a", "--confirm", "plant-a", "--data", str(data))
    assert json.loads(deleted.stdout)["deleted"]["twins"] == ["plant-a/v"], deleted.output
    with Platform(data) as p:
        assert [t["id"] for t in p.twins()["items"]] == ["g0"]
        assert [t["name"] for t in p.list_types()] == ["gauge"]

    platform.put_type("gauge", {"properties": {"x": {}}})
    platform.ingest([obs("plant-b/g", T0, type="gauge", x=1.0)])
    over_http = run("namespaces", "delete", "plant-b", "--confirm", "plant-b", "--url", live_server)
    assert json.loads(over_http.stdout)["deleted"]["twins"] == ["plant-b/g"], over_http.output
    assert platform.twins()["items"] == []
