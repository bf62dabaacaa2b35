"""Window functions against brute-force references written from the sample list, with the same
bucket semantics; waves of many twins against one twin at a time; grow and snapshots.
"""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from livetwin.expr import BUCKETS, EvalContext, WindowState, compile_expression, parse_duration

B = BUCKETS
T0 = 1_700_000_000_123  # epoch ms
DUR = "1m"
DUR_MS = 60_000


class Twins:
    """A compiled expression plus its window states for `capacity` twins."""

    def __init__(self, source: str, capacity: int = 1, names=("x", "y")):
        self.compiled = compile_expression(source, names)
        self.states = self.compiled.new_states(capacity)

    def step(self, rows, ts, x, present=True, y=None):
        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        size = len(rows)
        env = {"x": np.broadcast_to(np.asarray(x, dtype=float), (size,))}
        env["y"] = np.zeros(size) if y is None else np.broadcast_to(np.asarray(y, float), (size,))
        present = np.broadcast_to(np.asarray(present, dtype=bool), (size,))
        ctx = EvalContext(
            ts=np.broadcast_to(np.asarray(ts, dtype=np.int64), (size,)),
            rows=rows,
            present={"x": present, "y": np.zeros(size, bool)},
            states=self.states,
        )
        return self.compiled.evaluate(env, ctx)


