"""The `livetwin` command as a careless user meets it: every mistake is one line with a fix (no
stack trace, no "serving" banner before it), results alone on stdout, and SIGTERM stops
`serve` gracefully with exit status 0."""

from __future__ import annotations

import json
import signal
import socket
import ssl
from pathlib import Path

import httpx
import pytest
from cli_support import refused, run, serving
from conftest import PUMP, T0, obs
from tls_support import self_signed

from livetwin.examples.rollers import ROLLER_TYPE
from livetwin.platform import Platform


@pytest.fixture
def never_serves(monkeypatch):
    """A refused `serve` must not start the server: if it does, fail instead of serving."""

    def started(*args, **kwargs):
        raise AssertionError("the server started")

    monkeypatch.setattr("uvicorn.run", started)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_refuses_a_port_out_of_range_before_anything_starts(tmp_path, never_serves):
    data = tmp_path / "d"
    refused(run("serve", "--port", "99999", "--data", str(data)), "65535")
    refused(run("serve", "--port", "0", "--data", str(data)), "--port")
    assert not data.exists()


def test_serve_on_a_port_in_use_says_which_and_the_fix(tmp_path, never_serves):
    data = tmp_path / "d"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "--port", str(port), "--data", str(data))
    refused(result, f"127.0.0.1:{port}", "in use", "--port")
    assert not data.exists()


def test_serve_refuses_an_unknown_auth_mode_before_the_banner(tmp_path, never_serves):
    refused(
        run("serve", "--auth", "bogus", "--port", str(free_port()), "--data", str(tmp_path / "d")),
        "unknown auth mode 'bogus'",
        "fix:",
    )


@pytest.mark.parametrize("where", ["under-a-file", "proc"])
def test_serve_on_a_data_directory_it_cannot_make_is_one_line(tmp_path, never_serves, where):
    if where == "under-a-file":
        (tmp_path / "file").write_text("")
        data = tmp_path / "file" / "sub"
    else:
        data = Path("/proc/livetwin-x")
    refused(
        run("serve", "--port", str(free_port()), "--data", str(data)),
        f"cannot use {data} as a data directory",
        "fix:",
    )


@pytest.mark.parametrize("command", [["replay"], ["calibrate", "pump"]])
def test_commands_on_existing_state_refuse_a_missing_data_directory(tmp_path, command):
    data = tmp_path / "does-not-exist"
    refused(run(*command, "--data", str(data)), f"no livetwin data directory at {data}", "fix:")
    assert not data.exists()


def test_calibrate_prints_only_json_on_stdout(tmp_path):
    data = tmp_path / "d"
    with Platform(data) as p:  # its next start prints "recovered ...": a status line
        p.put_type("roller_line", ROLLER_TYPE)
        p.ingest([obs("line-1", T0, type="roller_line", w1=1.0)])
    result = run("calibrate", "roller_line", "--data", str(data))
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)  # `| jq` reads this
    assert record["type"] == "roller_line" and record["twins"] == 1
    assert "recovered" in result.stderr


def test_token_list_shows_ids_that_revoke_takes(tmp_path):
    data = str(tmp_path / "d")
    for n in range(2):
        name = f"continuous-integration-{n}"
        made = run("token", "create", "--name", name, "--scope", "admin", "--data", data)
        assert made.exit_code == 0, made.output
    ids = [t["id"] for t in json.loads(run("token", "list", "--json", "--data", data).stdout)]
    table = run("token", "list", "--data", data).stdout  # 80 columns, like a small terminal
    assert all(token_id in table for token_id in ids), table
    revoked = run("token", "revoke", ids[0][:6], "--data", data)  # a prefix that is unambiguous
    assert revoked.exit_code == 0, revoked.output
    assert f"token {ids[0]} " in revoked.output
    refused(run("token", "revoke", "", "--data", data), "no token")


def test_sigterm_drains_serve_and_exits_0(tmp_path):
    data = tmp_path / "d"
    with Platform(data) as p:
        p.put_type("pump", PUMP)
    with serving(tmp_path, data, free_port()) as (server, base):
        r = httpx.post(f"{base}/api/ingest", json=[obs("p1", T0, flow=42.0)], timeout=10)
        assert r.status_code == 200, r.text
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=60)
    assert server.returncode == 0, err.decode()
    assert b"stopped on SIGTERM" in err and b"Traceback" not in err
    with Platform(data) as p:
        assert p.twin("p1")["properties"]["flow"] == 42.0
        assert p.recovered["replayed_observations"] == 0  # the final snapshot holds it


def test_serve_over_https_with_the_given_certificate(tmp_path):
    cert, key = self_signed(tmp_path / "tls")
    options = ("--tls-cert", str(cert), "--tls-key", str(key))
    trust = ssl.create_default_context(cafile=str(cert))
    with serving(tmp_path, tmp_path / "d", free_port(), *options, verify=trust) as (_, base):
        assert base.startswith("https://")
        assert httpx.get(f"{base}/api/health", verify=trust, timeout=10).status_code == 200
        with pytest.raises(httpx.HTTPError):  # not plain HTTP
            httpx.get(base.replace("https", "http") + "/api/health", timeout=5)


def test_serve_refuses_tls_and_mqtt_options_that_cannot_work(tmp_path, never_serves):
    data, port = str(tmp_path / "d"), str(free_port())
    cert, key = self_signed(tmp_path / "tls")
    (junk := tmp_path / "junk.pem").write_text("not a certificate")
    cases = [
        (["--host", "0.0.0.0"], ["clear text", "--tls-cert", "--insecure-http"]),
        (["--tls-cert", str(cert)], ["--tls-key"]),
        (["--tls-cert", str(tmp_path / "no.pem"), "--tls-key", str(key)], ["unreadable"]),
        (["--tls-cert", str(junk), "--tls-key", str(key)], ["cannot be used"]),
        (["--mqtt-username", "plant"], ["needs a broker", "--mqtt"]),
        (["--mqtt-share-group", "front"], ["needs a broker", "--mqtt"]),
        (["--mqtt", "127.0.0.1:1883", "--mqtt-share-group", "a/b"], ["share group", "without"]),
        (["--mqtt", "127.0.0.1:1883", "--mqtt-tls-ca", str(tmp_path / "no.pem")], ["MQTT TLS CA"]),
    ]
    for options, words in cases:
        refused(run("serve", "--port", port, "--data", data, *options), *words)
    result = run("serve", "--host", "0.0.0.0", "--insecure-http", "--port", port, "--data", data)
    assert "the server started" in str(result.exception)  # past every check
