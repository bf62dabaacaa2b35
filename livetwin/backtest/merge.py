"""One back-test report from the reports of a cluster's shards, as if one core had replayed the
whole fleet: counts add up, extremes and first divergences are the fleet's, RMS differences
combine through their counts, precision and recall are recomputed from the summed matches, and
a new output's quantiles come from the shards' samples, each value weighted by how many values
it stands for. Listed twins, alarms and examples are the fleet's worst or earliest.

The shards' reports must be made with `BacktestService.replay(..., mergeable=True)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from livetwin.backtest.compare import LISTED, TOP
from livetwin.backtest.service import PLOTTED

QUANTILES = {"p5": 0.05, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p95": 0.95}


def merge_reports(parts: dict[int, dict], plot: Iterable[str] = ()) -> dict:
    """The fleet's report from `{shard: its report}`; series are kept for the twins in `plot`
    and the fleet's worst few."""
    reports = [parts[i] for i in sorted(parts)]
    first = reports[0]
    outputs = _by_name((o for r in reports for o in r["outputs"]), "name", _output)
    rules = _by_name((x for r in reports for x in r["rules"]), "rule", _rule)
    replayed = sum(r["observations"]["replayed"] for r in reports)
    seconds = max(r["seconds"] for r in reports)
    merged = {
        "type": first["type"],
        "window": first["window"],
        "baseline_versions": sorted({v for r in reports for v in r["baseline_versions"]}),
        "candidate_run": next(
            (r["candidate_run"] for r in reports if r["candidate_run"] != "overlay"), "overlay"
        ),
        "changes": first["changes"],
        "observations": {
            key: sum(r["observations"][key] for r in reports)
            for key in ("replayed", "compared", "twins")
        },
        "identical": all(r["identical"] for r in reports),
        "outputs": outputs,
        "unchanged_outputs": [
            name
            for name in dict.fromkeys(n for r in reports for n in r["unchanged_outputs"])
            if name not in {o["name"] for o in outputs}
        ],
        "new_outputs": _by_name((d for r in reports for d in r["new_outputs"]), "name", _new),
        "removed_outputs": first["removed_outputs"],
        "rules": rules,
        "failures": _by_name((f for r in reports for f in r["failures"]), "name", _failure),
        "ignored_inputs": _sum_counts(r["ignored_inputs"] for r in reports),
        "seconds": seconds,
        "observations_per_s": round(replayed / seconds) if seconds else None,
        "cpu_seconds": round(sum(r["cpu_seconds"] for r in reports), 3),
        "after_seq": {str(i): parts[i]["after_seq"] for i in sorted(parts)},  # JSON keys
        "calibration": merge_calibration([r["calibration"] for r in reports]),
        "shards": {
            str(i): {k: parts[i][k] for k in ("observations", "seconds", "identical")}
            for i in sorted(parts)
        },
    }
    merged["series"] = _series(merged, reports, list(plot))
    return merged


def _by_name(items: Iterable[dict], key: str, merge: Callable[[list[dict]], dict]) -> list[dict]:
    """Items grouped by `key` (in order of first appearance), each group merged."""
    groups: dict[str, list[dict]] = {}
    for item in items:
        groups.setdefault(item[key], []).append(item)
    return [merge(group) for group in groups.values()]


