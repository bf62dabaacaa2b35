"""A back-test report's short forms: the summary a run's result and the CLI show, and CSV."""

from __future__ import annotations

import csv
import io

CSV_COLUMNS = ("kind", "name", "twin", "time", "value", "detail")


def summary(report: dict) -> dict:
    """The gist of a report (what a run's result and the CLI show)."""
    return {
        "backtest": report.get("id"),
        "type": report["type"],
        "identical": report["identical"],
        "observations": report["observations"],
        "seconds": report.get("seconds"),
        "observations_per_s": report.get("observations_per_s"),
        "candidate_run": report.get("candidate_run"),
        "outputs": {
            o["name"]: {
                k: o[k] for k in ("differing", "twins_affected", "max_abs_diff", "rms_diff")
            }
            | {"first_divergence": o["first_divergence"] and o["first_divergence"]["ts"]}
            for o in report["outputs"]
        },
        "new_outputs": {d["name"]: d.get("mean") for d in report["new_outputs"]},
        "rules": {
            r["rule"]: {
                k: r[k]
                for k in (
                    "status",
                    "baseline_alarms",
                    "candidate_alarms",
                    "would_raise",
                    "never_raised",
                    "precision",
                    "recall",
                )
            }
            for r in report["rules"]
        },
        "failures": {f["name"]: f["infinite"] + f["unknown"] for f in report["failures"]},
    }


def to_csv(report: dict) -> str:
    """The report's findings, one per row: differing outputs and their worst twins, new
    outputs, alarms that differ, and expression failures."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for o in report["outputs"]:
        first = o["first_divergence"] or {}
        detail = (
            f"differing={o['differing']} of {o['compared']}; twins={o['twins_affected']}; "
            f"rms={o['rms_diff']}"
        )
        writer.writerow(
            ["output", o["name"], first.get("twin"), first.get("ts"), o["max_abs_diff"], detail]
        )
        for w in o["worst_twins"]:
            writer.writerow(["output_twin", o["name"], w["twin"], "", w["max_abs_diff"], ""])
    for d in report["new_outputs"]:
        q = d.get("quantiles") or {}
        detail = "; ".join(f"{k}={v}" for k, v in {"count": d["count"], **q}.items())
        writer.writerow(["new_output", d["name"], "", "", d.get("mean"), detail])
    for r in report["rules"]:
        for kind in ("would_raise", "never_raised", "cleared_differently"):
            for a in r[f"{kind}_alarms"]:
                writer.writerow(["alarm", r["rule"], a["twin"], a["raised"], a["cleared"], kind])
    for f in report["failures"]:
        for e in f["examples"]:
            detail = e["problem"] + (f"; missing={','.join(e['missing'])}" if e["missing"] else "")
            writer.writerow(["failure", f["name"], e["twin"], e["ts"], e["value"], detail])
    return out.getvalue()
