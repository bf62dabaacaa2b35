"""Bad input gets a 4xx JSON error naming the field and the fix; nothing bad reaches the journal."""

from __future__ import annotations

import math
import time

import httpx
import orjson
import pytest
from conftest import PUMP, T0, obs

from livetwin.engine.batch import decode_batch


@pytest.fixture
def pump(client):
    assert client.put("/api/types/pump", json=PUMP).status_code == 200
    return client


def journaled(platform) -> list[tuple[str, dict]]:
    """Every observation in the journal as (twin, values)."""
    out = []
    for entry in platform.core.store.journal():
        if entry.kind == "obs":
            b = decode_batch(entry.body)
            for i, twin in enumerate(b.twins):
                values = {n: b.values[j, i] for j, n in enumerate(b.names)}
                out.append((twin, {n: v for n, v in values.items() if not math.isnan(v)}))
    return out


BAD_ROWS = [
    ({"twin": "a", "type": "valve", "values": {"flow": 1}}, "type", "unknown twin type"),
    ({"twin": "a", "type": "pump", "values": {"speed": 1}}, "values.speed", "unknown property"),
    ({"twin": "a", "type": "pump", "values": {"flow": "high"}}, "values.flow", "non-numeric"),
    ({"twin": "a", "type": "pump", "values": {"flow": [1]}}, "values.flow", "non-numeric"),
    ({"twin": "a", "type": "pump", "values": {"flow": 5000}}, "values.flow", "outside the valid"),
    ({"twin": "a", "type": "pump", "ts": "yesterday", "values": {"flow": 1}}, "ts", "parse"),
    (
        {"twin": "a", "type": "pump", "ts": T0 + 10 * 86_400_000, "values": {"flow": 1}},
        "ts",
        "future",
    ),
    (
        {"twin": "a", "type": "pump", "ts": 1_700_000_000, "values": {"flow": 1}},
        "ts",
        "epoch seconds",
    ),
    ({"twin": "a", "type": "pump", "values": {}}, "values", "non-empty"),
    ({"twin": 7, "type": "pump", "values": {"flow": 1}}, "twin", "string"),
    ({"type": "pump", "values": {"flow": 1}}, "twin", "string"),
    ({"twin": "a", "type": "pump", "values": {"flow": 1}, "colour": "red"}, "colour", "unknown"),
    ("not an object", None, "JSON object"),
]


@pytest.mark.parametrize(("row", "field", "words"), BAD_ROWS)
def test_bad_rows_are_rejected_and_good_rows_kept(pump, platform, row, field, words):
    good = obs("good-1", T0, flow=1.0)
    r = pump.post("/api/ingest", json=[good, row, obs("good-2", T0, flow=2.0)])
    assert r.status_code == 200
    body = r.json()
    assert body["accepted"] == 2
    [rejected] = body["rejected"]
    assert rejected["index"] == 1 and rejected["field"] == field
    assert words in rejected["error"] and rejected["fix"]
    assert [twin for twin, _ in journaled(platform)] == ["good-1", "good-2"]


def test_atomic_batch_is_all_or_nothing(pump, platform):
    rows = [obs("a", T0, flow=1.0), obs("b", T0, flow="x")]
    r = pump.post("/api/ingest", params={"atomic": "true"}, json=rows)
    assert r.status_code == 422
    assert r.json()["accepted"] == 0 and r.json()["rejected"][0]["index"] == 1
    assert journaled(platform) == []
    # a state-dependent problem (a twin of another type) also sinks an atomic batch
    pump.put("/api/types/valve", json={"properties": {"open": {}}})
    pump.post("/api/ingest", json=[obs("v", T0, type="valve", open=1)])
    rows = [obs("c", T0, flow=1.0), obs("v", T0, flow=1.0)]
    r = pump.post("/api/ingest", params={"atomic": "true"}, json=rows)
    assert r.status_code == 422 and "is a 'valve'" in r.json()["rejected"][0]["error"]
    assert [twin for twin, _ in journaled(platform)] == ["v"]


