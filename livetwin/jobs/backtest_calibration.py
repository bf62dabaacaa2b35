"""Back-testing calibration settings: the type's batched filter re-run over a window's recorded
measurements under the recorded and the candidate calibration, from the same start, in memory
(nothing is published or stored), scored by how well each side predicts the recorded data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from livetwin.backtest.lockstep import Cancelled, Window
from livetwin.calibrate import choose_backend
from livetwin.calibrate.state import FilterState
from livetwin.calibrate.transforms import Z95
from livetwin.jobs.calibration import (
    MAX_STEPS,
    TypeCalibration,
    aligned_rows,
    cohort_arrays,
    filter_cohort,
    take_rows,
    too_little,
)
from livetwin.spec.types import CompiledType
from livetwin.timefmt import format_ts

WORST = 5  # twins listed per parameter
# settings that say when, where or how often the filter runs or publishes, not what it computes
NEUTRAL = ("every", "continuous", "publish_every", "workers", "model_fit_alarm")


def settings(ctype: CompiledType) -> dict | None:
    """What a calibration back-test compares: the calibration section (less `NEUTRAL`), the
    calibrated parameters and their declared values (the prior's means); None without a model."""
    plan = ctype.calibration
    if plan is None:
        return None
    section = plan.section.model_dump(mode="json", exclude=set(NEUTRAL))
    model = ctype.spec.model.model_dump(mode="json", exclude={"units", "virtual"})  # ref, dt
    section |= {f"model.{k}": v for k, v in model.items()}
    declared = {p: ctype.spec.parameters[p].value for p in plan.parameters}
    return {"section": section, "parameters": list(plan.parameters), "values": declared}


def changed_settings(recorded: CompiledType, candidate: CompiledType) -> list[str]:
    """The calibration settings the candidate changes that change what the filter computes
    (empty: it would run the same)."""
    before, after = settings(recorded), settings(candidate)
    if before is None or after is None:
        return []
    names = [
        k if k.startswith("model.") else f"calibration.{k}"
        for k in before["section"]
        if before["section"][k] != after["section"].get(k)
    ]
    if before["parameters"] != after["parameters"]:
        names.append("calibrated parameters")
    if before["values"] != after["values"]:
        names.append("parameter values (prior means)")
    return names


def backtest_calibration(
    reader: Any,
    store: Any,
    recorded: CompiledType,
    candidate: CompiledType,
    window: Window,
    uids: np.ndarray | None,
    *,
    cancelled: Callable[[], bool] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict | None:
    """The report's `calibration` section, or None when the candidate calibrates as recorded."""
    changes = changed_settings(recorded, candidate)
    if not changes:
        return None
    type_name = recorded.name
    _, ids, all_uids, _, current = reader.type_rows(
        type_name, lambda c: list(c.calibration.model.params)
    )
    rows = np.arange(len(ids)) if uids is None else np.flatnonzero(np.isin(all_uids, uids))
    sides = {"baseline": recorded, "candidate": candidate}
    data, skipped = {}, {}
    for side, ctype in sides.items():
        plan = ctype.calibration
        data[side] = []
        for i in rows:
            aligned = aligned_rows(
                reader, type_name, plan, int(all_uids[i]), window.start, window.end - 1
            )
            data[side].append(aligned)
            problem = too_little(aligned, plan)
            if problem:
                skipped[ids[i]] = problem
    keep = [j for j, i in enumerate(rows) if ids[i] not in skipped]
    section: dict = {
        "changes": changes,
        "twins": len(keep),
        "skipped": dict(list(skipped.items())[:20]),
        "skipped_count": len(skipped),
    }
    if not keep:
        return section | {"note": "no twin has enough measurements in the window to filter"}
    twins = [ids[rows[j]] for j in keep]
    start_state, section["start"] = _start(store, recorded, candidate, twins, window)
    results = {}
    for side, ctype in sides.items():
        aligned = [data[side][j] for j in keep]
        calibrated = ctype.calibration.parameters  # the prior's means: the declared values
        params = {
            name: np.full(len(keep), float(ctype.spec.parameters[name].value))
            if name in calibrated
            else current[name][rows[keep]]
            for name in current
        }
        log(f"calibration back-test: filtering {len(twins)} twins under the {side} settings")
        results[side] = _run_side(ctype, aligned, params, start_state, cancelled)
    first, steps = results["baseline"]["first"], results["baseline"]["steps"]
    dt = recorded.calibration.dt_ms
    section |= {
        "window": {"from": format_ts(first * dt), "to": format_ts((first + steps) * dt)},
        "steps": steps,
        "truncated": any(r["truncated"] for r in results.values()),
        **{side: r["speed"] for side, r in results.items()},
        "parameters": _parameters(results, twins),
        "outputs": _outputs(results),
        "fit": {side: r["fit"] for side, r in results.items()},
    }
    return section


def _start(store, recorded, candidate, twins, window) -> tuple[FilterState | None, str]:
    """The persisted filter rows of `twins` when every one was calibrated only up to before the
    window and both sides can resume them; else None (the prior)."""
    blob = store.calibration_state(recorded.name)
    if blob is None:
        return None, "prior (no persisted filter state)"
    saved = TypeCalibration.from_bytes(blob)
    if not all(t in saved.ids for t in twins):
        return None, "prior (not every twin has a persisted filter state)"
    rows = [saved.ids.index(t) for t in twins]
    until = int(saved.last_ts[rows].max())
    if until >= window.start:
        return None, "prior (the persisted filter state is newer than from)"
    for ctype in (recorded, candidate):
        plan = ctype.calibration
        names = tuple(plan.parameters) + tuple(plan.model.states)
        if (saved.state.names, saved.state.kind) != (names, plan.section.estimator):
            return None, "prior (the persisted filter state has other variables or estimator)"
    return take_rows(
        saved.state, rows
    ), f"persisted filter state (calibrated until {format_ts(until)})"


def _run_side(ctype, aligned, params, state, cancelled) -> dict:
    """One side's filter run over the window: one-step-ahead scores and the final posterior."""
    plan = ctype.calibration
    first = min(int(a.buckets[0]) for a in aligned)
    inputs, measured, _ = cohort_arrays(plan, aligned, first, MAX_STEPS)
    m = len(plan.measured)
    sq, count, inside = np.zeros(m), np.zeros(m, dtype=np.int64), np.zeros(m, dtype=np.int64)
    last: dict = {}

    def score(k: int, result, fit: dict) -> None:
        if cancelled is not None and cancelled():
            raise Cancelled("cancelled")
        e, var = result.innovation, result.innovation_var
        ok = np.isfinite(e) & np.isfinite(var)
        e0 = np.where(ok, e, 0.0)
        sq[:] += (e0 * e0).sum(axis=0)
        count[:] += ok.sum(axis=0)
        inside[:] += (ok & (np.abs(e0) <= Z95 * np.sqrt(np.where(ok, var, 0.0)))).sum(axis=0)
        last.update(result=result, fit=fit)

    backend = choose_backend(plan.model, plan.section.estimator, plan.section.backend)
    started = time.perf_counter()
    filt, final = filter_cohort(
        ctype,
        plan,
        params,
        inputs,
        measured,
        backend,
        None if state is None else state.copy(),
        score,
    )
    seconds = time.perf_counter() - started
    compile_s = float(getattr(filt, "compile_wait_s", 0.0))  # a compiled backend's first use
    filtering = seconds - compile_s
    result, fit = last["result"], last["fit"]
    n = len(aligned)
    with np.errstate(invalid="ignore", divide="ignore"):
        outputs = {
            name: {
                "rms_error": _number(np.sqrt(sq[j] / count[j])) if count[j] else None,
                "coverage_95": _number(inside[j] / count[j]) if count[j] else None,
                "predictions": int(count[j]),
            }
            for j, name in enumerate(plan.measured)
        }
    return {
        "first": first,
        "steps": len(inputs),
        "truncated": max(int(a.buckets[-1]) for a in aligned) >= first + len(inputs),
        "speed": {
            "steps": len(inputs),
            "backend": backend,
            "estimator": plan.section.estimator,
            "seconds": round(seconds, 3),
            "compile_s": round(compile_s, 3),
            "filter_steps_per_s": round(len(inputs) * n / filtering) if filtering > 0 else None,
            "obs_per_s": round(np.isfinite(measured).sum() / filtering) if filtering > 0 else None,
        },
        "params": {p: result.param(p) for p in plan.parameters},
        "outputs": outputs,
        "fit": {
            "model_no_longer_fits": int(np.sum(fit["model_fit"] == 0)),
            "nis_median": _number(np.nanmedian(fit["nis"]))
            if np.isfinite(fit["nis"]).any()
            else None,
            "failed": int(final.failed.sum()),
        },
    }


def _parameters(results: dict, twins: list[str]) -> list[dict]:
    """Per calibrated parameter: final means and 95 % bands, baseline against candidate."""
    base, cand = results["baseline"]["params"], results["candidate"]["params"]
    out = []
    for name in dict.fromkeys([*base, *cand]):
        if name not in base or name not in cand:
            side = "candidate" if name in cand else "baseline"
            stats = (cand if name in cand else base)[name]
            out.append(
                {
                    "name": name,
                    "status": f"only in {side}",
                    "mean": _number(np.nanmedian(stats["mean"])),
                }
            )
            continue
        b, c = base[name], cand[name]
        diff = c["mean"] - b["mean"]
        differs = ~np.isclose(c["mean"], b["mean"], rtol=1e-9, atol=0.0, equal_nan=True)
        known = np.isfinite(diff)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = (c["upper"] - c["lower"]) / (b["upper"] - b["lower"])
        order = np.argsort(-np.where(known, np.abs(diff), -1.0))[:WORST]
        out.append(
            {
                "name": name,
                "status": "both",
                "twins_affected": int(differs.sum()),
                "max_abs_diff": _number(np.abs(diff[known]).max()) if known.any() else None,
                "rms_diff": _number(np.sqrt(np.mean(diff[known] ** 2))) if known.any() else None,
                "band_width_ratio": _number(np.nanmedian(ratio))
                if np.isfinite(ratio).any()
                else None,
                "worst_twins": [
                    {"twin": twins[i], "baseline": _band(b, i), "candidate": _band(c, i)}
                    for i in order
                    if differs[i]
                ],
            }
        )
    return out


def _outputs(results: dict) -> list[dict]:
    """Per measured output: each side's one-step-ahead RMS error and 95 % coverage."""
    base, cand = results["baseline"]["outputs"], results["candidate"]["outputs"]
    out = []
    for name in base:
        if name not in cand:
            continue
        b, c = base[name]["rms_error"], cand[name]["rms_error"]
        better = (
            None
            if b is None or c is None
            else "equal"
            if b == c
            else "candidate"
            if c < b
            else "baseline"
        )
        out.append(
            {"name": name, "baseline": base[name], "candidate": cand[name], "better": better}
        )
    return out


def _band(stats: dict, i: int) -> dict:
    return {k: _number(stats[k][i]) for k in ("mean", "lower", "upper")}


def _number(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None
