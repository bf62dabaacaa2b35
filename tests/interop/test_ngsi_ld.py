"""The read-only NGSI-LD view: twins as entities (normalized and keyValues, JSON with a Link
header or JSON-LD with @context), Query Entities with type, q, attrs and paging, Retrieve Entity
by URN or twin id; a q livetwin cannot read is a 422 naming q; auth guards /ngsi-ld too."""

from __future__ import annotations

import pytest
from conftest import PUMP, T0
from fastapi.testclient import TestClient

from livetwin.api.app import create_app
from livetwin.api.auth import install_auth
from livetwin.errors import InvalidInput
from livetwin.interop.ngsi_ld import CORE_CONTEXT, translate_q

ENTITIES = "/ngsi-ld/v1/entities"


@pytest.fixture
def fleet(client):
    client.put("/api/types/pump", json=PUMP)
    client.put("/api/types/station", json={"properties": {"level": {}}, "children": ["pump"]})
    rows = [{"twin": "s-1", "type": "station", "ts": T0, "values": {"level": 1}}]
    for i, (flow, pressure) in enumerate([(10, 2.0), (50, 3.0), (90, 4.0), (120, 1.0)]):
        values = {"flow": flow, "pressure": pressure}
        rows.append({"twin": f"s-1/p{i}", "type": "pump", "ts": T0 + i, "values": values})
    rows[-1]["parent"] = "s-1"
    assert client.post("/api/ingest", json=rows).json()["accepted"] == 5
    return client


def _ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [e["id"] for e in response.json()]


def test_twins_are_entities_with_properties_units_and_observation_times(fleet):
    r = fleet.get(ENTITIES, params={"type": "pump", "limit": 1})
    assert r.headers["content-type"] == "application/json"
    assert r.headers["link"].startswith(f"<{CORE_CONTEXT}>")
    [entity] = r.json()
    assert entity["id"] == "urn:ngsi-ld:pump:s-1%2Fp0"
    assert entity["type"] == "pump"
    assert entity["flow"] == {
        "type": "Property",
        "value": 10.0,
        "observedAt": "2026-11-22T10:00:00.000Z",
        "unitCode": "MQH",  # m3/h in UN/CEFACT common codes
    }
    assert entity["pressure"]["unitCode"] == "BAR"
    assert entity["eff"]["value"] == 0.8  # parameters and derived values are properties too
    assert "unitCode" not in entity["flow_avg"]
    assert "@context" not in entity


def test_json_ld_answers_carry_the_context_in_the_body(fleet):
    r = fleet.get(f"{ENTITIES}/urn:ngsi-ld:station:s-1", headers={"accept": "application/ld+json"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/ld+json"
    assert r.json()["@context"] == CORE_CONTEXT
    assert "link" not in r.headers


@pytest.mark.parametrize(
    "q, expected",
    [
        ("flow>40", ["p1", "p2", "p3"]),
        ("flow>40;pressure<4", ["p1", "p3"]),
        ("flow<20|pressure>=4", ["p0", "p2"]),
        ("(flow<20|flow>100);pressure<3", ["p0", "p3"]),
        ("flow==40..100", ["p1", "p2"]),
        ("flow!=10,50", ["p2", "p3"]),
        ("flow==10,120", ["p0", "p3"]),
        ("power", ["p0", "p1", "p2", "p3"]),
    ],
)
def test_query_entities_by_type_and_q(fleet, q, expected):
    r = fleet.get(ENTITIES, params={"type": "pump", "q": q})
    assert _ids(r) == [f"urn:ngsi-ld:pump:s-1%2F{p}" for p in expected]


def test_attrs_key_values_count_and_paging(fleet):
    params = {"type": "pump", "attrs": "flow,refParent", "options": "keyValues", "count": "true"}
    r = fleet.get(ENTITIES, params={**params, "limit": 2, "offset": 2})
    assert r.headers["ngsild-results-count"] == "4"
    assert r.json() == [
        {"id": "urn:ngsi-ld:pump:s-1%2Fp2", "type": "pump", "flow": 90.0},
        {
            "id": "urn:ngsi-ld:pump:s-1%2Fp3",
            "type": "pump",
            "flow": 120.0,
            "refParent": "urn:ngsi-ld:station:s-1",
        },
    ]
    everything = fleet.get(ENTITIES, params={"limit": 1000})
    assert len(everything.json()) == 5  # no type: every twin


def test_a_parent_is_a_relationship(fleet):
    entity = fleet.get(f"{ENTITIES}/s-1/p3").json()  # a plain twin id works too
    assert entity["refParent"] == {"type": "Relationship", "object": "urn:ngsi-ld:station:s-1"}


def test_retrieve_entity_by_its_urn_with_slashes_encoded(fleet):
    r = fleet.get(f"{ENTITIES}/urn:ngsi-ld:pump:s-1%252Fp1")  # the client encodes the '%'
    assert r.status_code == 200, r.text
    assert r.json()["flow"]["value"] == 50.0


def test_unknown_entities_are_404_and_an_unknown_type_matches_nothing(fleet):
    r = fleet.get(f"{ENTITIES}/urn:ngsi-ld:station:s-1%2Fp1")  # a pump, named as a station
    assert r.status_code == 404
    assert r.json()["error"]["fix"] == "use urn:ngsi-ld:pump:s-1%2Fp1"
    assert fleet.get(f"{ENTITIES}/urn:ngsi-ld:pump:nope").status_code == 404
    assert fleet.get(ENTITIES, params={"type": "boiler"}).json() == []


@pytest.mark.parametrize(
    "params",
    [
        {"type": "pump", "q": "flow>"},
        {"type": "pump", "q": "flow>'high'"},
        {"type": "pump", "q": "name=~'p.*'"},
        {"type": "pump", "q": "(flow>1"},
        {"type": "pump", "q": "speed>1"},  # no such attribute
        {"type": "pump", "q": "flow.observedAt>1"},
        {"q": "flow>1"},  # q needs a type
    ],
)
def test_a_q_livetwin_cannot_read_is_a_422_naming_q(fleet, params):
    r = fleet.get(ENTITIES, params=params)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "q"
    assert r.json()["error"]["fix"]


def test_q_translates_to_a_where_expression():
    assert translate_q("a>1;(b<=2|c==true)") == "a > 1.0 and (b <= 2.0 or c == 1)"
    assert translate_q("a==1..2") == "(a >= 1.0 and a <= 2.0)"
    assert translate_q("a!=1..2") == "not (a >= 1.0 and a <= 2.0)"
    with pytest.raises(InvalidInput):
        translate_q("a>1;")


def test_the_view_is_guarded_by_auth_like_the_api(platform):
    app = create_app(platform)
    tokens = install_auth(app, platform, mode="tokens")
    read = tokens.create(name="r", scope="read", namespace="*")["token"]
    write = tokens.create(name="w", scope="write", namespace="*")["token"]
    with TestClient(app) as client:
        assert client.get(ENTITIES).status_code == 401
        auth = {"authorization": f"Bearer {read}"}
        assert client.get(ENTITIES, headers=auth).status_code == 200
        document = client.get("/openapi.json", headers=auth).json()
        assert {"401", "403"} <= set(document["paths"][ENTITIES]["get"]["responses"])
        # importing types declares them: admin, like PUT /api/types/{name}
        r = client.post("/api/types/import", json={}, headers={"authorization": f"Bearer {write}"})
        assert r.status_code == 403
