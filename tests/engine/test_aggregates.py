"""Aggregates over children in the engine: parents follow their children's batches, links
changes, missing values, several child types, nested parents, rules, snapshots and replay."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livetwin.engine import rules
from livetwin.engine.batch import Batch
from livetwin.engine.engine import Engine
from livetwin.engine.state import export_state, import_state
from livetwin.journal.replay import replay
from livetwin.query import Query
from livetwin.spec.types import TwinTypeSpec, compile_type
from livetwin.store.buffer import HistoryBuffer
from livetwin.store.history import assemble

STATION = {
    "name": "station",
    "properties": {"level": {}},
    "children": ["pump", "valve"],
    "derived": {
        "total": "sum(children.flow)",
        "mean": "avg(children.flow)",
        "low": "min(children.flow)",
        "high": "max(children.flow)",
        "reporting": "count(children.flow)",
        "members": "count(children)",
        "pumps": "count(children.pump)",
        "busy": "count(children.where(flow > 5))",
        "busy_temp": "avg(children.pump.where(flow > 5).temp)",
        "per_level": "total / level",
    },
    "rules": {"dry": {"when": "busy == 0 and members > 0"}},
}
PUMP = {"name": "pump", "properties": {"flow": {}, "temp": {}}}
VALVE = {"name": "valve", "properties": {"flow": {}, "open": {}}}
SITE = {
    "name": "site",
    "properties": {"area": {}},
    "children": ["station"],
    "derived": {"site_total": "sum(children.total)", "stations": "count(children)"},
}


def ctype(spec: dict, version: int = 1):
    return compile_type(TwinTypeSpec.model_validate(spec), version)


def fleet(specs=(SITE, STATION, PUMP, VALVE)) -> Engine:
    engine = Engine()
    for spec in specs:
        engine.define_type(ctype(spec))
    return engine


def batch(type_name, twins, ts, parents=None, **values) -> Batch:
    names = tuple(values)
    rows = np.array([values[n] for n in names], dtype=float).reshape(len(names), len(twins))
    return Batch(type_name, list(twins), np.asarray(ts, dtype=np.int64), names, rows, parents)


def reference(engine: Engine, parent_type: str, twin: str) -> dict[str, float]:
    """The station's aggregates computed one child at a time in Python."""
    flows, temps_busy, members, pumps = [], [], 0, 0
    for child_type in ("pump", "valve"):
        cst = engine.states.get(child_type)
        if cst is None:
            continue
        for row, parent in enumerate(cst.parents):
            if parent != twin:
                continue
            members += 1
            pumps += child_type == "pump"
            flow = cst.data[cst.col["flow"], row]
            flows.append(flow)
            if child_type == "pump" and flow > 5 and not math.isnan(cst.data[cst.col["temp"], row]):
                temps_busy.append(cst.data[cst.col["temp"], row])
    known = [f for f in flows if not math.isnan(f)]
    nan = float("nan")
    return {
        "total": sum(known) if known else nan,
        "mean": sum(known) / len(known) if known else nan,
        "low": min(known) if known else nan,
        "high": max(known) if known else nan,
        "reporting": float(len(known)),
        "members": float(members),
        "pumps": float(pumps),
        "busy": float(sum(f > 5 for f in known)),
        "busy_temp": sum(temps_busy) / len(temps_busy) if temps_busy else nan,
    }


def assert_current(engine: Engine) -> None:
    st_ = engine.states["station"]
    for twin in st_.ids:
        got = engine.twin(twin)["derived"]
        for name, want in reference(engine, "station", twin).items():
            have = got[name]
            if math.isnan(want):
                assert have is None, (twin, name, have)
            else:
                assert have == pytest.approx(want), (twin, name, have, want)


def test_parents_follow_their_childrens_batches():
    engine = fleet()
    engine.apply(batch("station", ["s1", "s2"], [1, 1], level=[2.0, 4.0]))
    applied = engine.apply(
        batch("pump", ["p1", "p2", "p3"], [2, 3, 4], ["s1", "s1", "s2"], flow=[3, 7, np.nan])
    )
    s1 = engine.twin("s1")["derived"]
    assert s1["total"] == 10 and s1["mean"] == 5 and s1["low"] == 3 and s1["high"] == 7
    assert s1["reporting"] == 2 and s1["members"] == 2 and s1["busy"] == 1
    assert s1["per_level"] == 5  # a derived value over an aggregate and the parent's own input
    s2 = engine.twin("s2")["derived"]  # its one pump has no flow yet: missing values are left out
    assert s2["total"] is None and s2["reporting"] == 0 and s2["members"] == 1
    [update] = applied.parents
    assert update.type == "station" and update.twins == ["s1", "s2"]
    assert update.ts.tolist() == [3, 4]  # the newest child observation of each
    col = engine.states["station"].col
    assert np.isnan(update.values[:, col["level"]]).all()  # inputs: not observed
    assert update.values[0, col["total"]] == 10
    assert_current(engine)