def random_feed(rng, n, dur_ms=DUR_MS, nan_share=0.1, absent_share=0.15):
    """Irregular, non-decreasing timestamps (repeats, bursts, long gaps), values, presence."""
    kind = rng.choice(6, size=n, p=[0.1, 0.05, 0.5, 0.2, 0.1, 0.05])
    small = rng.integers(1, dur_ms // B, n)
    gaps = np.choose(kind, [0, 1, small, dur_ms // 3, dur_ms, 3 * dur_ms])
    ts = T0 + np.cumsum(gaps) + rng.integers(0, 7)
    x = rng.normal(10, 5, n)
    x[rng.random(n) < nan_share] = np.nan
    present = rng.random(n) >= absent_share
    return ts.astype(np.int64), x, present


# -- references ------------------------------------------------------------------------------


def bucket_of(ts, dur_ms):
    return ts * B // dur_ms


def window_reference(func, samples, t, dur_ms):
    """func over the samples (ts, value), in feed order, whose bucket is in (b_now - B, b_now]."""
    now = bucket_of(t, dur_ms)
    inside = [(ts, v) for ts, v in samples if now - B < bucket_of(ts, dur_ms) <= now]
    values = [v for _, v in inside]
    if func == "count":
        return float(len(values))
    if func == "sum":
        return math.fsum(values)
    if not values:
        return math.nan
    if func in ("avg", "min", "max"):
        return {"avg": math.fsum(values) / len(values), "min": min(values), "max": max(values)}[
            func
        ]
    first = min(inside, key=lambda s: s[0])  # earliest; the first fed among equal timestamps
    last = max(enumerate(inside), key=lambda s: (s[1][0], s[0]))[1]  # latest; the last fed
    if func == "delta":
        return last[1] - first[1]
    seconds = (last[0] - first[0]) / 1000
    return (last[1] - first[1]) / seconds if seconds > 0 else math.nan


def time_in_reference(taken, t, dur_ms):
    """Seconds cond was true since the start of bucket b_now - B + 1; cond holds between
    consecutive taken evaluations (t_i, cond_i). Exact: times are counted in 1/B ms."""
    start = (bucket_of(t, dur_ms) - B + 1) * dur_ms
    total = 0
    for (t0, cond), (t1, _) in zip(taken, taken[1:], strict=False):
        if cond:
            total += max(0, t1 * B - max(t0 * B, start))
    return total / B / 1000


def assert_close(actual, expected, what):
    assert (math.isnan(expected) and math.isnan(actual)) or math.isclose(
        actual, expected, rel_tol=1e-9, abs_tol=1e-9
    ), f"{what}: got {actual}, expected {expected}"


# -- one twin, one row at a time, against the references ---------------------------------------


@pytest.mark.parametrize("func", ["avg", "min", "max", "sum", "count", "rate", "delta"])
@pytest.mark.parametrize("seed", range(4))
def test_duration_windows_match_reference(func, seed):
    rng = np.random.default_rng(seed)
    dur_ms = parse_duration(["1m", "10s", "1h", "500ms"][seed])
    ts, x, present = random_feed(rng, 400, dur_ms)
    twins = Twins(f"{func}(x, '{dur_ms}ms')")
    samples = []
    for i in range(len(ts)):
        if present[i] and np.isfinite(x[i]):
            samples.append((int(ts[i]), float(x[i])))
        (got,) = twins.step(0, ts[i], x[i], present[i])
        assert_close(got, window_reference(func, samples, int(ts[i]), dur_ms), f"{func} step {i}")


@pytest.mark.parametrize("seed", range(3))
def test_ewma_and_delta_match_reference(seed):
    rng = np.random.default_rng(seed)
    ts, x, present = random_feed(rng, 300)
    twins = Twins("ewma(x, 0.3) + 1000 * delta(x)")
    ewma = last = previous = math.nan
    for i in range(len(ts)):
        if present[i] and np.isfinite(x[i]):
            ewma = x[i] if math.isnan(ewma) else 0.3 * x[i] + 0.7 * ewma
            previous, last = last, x[i]
        (got,) = twins.step(0, ts[i], x[i], present[i])
        assert_close(got, ewma + 1000 * (last - previous), f"step {i}")


@pytest.mark.parametrize("seed", range(4))
def test_time_in_matches_reference(seed):
    rng = np.random.default_rng(seed)
    dur_ms = parse_duration(["1m", "10s", "1h", "90s"][seed])
    ts, x, present = random_feed(rng, 400, dur_ms)
    twins = Twins(f"time_in(x > 10, '{dur_ms}ms')")
    taken = []
    for i in range(len(ts)):
        if np.isfinite(x[i]):  # time_in ignores presence; x > 10 is NaN where x is NaN
            taken.append((int(ts[i]), x[i] > 10))
        (got,) = twins.step(0, ts[i], x[i], present[i])
        assert_close(got, time_in_reference(taken, int(ts[i]), dur_ms), f"step {i}")
        assert 0 <= got <= dur_ms / 1000


def test_time_in_holds_the_previous_condition():
    twins = Twins("time_in(x > 0, '1h')")
    steps = [(0, 1.0, 0.0), (60_000, -1.0, 60.0), (120_000, 1.0, 60.0), (150_000, 1.0, 90.0)]
    for offset, x, expected in steps:
        assert twins.step(0, T0 + offset, x).tolist() == [expected]


def test_nested_windows_feed_inner_values():
    """avg over delta(x): the outer window takes the inner value whenever x is present."""
    rng = np.random.default_rng(11)
    ts, x, present = random_feed(rng, 300)
    twins = Twins(f"avg(delta(x), '{DUR}')")
    assert [w.func for w in twins.compiled.windows] == ["delta", "avg"]
    last = previous = math.nan
    samples = []
    for i in range(len(ts)):
        if present[i] and np.isfinite(x[i]):
            previous, last = last, x[i]
        if present[i] and np.isfinite(last - previous):
            samples.append((int(ts[i]), last - previous))
        (got,) = twins.step(0, ts[i], x[i], present[i])
        assert_close(got, window_reference("avg", samples, int(ts[i]), DUR_MS), f"step {i}")


# -- the feeding rule ----------------------------------------------------------------------------


def test_a_row_without_its_names_present_takes_no_sample():
    twins = Twins("count(x, '1h') * 1000 + avg(x, '1h')")
    assert twins.step(0, T0, 5.0, present=True).tolist() == [1005.0]
    assert twins.step(0, T0 + 1, 100.0, present=False).tolist() == [1005.0]  # reported, not fed
    assert twins.step(0, T0 + 2, np.nan, present=True).tolist() == [1005.0]  # not finite
    assert twins.step(0, T0 + 3, 7.0, present=True).tolist() == [2006.0]


def test_any_present_name_of_the_inner_expression_feeds():
    compiled = compile_expression("sum(x + y, '1h')", ["x", "y"])
    states = compiled.new_states(3)
    env = {"x": np.array([1.0, 1.0, 1.0]), "y": np.array([2.0, 2.0, 2.0])}
    ctx = EvalContext(
        ts=np.full(3, T0),
        rows=np.arange(3),
        present={"x": np.array([True, False, False]), "y": np.array([False, True, False])},
        states=states,
    )
    assert compiled.evaluate(env, ctx).tolist() == [3.0, 3.0, 0.0]


def test_empty_windows_report_nan_or_zero():
    values = {
        "avg": math.nan, "min": math.nan, "max": math.nan, "rate": math.nan, "delta": math.nan,
        "sum": 0.0, "count": 0.0, "time_in": 0.0,
    }  # fmt: skip
    for func, expected in values.items():
        got = Twins(f"{func}(x, '1m')").step(0, T0, np.nan)[0]
        assert_close(got, expected, func)
    for source in ("ewma(x, 0.5)", "delta(x)"):
        assert np.isnan(Twins(source).step(0, T0, np.nan)[0])


def test_rate_and_delta_with_one_sample():
    assert np.isnan(Twins("rate(x, '1m')").step(0, T0, 4.0)[0])  # no time between: NaN
    assert Twins("delta(x, '1m')").step(0, T0, 4.0)[0] == 0.0
    assert np.isnan(Twins("delta(x)").step(0, T0, 4.0)[0])
    twins = Twins("rate(x, '1m')")
    twins.step(0, T0, 4.0)
    assert twins.step(0, T0 + 2000, 10.0)[0] == 3.0  # per second


def test_samples_leave_the_window_by_bucket():
    twins = Twins("count(x, '12s')")  # 12 buckets of one second
    t = 1_000_000_000_000  # a bucket boundary
    assert twins.step(0, t, 1.0)[0] == 1
    assert twins.step(0, t + 11_999, 1.0, present=False)[0] == 1  # still in bucket b_now - 11
    assert twins.step(0, t + 12_000, 1.0, present=False)[0] == 0  # that bucket left the window


def test_a_sample_older_than_its_slot_is_ignored():
    twins = Twins("count(x, '12s')")
    t = 1_000_000_000_000
    twins.step(0, t + 20_500, 1.0)  # bucket 20 in slot 8
    assert twins.step(0, t + 8_500, 1.0)[0] == 0  # bucket 8, slot 8 holds a newer bucket
    assert twins.step(0, t + 15_500, 1.0)[0] == 1  # bucket 15, its slot was free: counted
    assert twins.step(0, t + 20_600, 1.0)[0] == 3


# -- many twins in one wave give exactly what one twin at a time gives --------------------------


SOURCES = [
    "avg(x, '1m')", "min(x, '10s')", "max(x, '1h')", "sum(x, '1m')", "count(x, '30s')",
    "rate(x, '1m')", "delta(x, '1m')", "delta(x)", "ewma(x, 0.2)", "time_in(x > 10, '1m')",
    "avg(x, '1m') - avg(ewma(x, 0.5), '10s') + time_in(delta(x) > 0, '5m')",
]  # fmt: skip


@pytest.mark.parametrize("source", SOURCES)
def test_a_wave_of_twins_equals_one_twin_at_a_time(source):
    rng = np.random.default_rng(5)
    k, n = 40, 80
    feeds = [random_feed(rng, n) for _ in range(k)]
    wave = Twins(source, capacity=k + 3)
    alone = Twins(source, capacity=k + 3)
    order = rng.permutation(k) + 3  # twins live at scattered rows
    for j in range(n):
        got = wave.step(
            order,
            [f[0][j] for f in feeds],
            [f[1][j] for f in feeds],
            [f[2][j] for f in feeds],
        )
        expected = [alone.step(order[i], f[0][j], f[1][j], f[2][j])[0] for i, f in enumerate(feeds)]
        np.testing.assert_array_equal(got, expected)


def test_a_wave_can_hold_a_subset_of_twins():
    wave = Twins("sum(x, '1h')", capacity=5)
    wave.step([4, 1], T0, [1.0, 2.0])
    assert wave.step([1, 2, 4], T0 + 1, [10.0, 20.0, 40.0]).tolist() == [12.0, 20.0, 41.0]
    assert wave.step(np.array([], np.int64), np.array([], np.int64), []).shape == (0,)


# -- grow and snapshots --------------------------------------------------------------------------


@pytest.mark.parametrize("source", SOURCES)
def test_grow_keeps_state(source):
    rng = np.random.default_rng(9)
    ts, x, present = random_feed(rng, 120)
    small, big = Twins(source, capacity=2), Twins(source, capacity=6)
    for i in range(60):
        np.testing.assert_array_equal(
            small.step([1], ts[i], x[i], present[i]), big.step([1], ts[i], x[i], present[i])
        )
    for state in small.states:
        state.grow(6)
        assert state.capacity == 6
        state.grow(3)  # never shrinks
        assert state.capacity == 6
    for i in range(60, 120):
        rows = [1, 5]
        np.testing.assert_array_equal(
            small.step(rows, ts[i], x[i], present[i]), big.step(rows, ts[i], x[i], present[i])
        )


@pytest.mark.parametrize("source", SOURCES)
def test_snapshot_round_trip_continues_identically(source):
    rng = np.random.default_rng(13)
    ts, x, present = random_feed(rng, 150)
    original = Twins(source, capacity=3)
    for i in range(75):
        original.step([2], ts[i], x[i], present[i])
    restored = Twins(source, capacity=1)
    for i, state in enumerate(original.states):
        buffer = io.BytesIO()
        np.savez(buffer, **state.to_arrays())
        buffer.seek(0)
        with np.load(buffer) as arrays:
            spec = original.compiled.windows[i]
            loaded = dict(arrays)
            restored.states[i] = (
                spec.state_from_arrays(loaded) if i % 2 else WindowState.from_arrays(spec, loaded)
            )
        assert restored.states[i].capacity == 3
    for i in range(75, 150):
        np.testing.assert_array_equal(
            original.step([2], ts[i], x[i], present[i]), restored.step([2], ts[i], x[i], present[i])
        )


def test_snapshot_of_another_window_is_refused():
    avg = compile_expression("avg(x, '1m')", ["x"]).windows[0]
    rate = compile_expression("rate(x, '1m')", ["x"]).windows[0]
    arrays = avg.new_state(2).to_arrays()
    with pytest.raises(ValueError, match="expected arrays"):
        rate.state_from_arrays(arrays)
    arrays["sum"] = np.zeros((2, 5))
    with pytest.raises(ValueError, match="wrong shape"):
        avg.state_from_arrays(arrays)


def test_memory_does_not_depend_on_the_sampling_rate():
    twins = Twins("avg(x, '1m') + rate(x, '1h') + time_in(x > 0, '1d')", capacity=4)
    before = sum(a.nbytes for s in twins.states for a in s.to_arrays().values())
    for i in range(500):
        twins.step([0, 1, 2, 3], T0 + 149 * i, float(i % 7))
    after = sum(a.nbytes for s in twins.states for a in s.to_arrays().values())
    assert before == after


@pytest.mark.parametrize(
    ("text", "ms"),
    [("500ms", 500), ("30s", 30_000), ("10m", 600_000), ("1h", 3_600_000), ("2d", 172_800_000),
     ("1.5h", 5_400_000), (" 2 m ", 120_000)],
)  # fmt: skip
def test_parse_duration(text, ms):
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["10", "10 parsecs", "m", "-1s", "0ms", "0.1ms", "4000d", "1e3s"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_samples_older_than_the_newest_are_ignored_by_ewma_delta_and_time_in():
    ewma = Twins("ewma(x, 0.5)")
    ewma.step(0, T0 + 10_000, 2.0)
    assert ewma.step(0, T0, 100.0).tolist() == [2.0]  # older: ignored
    assert ewma.step(0, T0 + 10_000, 4.0).tolist() == [3.0]  # same time: taken
    delta = Twins("delta(x)")
    delta.step(0, T0 + 10_000, 2.0)
    assert np.isnan(delta.step(0, T0, 100.0)[0])  # still one sample
    assert delta.step(0, T0 + 20_000, 5.0).tolist() == [3.0]
    time_in = Twins("time_in(x > 0, '1h')")
    time_in.step(0, T0 + 10_000, 1.0)
    assert time_in.step(0, T0, 0.0).tolist() == [0.0]  # older: state unchanged
    assert time_in.step(0, T0 + 40_000, 0.0).tolist() == [30.0]
