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
        "calibration": _calibration_summary(report.get("calibration")),
    }


def _calibration_summary(section: dict | None) -> dict | None:
    """The gist of a calibration back-test: what changed, and which side predicts better."""
    if not section or "outputs" not in section:
        return section
    return {
        "changes": section["changes"],
        "start": section["start"],
        "parameters": {
            p["name"]: {k: p.get(k) for k in ("twins_affected", "rms_diff", "band_width_ratio")}
            for p in section["parameters"]
        },
        "outputs": {
            o["name"]: {
                "rms_error": [o["baseline"]["rms_error"], o["candidate"]["rms_error"]],
                "coverage_95": [o["baseline"]["coverage_95"], o["candidate"]["coverage_95"]],
                "better": o["better"],
            }
            for o in section["outputs"]
        },
    }


def to_csv(report: dict) -> str:
    """The report's findings, one per row: differing outputs and their worst twins, new
    outputs, alarms that differ, expression failures, and a calibration back-test's parameters
    (and their worst twins) and measured outputs."""
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
    _calibration_rows(writer, report.get("calibration") or {})
    return out.getvalue()


def _calibration_rows(writer, section: dict) -> None:
    for p in section.get("parameters", []):
        detail = "; ".join(
            f"{k}={p.get(k)}" for k in ("status", "twins_affected", "rms_diff", "band_width_ratio")
        )
        writer.writerow(["calibration_parameter", p["name"], "", "", p.get("max_abs_diff"), detail])
        for w in p.get("worst_twins", []):
            b, c = w["baseline"], w["candidate"]
            detail = (
                f"baseline={b['mean']} [{b['lower']}, {b['upper']}]; "
                f"candidate={c['mean']} [{c['lower']}, {c['upper']}]"
            )
            writer.writerow(["calibration_parameter_twin", p["name"], w["twin"], "", "", detail])
    for o in section.get("outputs", []):
        b, c = o["baseline"], o["candidate"]
        detail = (
            f"rms_error baseline={b['rms_error']} candidate={c['rms_error']}; coverage_95 "
            f"baseline={b['coverage_95']} candidate={c['coverage_95']}; better={o['better']}"
        )
        writer.writerow(["calibration_output", o["name"], "", "", c["rms_error"], detail])