def _sum_counts(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in counts:
        for name, n in part.items():
            total[name] = total.get(name, 0) + n
    return total


def _earliest(points: Iterable[dict | None]) -> dict | None:
    known = [p for p in points if p]
    return min(known, key=lambda p: p["ts"]) if known else None  # ISO times sort as strings


def _output(parts: list[dict]) -> dict:
    """How one output differs over the fleet."""
    known = sum(p["known_in_both"] for p in parts)
    sum_sq = sum((p["rms_diff"] or 0.0) ** 2 * p["known_in_both"] for p in parts)
    largest = max(parts, key=lambda p: -1.0 if p["max_abs_diff"] is None else p["max_abs_diff"])
    worst = sorted(
        (w for p in parts for w in p["worst_twins"]),
        key=lambda w: -np.inf if w["max_abs_diff"] is None else -w["max_abs_diff"],
    )
    return {
        "name": parts[0]["name"],
        **{key: sum(p[key] for p in parts) for key in ("compared", "differing", "twins_affected")},
        "max_abs_diff": largest["max_abs_diff"],
        "max_at": largest["max_at"],
        "rms_diff": float(np.sqrt(sum_sq / known)) if known else None,
        "first_divergence": _earliest(p["first_divergence"] for p in parts),
        "known_in_both": known,
        **{
            key: sum(p[key] for p in parts)
            for key in ("known_only_in_baseline", "known_only_in_candidate")
        },
        "worst_twins": worst[:TOP],
    }


def _new(parts: list[dict]) -> dict:
    """A new output's distribution over the fleet (the samples are dropped)."""
    known = [p for p in parts if p["known"]]
    out: dict = {
        "name": parts[0]["name"],
        "count": sum(p["count"] for p in parts),
        "known": sum(p["known"] for p in parts),
    }
    if not known:
        return out
    n = out["known"]
    mean = sum(p["mean"] * p["known"] for p in known) / n
    square = sum((p["std"] ** 2 + p["mean"] ** 2) * p["known"] for p in known) / n
    values = np.concatenate([np.asarray(p["sample"]["values"], float) for p in known])
    weights = np.concatenate(
        [np.full(len(p["sample"]["values"]), float(p["sample"]["stride"])) for p in known]
    )
    quantiles = weighted_quantiles(values, weights, list(QUANTILES.values()))
    return out | {
        "mean": mean,
        "std": float(np.sqrt(max(square - mean * mean, 0.0))),
        "min": min(p["min"] for p in known),
        "max": max(p["max"] for p in known),
        "quantiles": dict(zip(QUANTILES, quantiles, strict=True)),
    }


def weighted_quantiles(values: np.ndarray, weights: np.ndarray, qs: list[float]) -> list[float]:
    """Quantiles of values that stand for `weights` values each; with equal weights, what
    `np.quantile` gives (linear interpolation between order statistics)."""
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    ends = np.cumsum(w)  # each value covers the order statistics (ends - w, ends]
    positions = (ends - (w + 1) / 2) / max(ends[-1] - 1, 1)  # centre of each block, in [0, 1]
    return [float(np.interp(q, positions, v)) for q in qs]


def _failure(parts: list[dict]) -> dict:
    examples = sorted((e for p in parts for e in p["examples"]), key=lambda e: e["ts"])
    return {
        "name": parts[0]["name"],
        "expr": parts[0]["expr"],
        **{key: sum(p[key] for p in parts) for key in ("infinite", "unknown", "twins")},
        "examples": examples[:TOP],
    }


def _rule(parts: list[dict]) -> dict:
    """One rule's alarms over the fleet (twins are disjoint between shards: counts add up)."""
    counts = {
        key: sum(p[key] for p in parts)
        for key in (
            "baseline_alarms",
            "candidate_alarms",
            "matched",
            "would_raise",
            "never_raised",
            "cleared_differently",
        )
    }
    recorded = parts[0]["status"] != "added"
    has_candidate = parts[0]["status"] != "removed"
    matched, raised, recorded_n = (
        counts["matched"],
        counts["candidate_alarms"],
        counts["baseline_alarms"],
    )
    return {
        "rule": parts[0]["rule"],
        "status": parts[0]["status"],
        **counts,
        "precision": matched / raised if recorded and raised else None,
        "recall": matched / recorded_n if recorded and has_candidate and recorded_n else None,
        **{
            f"{kind}_alarms": sorted(
                (a for p in parts for a in p[f"{kind}_alarms"]),
                key=lambda a: (a["raised"], a["twin"]),
            )[:LISTED]
            for kind in ("would_raise", "never_raised", "cleared_differently")
        },
    }


def _series(merged: dict, reports: list[dict], plot: list[str]) -> dict:
    """The series of the twins asked for and of the fleet's worst few (each from its shard)."""
    names = [w["twin"] for o in merged["outputs"] for w in o["worst_twins"][:2]]
    names += [e["twin"] for f in merged["failures"] for e in f["examples"][:1]]
    every = {twin: s for r in reports for twin, s in r["series"].items()}
    wanted = list(dict.fromkeys(n for n in names if n in every))[:PLOTTED]
    if merged["new_outputs"] and len(wanted) < PLOTTED:
        wanted += [t for t in every if t not in wanted][: PLOTTED - len(wanted)]
    return {twin: every[twin] for twin in dict.fromkeys([*plot, *wanted]) if twin in every}


def merge_calibration(sections: list[dict | None]) -> dict | None:
    """The calibration back-test over the fleet: errors and coverage of each side combined
    through their prediction counts (exact); per parameter the twins affected added up, the
    largest difference, the RMS difference combined through the twins filtered, and the
    median band-width ratio taken as the median of the shards' medians; the shards' sections
    are kept under `shards`."""
    parts = [s for s in sections if s]
    if not parts:
        return None
    filtered = [s for s in parts if "outputs" in s]
    merged = {
        "changes": parts[0]["changes"],
        "twins": sum(s["twins"] for s in parts),
        "skipped_count": sum(s["skipped_count"] for s in parts),
        "skipped": dict(list({k: v for s in parts for k, v in s["skipped"].items()}.items())[:20]),
    }
    if not filtered:
        return merged | {"note": parts[0].get("note")}
    return merged | {
        "start": filtered[0]["start"],
        "window": filtered[0]["window"],
        "steps": max(s["steps"] for s in filtered),
        "truncated": any(s["truncated"] for s in filtered),
        "parameters": _by_name(
            (p | {"_twins": s["twins"]} for s in filtered for p in s["parameters"]),
            "name",
            _parameter,
        ),
        "outputs": _by_name((o for s in filtered for o in s["outputs"]), "name", _predicted),
        "shards": filtered,
    }


def _parameter(parts: list[dict]) -> dict:
    head = {k: v for k, v in parts[0].items() if k != "_twins"}
    if head["status"] != "both":  # a parameter only one side calibrates: its median value
        means = [p["mean"] for p in parts if p["mean"] is not None]
        return head | {"mean": float(np.median(means)) if means else None}
    known = [p for p in parts if p["rms_diff"] is not None]
    n = sum(p["_twins"] for p in known)
    ratios = [p["band_width_ratio"] for p in parts if p["band_width_ratio"] is not None]
    return head | {
        "twins_affected": sum(p["twins_affected"] for p in parts),
        "max_abs_diff": max((p["max_abs_diff"] for p in known), default=None),
        "rms_diff": float(np.sqrt(sum(p["rms_diff"] ** 2 * p["_twins"] for p in known) / n))
        if n
        else None,
        "band_width_ratio": float(np.median(ratios)) if ratios else None,
        "worst_twins": [w for p in parts for w in p["worst_twins"]][:TOP],
    }


def _predicted(parts: list[dict]) -> dict:
    """One measured output's one-step-ahead error and coverage per side over the fleet."""
    sides = {side: _prediction([p[side] for p in parts]) for side in ("baseline", "candidate")}
    b, c = sides["baseline"]["rms_error"], sides["candidate"]["rms_error"]
    better = (
        None if b is None or c is None else "equal" if b == c else "candidate" if c < b else
        "baseline"
    )  # fmt: skip
    return {"name": parts[0]["name"], **sides, "better": better}


def _prediction(parts: list[dict]) -> dict:
    n = sum(p["predictions"] for p in parts)
    counted = [p for p in parts if p["predictions"]]
    merged = dict(parts[0])
    merged["predictions"] = n
    merged["rms_error"] = (
        float(np.sqrt(sum(p["rms_error"] ** 2 * p["predictions"] for p in counted) / n))
        if n
        else None
    )
    merged["coverage_95"] = (
        sum(p["coverage_95"] * p["predictions"] for p in counted) / n if n else None
    )
    return merged