def test_only_child_types_with_the_names_contribute():
    spec = {**STATION, "derived": {"open_valves": "count(children.where(open > 0))"}, "rules": {}}
    engine = fleet((spec, PUMP, VALVE))
    engine.apply(batch("station", ["s1"], [1], level=[1.0]))
    engine.apply(batch("pump", ["p1"], [2], ["s1"], flow=[4], temp=[1]))
    engine.apply(batch("valve", ["v1", "v2"], [2, 2], ["s1", "s1"], flow=[1, 1], open=[1, 0]))
    assert engine.twin("s1")["derived"]["open_valves"] == 1  # pumps have no 'open'


def test_a_parent_observation_reads_the_current_aggregates():
    engine = fleet()
    engine.apply(batch("station", ["s1"], [1], level=[1.0]))
    engine.apply(batch("pump", ["p1", "p2"], [2, 2], ["s1", "s1"], flow=[4, 6]))
    engine.apply(batch("station", ["s1"], [3], level=[5.0]))
    assert engine.twin("s1")["derived"]["per_level"] == 2.0


def test_moving_a_child_updates_both_parents_and_a_new_parent_starts_empty():
    engine = fleet()
    engine.apply(batch("station", ["s1", "s2", "s3"], [1, 1, 1], level=[1.0, 1.0, 1.0]))
    engine.apply(batch("pump", ["p1", "p2"], [2, 2], ["s1", "s1"], flow=[4, 6]))
    applied = engine.apply(batch("pump", ["p2"], [3], ["s2"], flow=[8]))
    assert engine.twin("s1")["derived"]["total"] == 4
    assert engine.twin("s2")["derived"]["total"] == 8
    assert sorted(applied.parents[0].twins) == ["s1", "s2"]
    assert engine.twin("s3")["derived"]["members"] == 0
    assert engine.twin("s3")["derived"]["total"] is None
    assert_current(engine)


def test_nested_parents_follow_through_types():
    engine = fleet()
    engine.apply(batch("site", ["north"], [0], area=[1.0]))
    engine.apply(batch("station", ["s1", "s2"], [1, 1], ["north", "north"], level=[1.0, 1.0]))
    applied = engine.apply(batch("pump", ["p1", "p2"], [2, 2], ["s1", "s2"], flow=[4, 6]))
    assert [a.type for a in applied.parents] == ["station", "site"]
    assert engine.twin("north")["derived"] == {"site_total": 10.0, "stations": 2.0}
    engine.apply(batch("valve", ["v1"], [3], ["s2"], flow=[5]))
    assert engine.twin("north")["derived"]["site_total"] == 15.0


def test_a_type_change_recomputes_aggregates_for_all_parents():
    engine = fleet((PUMP,))
    plain = {**STATION, "derived": {}, "rules": {}}
    engine.define_type(ctype(plain))
    engine.apply(batch("station", ["s1"], [1], level=[1.0]))
    engine.apply(batch("pump", ["p1", "p2"], [2, 2], ["s1", "s1"], flow=[4, 6]))
    engine.define_type(ctype(STATION, 2))  # the aggregates arrive after the children
    assert engine.twin("s1")["derived"]["total"] == 10
    engine.define_type(ctype(VALVE))  # a new child type: no twins yet, nothing changes
    assert_current(engine)


def test_a_restored_state_recomputes_its_aggregates():
    engine = fleet()
    engine.apply(batch("station", ["s1"], [1], level=[1.0]))
    engine.apply(batch("pump", ["p1", "p2"], [2, 2], ["s1", "s1"], flow=[4, 6]))
    copy = Engine()
    for name, state in engine.states.items():
        meta, arrays = export_state(state)
        copy.states[name] = import_state(state.ctype, meta, arrays)
    copy.type_of = dict(engine.type_of)
    copy.apply(batch("pump", ["p1"], [3], flow=[1]))
    assert copy.twin("s1")["derived"]["total"] == 7
    assert copy.twin("s1")["derived"]["high"] == 6


