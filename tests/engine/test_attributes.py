"""Text attributes and the twin/type lifecycle in the engine and the journal: declared in a
type, set by ingest and by journaled changes, used by `where` and rules, and reproduced by
replay and snapshots (deletions included)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import T0, obs

from livetwin.engine.events import Notice
from livetwin.errors import Conflict, InvalidInput, NotFound
from livetwin.expr import ExpressionError, compile_expression
from livetwin.platform import Platform
from livetwin.spec.types import compile_type, parse_type_spec

VALVE = {
    "properties": {"flow": {}},
    "attributes": {
        "serial": {"type": "string"},
        "mode": {"type": "enum", "values": ["auto", "manual"]},
    },
    "rules": {"manual_flow": {"when": "mode == 'manual' and flow > 5", "message": "{twin} {mode}"}},
}


def state(p: Platform) -> dict:
    """Every twin with its type, parent, attributes and values: what replay must reproduce."""
    with p.core.lock:
        return {t: p.twin(t) for t in sorted(p.core.engine.type_of)}


# ---- spec ------------------------------------------------------------------------------------


def test_attributes_are_declared_with_shorthands_and_checked():
    spec = parse_type_spec({"properties": {"x": {}}, "attributes": {"a": None, "b": "string"}}, "t")
    assert {n: a.type for n, a in spec.attributes.items()} == {"a": "string", "b": "string"}
    for attributes, message in (
        ({"mode": {"type": "enum"}}, "an enum needs values"),
        ({"serial": {"type": "string", "values": ["x"]}}, "values belong to an enum"),
        ({"mode": {"type": "number"}}, "attributes.mode.type"),
        ({"9x": {}}, "not a valid name"),
    ):
        with pytest.raises(InvalidInput) as caught:
            parse_type_spec({"properties": {"x": {}}, "attributes": attributes}, "t")
        assert message in f"{caught.value} {caught.value.field}"
    with pytest.raises(InvalidInput) as caught:
        compile_type(parse_type_spec({"properties": {"x": {}}, "attributes": {"x": {}}}, "t"), 1)
    assert caught.value.field == "attributes.x"


def test_a_type_without_attributes_keeps_its_stored_form(platform):
    assert platform.put_type("plain", {"properties": {"x": {}}})["version"] == 1
    assert "attributes" not in platform.get_type("plain")["spec"]
    assert (
        platform.put_type("plain", {"properties": {"x": {}}, "attributes": {}})["changed"] is False
    )


def test_derived_values_cannot_read_text_and_rules_compare_it_with_strings_only():
    with pytest.raises(InvalidInput) as caught:
        compile_type(
            parse_type_spec({**VALVE, "derived": {"m": "mode * 2"}, "rules": {}}, "valve"), 1
        )
    assert caught.value.field == "derived.m.expr"
    bad_rule = {**VALVE, "rules": {"r": {"when": "mode > 1"}}}
    with pytest.raises(InvalidInput) as caught:
        compile_type(parse_type_spec(bad_rule, "valve"), 1)
    assert caught.value.field == "rules.r.when" and "== or !=" in str(caught.value)


def test_text_comparisons_are_vectorised_and_unset_is_unknown():
    c = compile_expression("mode != 'auto' or x > 1", {"x"}, text_names={"mode"})
    mode = np.array(["auto", "manual", None, None], dtype=object)
    x = np.array([0.0, 0.0, 0.0, 2.0])
    out = c.evaluate({"mode": mode, "x": x})
    assert out[:2].tolist() == [0.0, 1.0] and np.isnan(out[2]) and out[3] == 1.0
    with pytest.raises(ExpressionError, match="text attribute"):
        compile_expression("mode + 1 > 0", {"x"}, text_names={"mode"})


# ---- ingest, where, rules ----------------------------------------------------------------------


def test_ingest_sets_attributes_beside_numbers_and_rejects_bad_enum_values(platform):
    platform.put_type("valve", VALVE)
    result = platform.ingest(
        [
            obs("v1", T0, "valve", flow=1.0, serial="A-1", mode="auto"),
            obs("v2", T0, "valve", flow=9.0, mode="manual"),
            obs("v3", T0, "valve", flow=9.0, mode="broken"),
            obs("v4", T0, "valve", serial=17),
            obs("v1", T0 + 1000, "valve", mode="manual"),  # attributes only
        ]
    ).to_dict()
    assert result["accepted"] == 3
    assert [(r["index"], r["field"]) for r in result["rejected"]] == [
        (2, "values.mode"),
        (3, "values.serial"),
    ]
    assert result["rejected"][0]["fix"] == "send one of: auto, manual"
    v1 = platform.twin("v1")
    assert v1["attributes"] == {"serial": "A-1", "mode": "manual"}
    assert v1["properties"] == {"flow": 1.0}
    assert platform.twin("v2")["attributes"] == {"serial": None, "mode": "manual"}
    found = platform.twins(type="valve", where="mode == 'manual' and flow > 5")
    assert [t["id"] for t in found["items"]] == ["v2"]
    assert found["items"][0]["attributes"] == {"serial": None, "mode": "manual"}
    platform.alarms.sync()
    alarms = platform.alarms.list()["items"]
    assert [(a["twin"], a["message"], a["values"]) for a in alarms] == [
        ("v2", "v2 manual", {"flow": 9.0, "mode": "manual"})
    ]


# ---- the lifecycle, journaled --------------------------------------------------------------------


def test_create_update_and_delete_twins(platform):
    platform.put_type("valve", {**VALVE, "children": ["valve"]})
    made = platform.create_twin("site", "valve", attributes={"serial": "S-1"})
    assert made["created"] is True
    assert platform.twin("site")["updated"] is None  # exists before its first observation
    with pytest.raises(Conflict):
        platform.create_twin("site", "valve")
    with pytest.raises(NotFound):
        platform.create_twin("x", "nope")
    with pytest.raises(InvalidInput) as caught:
        platform.update_twin("site", attributes={"mode": "fast"})
    assert caught.value.field == "attributes.mode" and "auto, manual" in caught.value.fix
    with pytest.raises(InvalidInput) as caught:
        platform.update_twin("site", attributes={"colour": "red"})
    assert caught.value.field == "attributes.colour"
    platform.ingest([obs("v1", T0, "valve", flow=1.0, mode="auto")])
    platform.update_twin("v1", parent="site", attributes={"mode": "manual"})
    assert platform.twin("v1")["parent"] == "site"
    assert platform.twin("v1")["attributes"]["mode"] == "manual"
    removed = platform.delete_twin("site")
    assert removed["removed"] == ["site"] and removed["purged"] is False
    assert platform.twin("v1")["parent"] is None  # children lose the link
    with pytest.raises(NotFound):
        platform.twin("site")
    platform.ingest([obs("site", T0 + 5000, "valve", flow=2.0)])  # created anew
    assert platform.twin("site")["attributes"]["serial"] is None


def test_delete_twin_purge_removes_its_stored_history(platform):
    platform.put_type("valve", VALVE)
    platform.ingest([obs(t, T0 + k, "valve", flow=float(k)) for k in range(3) for t in ("a", "b")])
    platform.snapshot()  # history stored
    kept = platform.delete_twin("a")
    assert kept["purged"] is False
    purged = platform.delete_twin("b", purge=True)
    assert purged["purged"] is True and purged["history_chunks_deleted"] >= 1
    platform.ingest([obs("b", T0 + 10, "valve", flow=7.0)])
    assert platform.history("b", ["flow"], start=T0 - 1, end=T0 + 100)["series"]["flow"] == [7.0]


def test_delete_type_needs_cascade_while_it_has_twins(platform):
    platform.put_type("valve", VALVE)
    platform.put_type("empty", {"properties": {"x": {}}})
    platform.ingest([obs("v1", T0, "valve", flow=1.0)])
    with pytest.raises(Conflict) as caught:
        platform.delete_type("valve")
    assert "cascade=true" in caught.value.fix
    assert platform.delete_type("empty")["removed"] == []
    assert platform.delete_type("valve", cascade=True)["removed"] == ["v1"]
    with pytest.raises(NotFound, match="was deleted"):
        platform.get_type("valve")
    assert platform.get_type("valve", 1)["version"] == 1  # its versions stay readable
    assert [t["name"] for t in platform.list_types()] == []
    assert platform.put_type("valve", VALVE) == {"name": "valve", "version": 2, "changed": True}


@pytest.mark.parametrize("snapshot_between", [False, True])
def test_replay_and_snapshots_reproduce_attributes_and_deletions(tmp_path, clock, snapshot_between):
    data = tmp_path / "data"
    with Platform(data, clock=clock) as p:
        p.put_type("valve", {**VALVE, "children": ["valve"]})
        p.put_type("gone", {"properties": {"x": {}}})
        p.ingest([obs("v1", T0, "valve", flow=1.0, serial="A"), obs("g", T0, "gone", x=1.0)])
        p.create_twin("site", "valve", attributes={"mode": "auto"})
        if snapshot_between:
            p.snapshot()  # the rest is the journal tail after it
        p.update_twin("v1", parent="site", attributes={"mode": "manual"})
        p.ingest([obs("v2", T0 + 1, "valve", flow=2.0), obs("v3", T0 + 1, "valve", flow=3.0)])
        p.delete_twin("v2")
        p.delete_type("gone", cascade=True)
        p.ingest([obs("v2", T0 + 2, "valve", flow=4.0, mode="auto")])  # a new v2
        live = state(p)
        p.core.writer._requested_seq = 10**9  # no final snapshot: replay the tail on restart
    with Platform(data, clock=clock) as p:
        assert state(p) == live
        assert sorted(live) == ["site", "v1", "v2", "v3"]
        assert live["v1"]["parent"] == "site"
        assert live["v2"]["properties"]["flow"] == 4.0
        p.rebuild()  # from the journal alone
        assert state(p) == live


def test_deletions_announce_each_removed_twin(platform):
    heard = []
    platform.bus.subscribe(lambda e: heard.append(e) if isinstance(e, Notice) else None)
    platform.put_type("valve", VALVE)
    platform.ingest([obs(t, T0, "valve", flow=1.0) for t in ("a", "b", "c")])
    platform.delete_twin("a")
    platform.delete_type("valve", cascade=True)
    removed = [(e.kind, e.data["twin"], e.data["type"]) for e in heard]
    assert removed == [("removed", t, "valve") for t in ("a", "b", "c")]
    assert len({e.id for e in heard}) == 3