def test_nan_and_infinity_never_reach_the_journal(pump, platform):
    raw = b'[{"twin": "a", "type": "pump", "values": {"flow": 1e999}}]'
    r = pump.post("/api/ingest", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "malformed_json"
    assert "infinity" in r.json()["error"]["message"]
    result = platform.ingest([obs("a", T0, flow=float("nan")), obs("b", T0, flow=math.inf)])
    assert result.accepted == 0
    assert {r.field for r in result.rejected} == {"values.flow"}
    assert journaled(platform) == []


def test_malformed_json(pump):
    r = pump.post(
        "/api/ingest", content=b'[{"twin": ', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["field"] == "body" and "malformed JSON" in error["message"] and error["fix"]


def test_body_must_be_an_array(pump):
    r = pump.post("/api/ingest", json={"twin": "a"})
    assert r.status_code == 422
    assert r.json()["rejected"][0]["field"] == "body"


def test_oversize_body(pump, platform):
    rows = [obs(f"p{i}", T0, flow=1.0) for i in range(5000)]  # limit is 200 kB in the fixture
    r = pump.post(
        "/api/ingest", content=orjson.dumps(rows), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    assert r.json()["error"]["field"] == "body" and "limit" in r.json()["error"]["message"]
    assert journaled(platform) == []


def _put_derived(client, expr):
    spec = {"properties": {"flow": {}}, "derived": {"x": expr}}
    return client.put("/api/types/t", json=spec)


@pytest.mark.parametrize(
    ("derived", "field", "words"),
    [
        ({"x": "flow +* 2"}, "derived.x.expr", "col"),
        ({"x": "flow * speed"}, "derived.x.expr", "speed"),
        ({"x": "avg(flow, '10 fortnights')"}, "derived.x.expr", "duration"),
        ({"x": "__import__('os')"}, "derived.x.expr", "__import__"),
        ({"a": "b + 1", "b": "c * 2", "c": "a - flow"}, None, "cycle"),
        ({"x": "x + 1"}, "derived.x.expr", "cycle"),
    ],
)
def test_bad_type_specs(client, derived, field, words):
    r = client.put("/api/types/t", json={"properties": {"flow": {}}, "derived": derived})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert words in error["message"], error
    assert error["fix"]
    if field:
        assert error["field"] == field
    assert client.get("/api/types/t").status_code == 404


def test_bad_spec_fields(client):
    r = client.put("/api/types/t", json={"properties": {"flow": {"unti": "m"}}})
    assert r.status_code == 422 and r.json()["error"]["field"] == "properties.flow.unti"
    r = client.put("/api/types/t", json={"parameters": {"k": {"value": 1, "min": 5, "max": 2}}})
    assert r.status_code == 422 and "inverted" in r.json()["error"]["message"]
    r = client.put("/api/types/t", json={"properties": {"flow": {}}, "name": "other"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "name"


def test_unknown_twin_and_bad_query(pump):
    r = pump.get("/api/twins/nobody")
    assert r.status_code == 404 and r.json()["error"]["field"] == "id"
    pump.post("/api/ingest", json=[obs("a", T0, flow=1.0)])
    r = pump.get("/api/twins", params={"type": "pump", "where": "flow >"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "where"
    r = pump.get("/api/twins", params={"where": "flow > 1"})
    assert r.status_code == 422 and "type=" in r.json()["error"]["message"]
    r = pump.get("/api/twins/a/history", params={"names": "speed"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "names"
    r = pump.get("/api/twins/a/history", params={"every": "soon"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "every"
    r = pump.get("/api/twins/a/history", params={"from": "last tuesday"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "from"
    r = pump.get("/api/twins", params={"limit": "many"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "limit"
    r = pump.get("/api/nothing-here")
    assert r.status_code == 404 and "error" in r.json()


YAML = {"content-type": "application/yaml"}
ALIAS_BOMB = (  # 9**5 strings from a few hundred bytes
    'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
    "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
    "c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
    "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
    "e: [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
)


@pytest.mark.parametrize(("method", "path"), [("post", "/api/ingest"), ("put", "/api/types/t")])
def test_deep_yaml_is_refused_naming_the_limit(pump, method, path):
    deep = "[" * 500 + "]" * 500
    r = pump.request(method, path, content=deep, headers=YAML)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == "body" and "100 levels" in error["message"] and error["fix"]


def test_deep_json_is_refused_naming_the_limit(pump):
    deep = "[" * 2000 + "]" * 2000
    r = pump.post("/api/ingest", content=deep, headers={"content-type": "application/json"})
    assert r.status_code == 422 and "1024 levels" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "body",
    [
        ALIAS_BOMB,
        "- &row {twin: a, type: pump, values: {flow: 1}}\n- *row\n",
        "- twin: a\n  type: pump\n  values: &v [*v]\n",
    ],
)
def test_yaml_aliases_are_refused(pump, platform, body):
    r = pump.post("/api/ingest", content=body, headers=YAML)
    assert r.status_code == 422, r.text
    assert "aliases" in r.json()["error"]["message"] and len(r.content) < 1000
    assert journaled(platform) == []


def test_yaml_without_aliases_still_works(pump, platform):
    body = f"- twin: a\n  type: pump\n  ts: {T0}\n  values: {{flow: 1.5}}\n"
    r = pump.post("/api/ingest", content=body, headers=YAML)
    assert r.status_code == 200 and r.json()["accepted"] == 1


def test_errors_quote_only_an_excerpt_of_bad_input(pump):
    huge = "x" * 30_000  # the fixture's body limit is 200 kB
    rows = [
        {"twin": "a", "type": "pump", "values": {"flow": 1}, huge: 1},
        {"twin": "a", "type": huge, "values": {"flow": 1}},
        {"twin": "a", "type": "pump", "values": {huge: 1}},
        {"twin": "a", "type": "pump", "values": {"flow": huge}},
        {"twin": "a", "type": "pump", "values": {"flow": [[[[[huge] * 2]]]]}},
    ]
    r = pump.post("/api/ingest", json=rows)
    assert r.status_code == 422
    rejected = r.json()["rejected"]
    assert len(rejected) == len(rows)
    assert len(r.content) < 10_000
    for rejection in rejected:
        assert len(rejection["error"]) <= 1000 and len(rejection["field"]) <= 200
    r = pump.put("/api/types/t", json={"properties": {huge: {}}})
    assert r.status_code == 422 and len(r.content) < 10_000


def test_excerpt_never_expands_its_value():
    from livetwin.errors import excerpt

    shared: list = ["x" * 1000] * 9
    for _ in range(6):  # 9**7 strings of 1000 characters if printed whole
        shared = [shared] * 9
    assert len(excerpt(shared)) <= 200
    assert len(excerpt("y" * 10_000)) <= 200
    assert "bits" in excerpt(10**5000)


BEYOND_64_BITS = [str(2**63), str(2**70), str(-(2**70)), "9" * 5000]


@pytest.mark.parametrize("number", BEYOND_64_BITS)
@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/alarms/{n}", "alarm_id"),
        ("/api/alarms?limit={n}", "limit"),
        ("/api/alarms?offset={n}", "offset"),
        ("/api/twins?type=pump&offset={n}", "offset"),
        ("/api/twins/a/history?from={n}", "from"),
        ("/api/twins/a/history?to={n}", "to"),
        ("/api/twins/a/observations?before={n}", "before"),
        ("/api/twins/a/observations?limit={n}", "limit"),
        ("/api/types/pump?version={n}", "version"),
        ("/api/runs?limit={n}", "limit"),
        ("/api/lineage/x?depth={n}", "depth"),
        ("/api/lineage/value?twin=a&name=flow&ts={n}", "ts"),
    ],
)
def test_integers_beyond_64_bits_answer_422_naming_the_field(pump, path, field, number):
    pump.post("/api/ingest", json=[obs("a", T0, flow=1.0)])
    r = pump.get(path.format(n=number))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == field
    assert len(r.content) < 2000


def test_alarm_changes_with_ids_beyond_64_bits(pump):
    for action in ("ack", "clear", "comments"):
        r = pump.request("post", f"/api/alarms/{2**64}/{action}", json={"text": "x"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "alarm_id", r.text


def test_timestamps_name_the_range():
    from livetwin.timefmt import parse_duration, parse_ts

    with pytest.raises(ValueError, match="9223372036854775807"):
        parse_ts(2**63)
    with pytest.raises(ValueError, match="9223372036854775807"):
        parse_ts("1" * 5000)
    with pytest.raises(ValueError, match="between 1ms and 3650d"):
        parse_duration("9" * 400 + "ms")


def test_every_route_reads_its_body_through_the_one_reader(client):
    """FastAPI never parses a body itself (it would read it whole, past any limit)."""
    parsed_by_fastapi = [
        f"{sorted(route.methods)} {route.path}"
        for route in client.app.routes
        if getattr(getattr(route, "dependant", None), "body_params", None)
    ]
    assert parsed_by_fastapi == []


def test_alarm_comment_bodies_are_refused_past_the_limit(client):
    big = orjson.dumps({"text": "x" * 150_000})
    for action in ("comments", "ack", "clear"):
        r = client.post(
            f"/api/alarms/1/{action}", content=big, headers={"content-type": "application/json"}
        )
        assert r.status_code == 413 and r.json()["error"]["field"] == "body", r.text
    r = client.post("/api/alarms/1/comments", json={"text": "fine", "colour": "red"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "colour"


def test_token_bodies_are_refused_past_the_limit(platform):
    from fastapi.testclient import TestClient

    from livetwin.api.app import create_app
    from livetwin.api.auth import install_auth

    app = create_app(platform)
    tokens = install_auth(app, platform, "tokens")
    admin = tokens.create(name="root", scope="admin", namespace="*")["token"]
    with TestClient(app) as c:
        big = orjson.dumps({"name": "x" * 150_000})
        headers = {"content-type": "application/json", "authorization": f"Bearer {admin}"}
        r = c.post("/api/tokens", content=big, headers=headers)
        assert r.status_code == 413, r.text


def _raw_request(base_url: str, request: bytes) -> tuple[int, dict]:
    """Send bytes to the server; its status and JSON body."""
    import socket
    from urllib.parse import urlsplit

    address = urlsplit(base_url)
    with socket.create_connection((address.hostname, address.port), timeout=10) as conn:
        try:
            conn.sendall(request)
        except OSError:
            pass  # the server may answer and close before reading it all
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return int(head.split()[1]), orjson.loads(body)


def test_request_heads_are_capped_and_refused_in_json(live_server):
    status, body = _raw_request(
        live_server,
        b"GET /api/health HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 1_000_000 + b"\r\n\r\n",
    )
    assert status == 431 and "65536 bytes" in body["error"]["message"] and body["error"]["fix"]
    status, body = _raw_request(
        live_server, b"GET /api/twins?" + b"a" * 200_000 + b" HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    assert status == 414 and "URL" in body["error"]["message"]
    status, body = _raw_request(live_server, b"NONSENSE\r\n\r\n")
    assert status == 400 and body["error"]["message"] == "invalid HTTP request"
    # a head under the limit, then a body far larger than it, is served as before
    r = httpx.get(f"{live_server}/api/health", headers={"X-Ok": "a" * 30_000})
    assert r.status_code == 200
    r = httpx.post(f"{live_server}/api/ingest", content=b"[" + b" " * 150_000 + b"]")
    assert r.status_code == 200 and r.json()["accepted"] == 0, r.text


@pytest.mark.parametrize(
    "twin", ["pump\n1", "pump\r1", "pump\t1", "pump\x001", "pump\x7f", "p\x85"]
)
@pytest.mark.parametrize("field", ["twin", "parent"])
def test_ids_with_control_characters_are_refused(pump, platform, twin, field):
    row = {"twin": "ok", "type": "pump", "ts": T0, "values": {"flow": 1.0}, field: twin}
    r = pump.post("/api/ingest", json=[row])
    assert r.status_code == 422
    [rejected] = r.json()["rejected"]
    assert rejected["field"] == field and "control character" in rejected["error"]
    assert rejected["fix"]
    assert journaled(platform) == []


def test_printable_ids_are_still_accepted(pump):
    ids = ["plant a/line 2/pump-1", "Pumpe-Süd", "泵-1", "pump 😀"]
    r = pump.post("/api/ingest", json=[obs(twin, T0, flow=1.0) for twin in ids])
    assert r.status_code == 200 and r.json()["accepted"] == len(ids)
    for twin in ids:
        assert pump.get(f"/api/twins/{twin}").status_code == 200


def test_ids_from_an_extractor_with_control_characters_are_refused(pump):
    extractor = {"twin": "$.id", "type": "pump", "values": {"flow": "$.f"}}
    assert pump.put("/api/extractors/e", json=extractor).status_code == 200
    r = pump.post("/api/ingest/e", json={"id": "a\nb", "f": 1})
    assert r.status_code == 422 and "control character" in r.json()["rejected"][0]["error"]


@pytest.mark.parametrize(
    "spec",
    [
        "properties:\n  flow: {min: .nan}\n",
        "properties:\n  flow: {max: .nan}\n",
        "parameters:\n  k: {value: 1, min: .nan}\n",
        "parameters:\n  k: {value: 1, max: .NaN}\n",
    ],
)
def test_nan_bounds_are_refused(client, spec):
    r = client.put("/api/types/t", content=spec, headers=YAML)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert "NaN" in error["message"] and error["fix"]
    assert client.get("/api/types/t").status_code == 404


@pytest.mark.parametrize("section", ["properties", "parameters", "derived"])
@pytest.mark.parametrize("name", ["True", "False", "None", "lambda", "if", "and", "or", "not"])
def test_reserved_words_cannot_name_values(client, section, name):
    spec = {"properties": {"flow": {}}}
    entry = {"properties": {}, "parameters": {"value": 1}, "derived": "flow * 2"}[section]
    spec.setdefault(section, {})[name] = entry
    r = client.put("/api/types/t", json=spec)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == f"{section}.{name}" and "reserved" in error["message"]
    assert "rename" in error["fix"]


def test_a_slow_body_does_not_hold_up_other_ingest(live_server, platform):
    """Bodies are read and parsed before the ingest queue: a client that stalls mid-body (or a
    body that is slow to parse) never makes the others wait."""
    import socket
    from urllib.parse import urlsplit

    platform.put_type("pump", PUMP)
    address = urlsplit(live_server)
    with socket.create_connection((address.hostname, address.port), timeout=10) as stalled:
        stalled.sendall(
            b"POST /api/ingest HTTP/1.1\r\nHost: a\r\ncontent-type: application/json\r\n"
            b"content-length: 1000\r\n\r\n[{"
        )
        time.sleep(0.2)  # the stalled request has reached the route
        r = httpx.post(f"{live_server}/api/ingest", json=[obs("b", T0, flow=1.0)], timeout=5)
        assert r.status_code == 200 and r.json()["accepted"] == 1
