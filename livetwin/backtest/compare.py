"""Streaming accumulators of a back-test: how an output differs between baseline and candidate,
what a new output's values look like, where an expression fails, which alarms each side raised.

Each accumulator sees the observations of one applied chunk at a time (arrays, never a loop
over rows) and keeps a fixed amount of memory per twin, whatever the length of the window.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from livetwin.engine.engine import json_number
from livetwin.timefmt import format_ts

TOP = 10  # worst twins and examples listed per output
LISTED = 100  # alarms listed per rule and kind (counts are always complete)
SAMPLE = 100_000  # values kept to summarise a new output's distribution

TwinOf = Callable[[np.ndarray], list[str]]  # uids -> twin ids


class PerTwin:
    """One float per twin uid (grown on demand), starting at `fill`."""

    def __init__(self, fill: float) -> None:
        self.fill = fill
        self.values = np.full(64, fill)

    def at(self, uids: np.ndarray) -> np.ndarray:
        if len(uids) and uids.max() >= len(self.values):
            grown = np.full(2 * int(uids.max()) + 1, self.fill)
            grown[: len(self.values)] = self.values
            self.values = grown
        return self.values

    def maximum(self, uids: np.ndarray, x: np.ndarray) -> None:
        np.maximum.at(self.at(uids), uids, x)

    def add(self, uids: np.ndarray, x: np.ndarray) -> None:
        np.add.at(self.at(uids), uids, x)


def _point(twin_of: TwinOf, uid: int, ts: int, **values: float) -> dict:
    return {
        "twin": twin_of(np.array([uid]))[0],
        "ts": format_ts(int(ts)),
        **{k: json_number(v) for k, v in values.items()},
    }


class OutputDiff:
    """How one output (a derived value both sides have) differs, observation by observation.

    Two values differ unless they are equal or both unknown (NaN). `max_abs` and `rms` are over
    the observations where both are known; a value known on one side only is counted apart.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.compared = self.differing = self.both_known = 0
        self.only_baseline = self.only_candidate = 0
        self.sum_sq = 0.0
        self.max_abs = -1.0
        self.max_at: tuple | None = None
        self.first: tuple | None = None
        self.worst = PerTwin(-1.0)  # per twin: largest |difference| (inf: known on one side)

    def same(self, n: int) -> None:
        """`n` observations the two sides computed once (equal by construction)."""
        self.compared += n

    def add(self, uids: np.ndarray, ts: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
        self.compared += len(b)
        nan_b, nan_c = np.isnan(b), np.isnan(c)
        if nan_b.any() or nan_c.any():
            known = ~(nan_b | nan_c)
            differ = (b != c) & (known | (nan_b != nan_c))  # two unknowns are equal
            self.only_baseline += int(np.count_nonzero(nan_c & ~nan_b))
            self.only_candidate += int(np.count_nonzero(nan_b & ~nan_c))
        else:  # the common case: both known everywhere
            known, differ = None, b != c
        self.both_known += len(b) if known is None else int(np.count_nonzero(known))
        at = np.flatnonzero(differ)
        if not len(at):
            return
        self.differing += len(at)
        # only differing observations add to the sums: |c - b| where both are known, else inf
        if len(at) < len(b):
            uids, ts, b, c = uids[at], ts[at], b[at], c[at]
            known = None if known is None else known[at]
        gap = np.abs(c - b)
        if known is None:
            finite_gap, worst = gap, gap
        else:
            finite_gap, worst = np.where(known, gap, 0.0), np.where(known, gap, np.inf)
        self.sum_sq += float(np.dot(finite_gap, finite_gap))
        self.worst.maximum(uids, worst)
        first = int(np.argmin(ts))
        if self.first is None or ts[first] < self.first[1]:
            self.first = (int(uids[first]), int(ts[first]), b[first], c[first])
        p = int(np.argmax(finite_gap))
        if finite_gap[p] > self.max_abs:
            self.max_abs = float(finite_gap[p])
            self.max_at = (int(uids[p]), int(ts[p]), b[p], c[p])

    def report(self, twin_of: TwinOf) -> dict:
        values = self.worst.values
        affected = np.flatnonzero(values >= 0)
        top = affected[np.argsort(-values[affected], kind="stable")[:TOP]]
        return {
            "name": self.name,
            "compared": self.compared,
            "differing": self.differing,
            "twins_affected": len(affected),
            "max_abs_diff": self.max_abs if self.max_at else None,
            "max_at": self.max_at
            and _point(
                twin_of, *self.max_at[:2], baseline=self.max_at[2], candidate=self.max_at[3]
            ),
            "rms_diff": float(np.sqrt(self.sum_sq / self.both_known)) if self.both_known else None,
            "first_divergence": self.first
            and _point(twin_of, *self.first[:2], baseline=self.first[2], candidate=self.first[3]),
            "known_in_both": self.both_known,
            "known_only_in_baseline": self.only_baseline,
            "known_only_in_candidate": self.only_candidate,
            "worst_twins": [
                {"twin": t, "max_abs_diff": json_number(values[u])}
                for t, u in zip(twin_of(top), top.tolist(), strict=True)
            ],
        }


class Distribution:
    """A new output's values: count, mean, spread, extremes and quantiles (from an evenly
    thinned sample of at most `SAMPLE` values, so memory stays fixed)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = self.known = 0
        self.total = self.total_sq = 0.0
        self.low, self.high = np.inf, -np.inf
        self.sample = np.empty(0)
        self.stride = 1
        self._skip = 0

    def add(self, values: np.ndarray) -> None:
        self.count += len(values)
        x = values[np.isfinite(values)]
        if not len(x):
            return
        self.known += len(x)
        self.total += float(x.sum())
        self.total_sq += float(np.dot(x, x))
        self.low, self.high = min(self.low, float(x.min())), max(self.high, float(x.max()))
        kept = x[self._skip :: self.stride]
        self._skip = (self._skip - len(x)) % self.stride
        self.sample = np.concatenate([self.sample, kept])
        while len(self.sample) > SAMPLE:
            self.sample, self.stride = self.sample[::2], self.stride * 2

    def report(self, sample: bool = False) -> dict:
        """The summary; with `sample`, also the thinned sample and the number of values each
        of its values stands for (what merging shards' distributions needs)."""
        out: dict = {"name": self.name, "count": self.count, "known": self.known}
        if sample:
            out["sample"] = {"values": self.sample.copy(), "stride": self.stride}
        if self.known:
            mean = self.total / self.known
            q = np.quantile(self.sample, [0.05, 0.25, 0.5, 0.75, 0.95]).tolist()
            out.update(
                mean=mean,
                std=float(np.sqrt(max(self.total_sq / self.known - mean * mean, 0.0))),
                min=self.low,
                max=self.high,
                quantiles=dict(zip(("p5", "p25", "p50", "p75", "p95"), q, strict=True)),
            )
        return out


class Failures:
    """Where a candidate expression gave no number on recorded data: infinite (division by zero
    or overflow) or unknown (a value never reported, or an invalid operation such as 0/0)."""

    def __init__(self, name: str, expr: str) -> None:
        self.name, self.expr = name, expr
        self.infinite = self.unknown = 0
        self.twins = PerTwin(0.0)
        self.examples: list[dict] = []

    def add(self, uids, ts, values, explain: Callable[[int, int], dict], twin_of: TwinOf) -> None:
        bad = ~np.isfinite(values)
        if not bad.any():
            return
        at = np.flatnonzero(bad)
        inf = np.isinf(values[at])
        self.infinite += int(inf.sum())
        self.unknown += int((~inf).sum())
        self.twins.add(uids[at], np.ones(len(at)))
        for p in at[: max(0, TOP - len(self.examples))].tolist():
            kind = "infinite" if np.isinf(values[p]) else "unknown"
            self.examples.append(
                {
                    **_point(twin_of, int(uids[p]), int(ts[p]), value=values[p]),
                    "problem": kind,
                    **explain(p, int(uids[p])),
                }
            )

    def report(self) -> dict | None:
        if not (self.infinite or self.unknown):
            return None
        return {
            "name": self.name,
            "expr": self.expr,
            "infinite": self.infinite,
            "unknown": self.unknown,
            "twins": int((self.twins.values > 0).sum()),
            "examples": self.examples,
        }


@dataclass
class Alarm:
    """One raise-clear lifecycle a side's rule went through in the window."""

    twin: str
    since: int
    raised: int
    cleared: int | None = None

    def public(self) -> dict:
        return {
            "twin": self.twin,
            "since": format_ts(self.since),
            "raised": format_ts(self.raised),
            "cleared": None if self.cleared is None else format_ts(self.cleared),
        }


@dataclass
class Alarms:
    """The alarms one side's rule raised with `raised` in [start, end), and their clears."""

    start: int
    end: int
    alarms: list[Alarm] = field(default_factory=list)
    open: dict[str, Alarm] = field(default_factory=dict)  # twin -> its open alarm

    def add(self, kind: str, twin: str, at: int, since: int) -> None:
        if kind == "raise" and self.start <= at < self.end:
            alarm = self.open[twin] = Alarm(twin, since, at)
            self.alarms.append(alarm)
        elif kind == "clear":
            alarm = self.open.pop(twin, None)
            if alarm is not None:
                alarm.cleared = at


def compare_alarms(name: str, status: str, base: Alarms | None, cand: Alarms | None) -> dict:
    """One rule's alarms on both sides: those only the candidate raises, those it never raises,
    those both raise but clear at different times; precision and recall of the candidate
    against the recorded (baseline) alarms where the recorded versions have the rule. Two
    alarms of a twin match when their [since, cleared) spans overlap (one match each)."""
    b_list = base.alarms if base else []
    c_list = cand.alarms if cand else []
    matched: list[tuple[Alarm, Alarm]] = []
    by_twin: dict[str, list[Alarm]] = {}
    for a in b_list:
        by_twin.setdefault(a.twin, []).append(a)
    used: set[int] = set()
    extra: list[Alarm] = []
    far = 2**62
    for c in c_list:
        match = next(
            (
                b
                for b in by_twin.get(c.twin, ())
                if id(b) not in used
                and b.since < (c.cleared or far)
                and c.since < (b.cleared or far)
            ),
            None,
        )
        if match is None:
            extra.append(c)
        else:
            used.add(id(match))
            matched.append((match, c))
    missed = [b for b in b_list if id(b) not in used]
    cleared = [
        {**c.public(), "baseline_cleared": None if b.cleared is None else format_ts(b.cleared)}
        for b, c in matched
        if b.cleared != c.cleared
    ]
    recorded = base is not None
    return {
        "rule": name,
        "status": status,
        "baseline_alarms": len(b_list),
        "candidate_alarms": len(c_list),
        "matched": len(matched),
        "would_raise": len(extra),
        "never_raised": len(missed),
        "cleared_differently": len(cleared),
        "precision": len(matched) / len(c_list) if recorded and c_list else None,
        "recall": len(matched) / len(b_list) if recorded and cand and b_list else None,
        "would_raise_alarms": [a.public() for a in extra[:LISTED]],
        "never_raised_alarms": [a.public() for a in missed[:LISTED]],
        "cleared_differently_alarms": cleared[:LISTED],
    }
