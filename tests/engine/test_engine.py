"""The engine's wave application equals applying one observation at a time (property-based)."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livetwin.engine.batch import Batch
from livetwin.engine.engine import Engine, _waves
from livetwin.spec.types import TwinTypeSpec, compile_type

SPEC = TwinTypeSpec.model_validate(
    {
        "name": "m",
        "properties": {"a": {}, "b": {}},
        "parameters": {"k": {"value": 2.0}},
        "derived": {
            "s": "a * k + b",
            "avg_a": "avg(a, '1m')",
            "mx": "max(s, '30s')",
            "e": "ewma(b, 0.3)",
            "d": "delta(a)",
            "r": "rate(a, '2m')",
            "hot": "time_in(a > 5, '5m')",
            "n": "count(b, '1m')",
        },
    }
)

observation = st.tuples(
    st.integers(0, 5),  # twin
    st.integers(0, 30_000),  # time step (ms) since the previous observation of the batch
    st.one_of(st.none(), st.floats(-10, 10, allow_nan=False)),
    st.one_of(st.none(), st.floats(-10, 10, allow_nan=False)),
    st.one_of(st.none(), st.floats(0.5, 4, allow_nan=False)),
).filter(lambda o: o[2] is not None or o[3] is not None or o[4] is not None)


def make_batch(rows: list[tuple], t0: int) -> Batch:
    names = ("a", "b", "k")
    values = np.array([[np.nan if v is None else v for v in r[2:]] for r in rows]).T
    ts = t0 + np.cumsum([r[1] for r in rows])
    # every third observation jumps back in time: late ones must not change state
    ts = np.where(np.arange(len(rows)) % 3 == 2, ts - 40_000, ts).astype(np.int64)
    return Batch("m", [f"tw{r[0]}" for r in rows], ts, names, values.reshape(3, len(rows)))


def state_of(engine: Engine) -> dict:
    stt = engine.states["m"]
    n = len(stt)
    return {
        "ids": list(stt.ids),
        "data": stt.data[:, :n].copy(),
        "last": stt.last_ts[:n].copy(),
        "value_ts": stt.value_ts[:, :n].copy(),
        "windows": {
            k: [{a: v[:n].copy() for a, v in w.to_arrays().items()} for w in ws]
            for k, ws in stt.windows.items()
        },
    }


def assert_same(x: dict, y: dict) -> None:
    assert x["ids"] == y["ids"]
    np.testing.assert_array_equal(x["last"], y["last"])
    np.testing.assert_array_equal(x["value_ts"], y["value_ts"])
    np.testing.assert_allclose(x["data"], y["data"], rtol=1e-12, atol=1e-12, equal_nan=True)
    for name, states in x["windows"].items():
        for sx, sy in zip(states, y["windows"][name], strict=True):
            for key in sx:
                np.testing.assert_allclose(sx[key], sy[key], rtol=1e-12, equal_nan=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(observation, min_size=1, max_size=40), min_size=1, max_size=4))
def test_waves_equal_one_at_a_time(batches):
    waves, naive = Engine(), Engine()
    ctype = compile_type(SPEC, 1)
    waves.define_type(ctype)
    naive.define_type(ctype)
    t0 = 1_795_341_600_000
    out_waves, out_naive = [], []
    for k, rows in enumerate(batches):
        batch = make_batch(rows, t0 + k * 100_000)
        applied = waves.apply(batch)
        out_waves.append(applied.values)
        singles = [naive.apply(batch.take(np.array([i]))) for i in range(len(batch))]
        out_naive.append(np.vstack([s.values for s in singles]))
        np.testing.assert_array_equal(applied.fresh, [s.fresh[0] for s in singles])
    assert_same(state_of(waves), state_of(naive))
    np.testing.assert_allclose(np.vstack(out_waves), np.vstack(out_naive), equal_nan=True)


def test_waves_split_repeats_of_a_twin_in_order():
    rows = np.array([3, 1, 3, 3, 2, 1])
    assert [w.tolist() for w in _waves(rows)] == [[0, 1, 4], [2, 5], [3]]
    assert [w.tolist() for w in _waves(np.array([5, 4, 3]))] == [[0, 1, 2]]


def test_late_observation_kept_in_history_but_not_state():
    engine = Engine()
    engine.define_type(compile_type(SPEC, 1))
    t = 1_795_341_600_000
    engine.apply(make_batch([(0, 0, 1.0, 1.0, None)], t))
    late = Batch("m", ["tw0"], np.array([t - 5_000]), ("a",), np.array([[9.0]]))
    applied = engine.apply(late)
    assert not applied.fresh[0]
    assert applied.values[0, engine.states["m"].col["a"]] == 9.0  # history keeps what was sent
    assert engine.twin("tw0")["properties"]["a"] == 1.0  # state keeps the newer value


def test_a_late_parameter_is_current_unless_a_newer_one_was_set():
    """Calibration publishes parameters at its steps' times, after newer telemetry: they are
    current state (a measured property sent late is not); a parameter older than the one held
    is history only."""
    from livetwin.engine.state import export_state, import_state

    engine = Engine()
    engine.define_type(compile_type(SPEC, 1))
    t = 1_795_341_600_000
    engine.apply(make_batch([(0, 0, 1.0, 1.0, None)], t))
    engine.apply(Batch("m", ["tw0"], np.array([t + 60_000]), ("a",), np.array([[3.0]])))
    published = Batch(
        "m",
        ["tw0", "tw0"],
        np.array([t + 10_000, t + 20_000]),
        ("k", "a"),
        np.array([[2.5, 2.75], [7.0, 8.0]]),
    )
    applied = engine.apply(published)
    assert not applied.fresh.any()
    twin = engine.twin("tw0")
    assert twin["parameters"]["k"] == 2.75 and twin["properties"]["a"] == 3.0
    engine.apply(Batch("m", ["tw0"], np.array([t + 15_000]), ("k",), np.array([[9.0]])))
    assert engine.twin("tw0")["parameters"]["k"] == 2.75  # older than the value held
    st_ = engine.states["m"]
    meta, arrays = export_state(st_)
    again = import_state(st_.ctype, meta, arrays)
    np.testing.assert_array_equal(again.value_ts[:, :1], st_.value_ts[:, :1])
    del arrays["value_ts"]  # a snapshot written before stamped values: conservative
    old = import_state(st_.ctype, meta, arrays)
    assert (old.value_ts[:, 0] == old.last_ts[0]).all()


def test_batches_with_uids_replay_to_the_same_state():
    """Journaled batches carry uids; replay looks rows up by uid and must agree exactly."""
    live, replayed = Engine(), Engine()
    ctype = compile_type(SPEC, 1)
    live.define_type(ctype)
    replayed.define_type(ctype)
    rng = np.random.default_rng(5)
    t0 = 1_795_341_600_000
    for k in range(20):
        twins = rng.integers(0, 50, 30)
        rows = [
            (int(t), int(rng.integers(0, 5000)), float(rng.normal()), None, None) for t in twins
        ]
        batch = make_batch(rows, t0 + k * 60_000)
        batch.uids = live.apply(batch).uids
        replayed.apply(batch)
    assert_same(state_of(live), state_of(replayed))
    assert replayed.next_uid == live.next_uid


def test_the_uids_of_an_encoded_batch_are_read_without_decoding_it():
    from livetwin.engine.batch import batch_uids, decode_batch, encode_batch

    values = np.array([[1.0, 2.0, 3.0]])
    batch = Batch("m", ["a", "b", "a"], np.array([1, 2, 3]), ("a",), values)
    assert batch_uids(encode_batch(batch)) is None  # not journaled yet
    batch.uids, batch.attrs = np.array([7, 9, 7]), {"mode": ["x", None, "y"]}
    blob = encode_batch(batch)
    assert batch_uids(blob).tolist() == [7, 9, 7] == decode_batch(blob).uids.tolist()
