"""Rules as columns give exactly the raises and clears of the per-row rule engine (property-based):
random observations, late ones included, split into random batches, then the clock's `due`."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livetwin.engine import rules
from livetwin.engine.batch import Batch
from livetwin.engine.engine import Engine
from livetwin.engine.rulecolumns import RuleColumns
from livetwin.spec.types import TwinTypeSpec, compile_type

SPEC = TwinTypeSpec.model_validate(
    {
        "name": "m",
        "properties": {"a": {}, "b": {}},
        "derived": {"avg_a": "avg(a, '1m')"},
        "rules": {
            "high": {"when": "a > 5", "for": "20s"},
            "now": {"when": "b > 0"},
            "band": {"when": "a > 3 and b < 5", "clear": "a < 1", "for": "10s"},
            "warm": {"when": "avg_a > 2", "clear": "b > 8", "for": "45s"},
        },
    }
)

observation = st.tuples(
    st.integers(0, 4),  # twin
    st.integers(-1, 4).map(lambda k: 5_000 * k),  # time step (late ones too)
    st.one_of(st.none(), st.integers(-1, 9).map(float)),
    st.one_of(st.none(), st.integers(-1, 9).map(float)),
).filter(lambda o: o[2] is not None or o[3] is not None)


def _batches(rows: list[tuple], cuts: list[int]) -> list[Batch]:
    t, ts = 1_000_000, []
    for r in rows:
        t += r[1]
        ts.append(t)
    values = np.array([[np.nan if v is None else v for v in r[2:]] for r in rows]).T
    bounds = sorted({0, len(rows), *(c % (len(rows) + 1) for c in cuts)})
    return [
        Batch(
            "m",
            [f"tw{r[0]}" for r in rows[lo:hi]],
            np.array(ts[lo:hi], dtype=np.int64),
            ("a", "b"),
            values[:, lo:hi].copy(),
        )
        for lo, hi in zip(bounds, bounds[1:], strict=False)
        if hi > lo
    ]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(observation, min_size=1, max_size=60), st.lists(st.integers(0, 60), max_size=4))
def test_rule_columns_equal_the_per_row_engine(rows, cuts):
    ctype = compile_type(SPEC, 1)
    engine = Engine()
    engine.define_type(ctype)
    state, columns = rules.RuleState(), RuleColumns(ctype)

    def read(type_name, uids, names):
        return engine.states[type_name].by_uid(uids, names)

    per_row, by_columns = [], []
    for batch in _batches(rows, cuts):
        applied = engine.apply(batch)
        per_row += [
            (t.kind, t.rule, t.twin, t.at, t.since if t.kind == "raise" else 0)
            for t in rules.evaluate(state, ctype, applied, read)
            if t.kind in ("raise", "clear")
        ]
        by_columns += [
            (c.kind, c.rule, c.twin, c.at, c.since) for c in columns.evaluate(applied, read)
        ]
    end = int(engine.states["m"].last_ts.max()) + 30_000
    per_row += [(t.kind, t.rule, t.twin, t.at, t.since) for t in rules.due(state, end)]
    st = engine.states["m"]
    twin_of = lambda uids: [st.ids[r] for r in st.rows_of(uids).tolist()]  # noqa: E731
    by_columns += [(c.kind, c.rule, c.twin, c.at, c.since) for c in columns.due(end, twin_of)]
    # the same changes, in the same order for each rule and twin
    assert _by_rule_and_twin(by_columns) == _by_rule_and_twin(per_row)


def _by_rule_and_twin(changes: list[tuple]) -> dict:
    out: dict = {}
    for c in changes:
        out.setdefault((c[1], c[2]), []).append(c)
    return out


def test_a_condition_pending_across_batches_fires_once_for_has_passed():
    ctype = compile_type(SPEC, 1)
    engine = Engine()
    engine.define_type(ctype)
    columns = RuleColumns(ctype, ["high"])
    read = lambda type_name, uids, names: engine.states[type_name].by_uid(uids, names)  # noqa: E731
    changes = []
    for k in range(5):  # a > 5 every 10 s: pending at 0, raised at 20 s (the third batch)
        batch = Batch("m", ["tw0"], np.array([10_000 * k]), ("a",), np.array([[9.0]]))
        changes.append(columns.evaluate(engine.apply(batch), read))
    assert [len(c) for c in changes] == [0, 0, 1, 0, 0]
    [raised] = changes[2]
    assert (raised.kind, raised.at, raised.since) == ("raise", 20_000, 0)
