"""The streaming diff of one output equals the same figures computed naively from both full
histories (property-based: unknowns and infinities included, split into random chunks)."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from livetwin.backtest.compare import OutputDiff

value = st.sampled_from([0.0, 1.0, 2.5, -3.0, math.nan, math.inf])
row = st.tuples(st.integers(1, 6), value, value)  # (twin uid, baseline, candidate)


@settings(max_examples=200, deadline=None)
@given(st.lists(row, min_size=1, max_size=40), st.lists(st.integers(0, 40), max_size=3))
def test_the_streaming_diff_equals_the_naive_one(rows, cuts):
    uids = np.array([r[0] for r in rows], dtype=np.int64)
    b = np.array([r[1] for r in rows])
    c = np.array([r[2] for r in rows])
    ts = np.arange(len(rows), dtype=np.int64) * 1000
    diff = OutputDiff("x")
    bounds = sorted({0, len(rows), *(k % (len(rows) + 1) for k in cuts)})
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        diff.add(uids[lo:hi], ts[lo:hi], b[lo:hi], c[lo:hi])

    with np.errstate(invalid="ignore"):
        gap = np.abs(c - b)
    known = ~np.isnan(b) & ~np.isnan(c)
    differ = ~((b == c) | (np.isnan(b) & np.isnan(c)))
    assert diff.compared == len(rows) and diff.differing == differ.sum()
    assert diff.both_known == known.sum()
    assert diff.only_baseline == (~np.isnan(b) & np.isnan(c)).sum()
    assert diff.only_candidate == (np.isnan(b) & ~np.isnan(c)).sum()
    counted = differ & known
    assert diff.sum_sq == np.sum(gap[counted] ** 2)
    if differ.any():
        first = np.flatnonzero(differ)[0]
        assert diff.first[:2] == (uids[first], ts[first])
        assert diff.max_abs == max(gap[counted].max(initial=0.0), 0.0)
        worst = {u: (gap[i] if known[i] else math.inf) for i, u in enumerate(uids) if differ[i]}
        for u in set(uids.tolist()):
            expected = max(
                [
                    gap[i] if known[i] else math.inf
                    for i in range(len(rows))
                    if uids[i] == u and differ[i]
                ],
                default=-1.0,
            )
            assert diff.worst.values[u] == expected
        assert set(worst) == set(np.flatnonzero(diff.worst.values >= 0).tolist())
    else:
        assert diff.first is None and diff.max_at is None