def test_rules_on_the_parent_see_the_aggregate():
    engine = fleet()
    state = rules.RuleState()
    station = engine.states["station"].ctype
    engine.apply(batch("station", ["s1"], [1], level=[1.0]))

    def read(type_name, uids, names):
        return engine.states[type_name].by_uid(uids, names)

    def transitions(applied):
        return [
            (t.kind, t.twin)
            for a in applied.all()
            if a.type == "station"
            for t in rules.evaluate(state, station, a, read)
        ]

    assert transitions(engine.apply(batch("pump", ["p1"], [2], ["s1"], flow=[9]))) == []
    assert transitions(engine.apply(batch("pump", ["p1"], [3], flow=[1]))) == [
        ("pending", "s1"),
        ("raise", "s1"),
    ]
    assert transitions(engine.apply(batch("pump", ["p1"], [4], flow=[7]))) == [("clear", "s1")]


observation = st.tuples(
    st.sampled_from(["pump", "valve"]),
    st.integers(0, 7),  # child
    st.sampled_from([None, None, "s0", "s1", "s2"]),  # a new parent, mostly none
    st.one_of(st.none(), st.floats(0, 10, allow_nan=False)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(observation, min_size=1, max_size=12), min_size=1, max_size=6))
def test_aggregates_equal_a_reference_after_any_batches(batches):
    engine = fleet((STATION, PUMP, VALVE))
    engine.apply(batch("station", ["s0", "s1", "s2"], [0, 0, 0], level=[1.0, 2.0, 3.0]))
    ts = 1
    for rows in batches:
        for type_name in ("pump", "valve"):
            mine = [r for r in rows if r[0] == type_name]
            if not mine:
                continue
            twins = [f"{type_name}{r[1]}" for r in mine]
            parents = [r[2] for r in mine]
            flow = [np.nan if r[3] is None else r[3] for r in mine]
            values = (
                {"flow": flow, "temp": [20.0] * len(mine)}
                if type_name == "pump"
                else {"flow": flow}
            )
            times = list(range(ts, ts + len(mine)))
            ts += len(mine)
            engine.apply(batch(type_name, twins, times, parents, **values))
    assert_current(engine)


def test_replay_of_the_journal_gives_the_same_parents(tmp_path):
    from livetwin.core import TwinCore

    T0 = 1_795_341_600_000
    with TwinCore.open(tmp_path / "data") as core:
        for spec in (SITE, STATION, PUMP):
            core.put_type(spec["name"], {k: v for k, v in spec.items() if k != "name"})
        core.ingest([{"twin": "north", "type": "site", "ts": T0, "values": {"area": 1}}])
        core.ingest(
            [
                {
                    "twin": s,
                    "type": "station",
                    "ts": T0 + 1,
                    "parent": "north",
                    "values": {"level": 2},
                }
                for s in ("s1", "s2")
            ]
        )
        for k in range(20):
            core.ingest(
                [
                    {
                        "twin": f"p{k % 5}",
                        "type": "pump",
                        "ts": T0 + 10 + k,
                        "parent": f"s{1 + k % 2}",
                        "values": {"flow": float(k), "temp": 20.0},
                    }
                ]
            )
        live = {t: dict(core.engine.twin(t)["derived"]) for t in ("north", "s1", "s2")}
        journal = list(core.store.journal(after=0))
        names = ["total", "members", "level"]
        uid = int(core.engine.states["station"].uid[core.engine.states["station"].index["s1"]])
        live_rows = Query(core).history_rows(uid, "station", names, 0, 2**62)
        columns_of = core.layout
    engine, rebuilt = Engine(), HistoryBuffer(0)
    replay(engine, journal, history=rebuilt)
    assert {t: engine.twin(t)["derived"] for t in live} == live
    again = assemble(rebuilt.rows_of(uid), names, lambda v: columns_of("station", v)[0])
    assert len(live_rows[0]) == 19  # its own observation, then a row per pump batch that
    # changed its children (pumps move between s1 and s2)
    for have, want in zip(again, live_rows, strict=True):
        np.testing.assert_array_equal(have, want)
    assert live["north"]["site_total"] == sum(range(15, 20))  # the newest flow of each pump
