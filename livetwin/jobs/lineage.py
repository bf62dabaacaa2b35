"""Lineage for jobs that publish values: a run node fed by its data window and model version.

The ports: `lineage` (a LineageStore) and `models` (the registry's store: `lookup_ref`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from livetwin.registry.lineage import code_hash
from livetwin.registry.service import model_node_id
from livetwin.timefmt import format_ts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cohort:
    """Twins filtered together over one window [start, end) (epoch ms)."""

    twins: Sequence[str]
    start: int
    end: int
    resumed: bool


def model_node(lineage: Any, models: Any, ref: str, fn: Any) -> tuple[str, dict]:
    """The lineage node of the model behind `ref`: its registered version in any namespace when
    there is one (matching code hash preferred, looked up in `models`), else a node for the
    unregistered code."""
    hash_ = code_hash(ref, fn)
    found = models.lookup_ref(ref, hash_)
    info = {"ref": ref, "code_hash": hash_, "registry": found}
    if found is not None:
        node_id = model_node_id(found["name"], found["version"], found["namespace"])
        lineage.ensure(
            node_id,
            "model",
            found["name"],
            inputs={"namespace": found["namespace"], "version": found["version"], "ref": ref},
        )
    else:
        node_id = lineage.ensure(
            f"model:{ref}@{hash_[:12]}",
            "model",
            ref,
            inputs={"ref": ref, "registered": False},
            code_hash=hash_,
        )
    return node_id, info


def record_calibration(
    lineage: Any,
    models: Any,
    record: dict,
    ctype: Any,
    plan: Any,
    cohorts: Sequence[Cohort],
    published: Sequence[str],
    started: int,
    finished: int,
) -> str | None:
    """Record a calibration run that published values as node `record["run"]` (the run's one
    id); its node id (None if it failed: a lineage problem is logged and never fails the
    calibration itself)."""
    if not cohorts:
        return None
    try:
        model_id, model = model_node(lineage, models, plan.model.name, plan.model.fn)
        windows = [
            {"twins": list(c.twins), "from": format_ts(c.start), "to": format_ts(c.end)}
            for c in cohorts
        ]
        window = {
            "type": ctype.name,
            "columns": list(plan.model.inputs) + list(plan.measured),
            "from": format_ts(min(c.start for c in cohorts)),
            "to": format_ts(max(c.end for c in cohorts)),
            "windows": windows,
        }
        digest = hashlib.sha256(orjson.dumps(window)).hexdigest()[:20]
        data_id = lineage.ensure(
            f"data:{ctype.name}/{digest}", "data", f"{ctype.name} history", inputs=window
        )
        parents = [data_id, model_id]
        previous = lineage.latest("run", f"calibrate:{ctype.name}")
        if previous is not None and any(c.resumed for c in cohorts):
            parents.append(previous)  # the filter state this run resumed
        return lineage.record(
            "run",
            f"calibrate:{ctype.name}",
            id=record["run"],
            inputs={
                "job": "calibrate",
                "type": ctype.name,
                "type_version": ctype.version,
                "estimator": plan.section.estimator,
                "model": model,
                "data": {
                    "type": ctype.name,
                    "twins": sum(len(c.twins) for c in cohorts),
                    "from": window["from"],
                    "to": window["to"],
                },
            },
            outputs={
                "names": list(published),
                "parameters": list(plan.parameters),
                "virtual_sensors": list(plan.virtual),
                "status": record.get("status"),
                "calibrated": record.get("calibrated"),
                "failed": sorted(record.get("failed", {})),
            },
            parents=parents,
            code_hash=model["code_hash"],
            started=started,
            finished=finished,
            produced=[(t, c.start, c.end) for c in cohorts for t in c.twins],
        )
    except Exception:
        log.exception("recording the lineage of a calibration of %s failed", ctype.name)
        return None
