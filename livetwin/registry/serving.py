"""Serving registered models: a `Predictor` per version, built by the loader of its flavor.

A flavor names how a version is loaded: `python` (a livetwin model ref, deductive), `linear`
(a least-squares model fitted by `fit_linear`, inductive, one JSON artifact). Other modules
add theirs with `register_flavor("name", loader)` or, lazily, `"package.module:loader"`.
"""

from __future__ import annotations

import importlib
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import orjson

from livetwin.errors import InvalidInput
from livetwin.models.base import Model, resolve_model

MAX_ROWS = 10_000
MAX_STEPS = 10_000


class Predictor(Protocol):
    """A loaded model version: JSON inputs in, JSON predictions out (errors: InvalidInput)."""

    def predict(self, body: dict) -> dict: ...


class ArtifactReader(Protocol):
    """A version's uploaded artifacts, by file name."""

    def read(self, filename: str) -> bytes: ...


Loader = Callable[[dict, ArtifactReader], Predictor]
_FLAVORS: dict[str, Loader | str] = {}
_lock = threading.Lock()


def register_flavor(name: str, loader: Loader | str) -> None:
    """Make versions of `flavor: name` servable; `loader(version, artifacts) -> Predictor`
    (or its "module:function" name, imported on first use)."""
    with _lock:
        _FLAVORS[name] = loader


def flavors() -> list[str]:
    return sorted(_FLAVORS)


def load_predictor(version: dict, artifacts: ArtifactReader) -> Predictor:
    """The predictor of a registered version (its `flavor`, default python)."""
    flavor = version.get("flavor") or "python"
    with _lock:
        loader = _FLAVORS.get(flavor)
        if isinstance(loader, str):
            module, _, attr = loader.partition(":")
            loader = _FLAVORS[flavor] = getattr(importlib.import_module(module), attr)
    if loader is None:
        raise InvalidInput(
            f"no loader serves flavor '{flavor}' of {version['name']}/{version['version']}",
            field="flavor",
            fix=f"serve versions of a known flavor ({', '.join(flavors())}) or register a loader "
            "with livetwin.registry.register_flavor",
        )
    return loader(version, artifacts)


# ---- request helpers ----------------------------------------------------------------------------


def _rows(body: Any) -> list[dict]:
    if not isinstance(body, dict) or not isinstance(body.get("rows"), list):
        raise InvalidInput(
            "the body must be an object with a list 'rows'",
            field="rows",
            fix='send {"rows": [{"name": value, ...}, ...]}',
        )
    rows = body["rows"]
    if not 1 <= len(rows) <= MAX_ROWS:
        raise InvalidInput(
            f"rows must hold 1 to {MAX_ROWS} rows", field="rows", fix="split the request"
        )
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InvalidInput(
                f"rows[{i}] is not an object", field=f"rows.{i}", fix='e.g. {"x": 1.5}'
            )
    return rows


def _matrix(rows: list[dict], names: Sequence[str], defaults: dict[str, float]) -> np.ndarray:
    """A float matrix (rows x names): each value from its row, else from `defaults`."""
    out = np.empty((len(rows), len(names)))
    for i, row in enumerate(rows):
        for j, name in enumerate(names):
            value = row.get(name, defaults.get(name))
            if value is None:
                raise InvalidInput(
                    f"rows[{i}] lacks '{name}'",
                    field=f"rows.{i}.{name}",
                    fix=f"send a number for every one of: {', '.join(names)}",
                )
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidInput(
                    f"rows[{i}].{name} is not a number",
                    field=f"rows.{i}.{name}",
                    fix="send a JSON number",
                )
            out[i, j] = value
    return out


def _reject_unknown(rows: list[dict], known: set[str]) -> None:
    for i, row in enumerate(rows):
        unknown = sorted(set(row) - known)
        if unknown:
            raise InvalidInput(
                f"rows[{i}] has unknown name(s) {', '.join(unknown)}",
                field=f"rows.{i}.{unknown[0]}",
                fix=f"use only {', '.join(sorted(known))}",
            )


def _records(names: Sequence[str], values: np.ndarray) -> list[dict]:
    return [
        {n: (v if math.isfinite(v) else None) for n, v in zip(names, row, strict=True)}
        for row in values.tolist()
    ]


# ---- python: a livetwin model ref ----------------------------------------------------------


class ModelPredictor:
    """Steps a vectorised livetwin model: every row names params, inputs and states; missing
    names come from the version's numeric hyperparameters."""

    def __init__(self, model: Model, defaults: dict[str, float]):
        self.model, self.defaults = model, defaults

    def predict(self, body: dict) -> dict:
        m = self.model
        rows = _rows(body)
        _reject_unknown(rows, set(m.params) | set(m.inputs) | set(m.states))
        dt = body.get("dt", self.defaults.get("dt", 1.0))
        if isinstance(dt, bool) or not isinstance(dt, int | float) or not 0 < dt < math.inf:
            raise InvalidInput("dt must be a positive number", field="dt", fix="seconds, e.g. 1")
        steps = body.get("steps", 1)
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
            raise InvalidInput(
                f"steps must be an integer from 1 to {MAX_STEPS}", field="steps", fix="e.g. 10"
            )
        params = _matrix(rows, m.params, self.defaults)
        inputs = _matrix(rows, m.inputs, self.defaults)
        states = _matrix(rows, m.states, self.defaults)
        outputs = np.empty((len(rows), len(m.outputs)))
        for _ in range(steps):
            states, outputs = m.step(states, params, inputs, float(dt))
        result = {"outputs": _records(m.outputs, np.asarray(outputs, dtype=float))}
        if m.states:
            result["states"] = _records(m.states, np.asarray(states, dtype=float))
        return result


def load_python(version: dict, artifacts: ArtifactReader) -> Predictor:
    if not version.get("ref"):
        raise InvalidInput(
            f"{version['name']}/{version['version']} has no ref to load",
            field="ref",
            fix="register a version with ref: 'package.module:function'",
        )
    model = resolve_model(version["ref"])
    defaults = {
        k: float(v)
        for k, v in (version.get("hyperparameters") or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    return ModelPredictor(model, defaults)


# ---- linear: a fitted least-squares model ---------------------------------------------------

LINEAR_ARTIFACT = "linear.json"


def fit_linear(x: np.ndarray, y: np.ndarray, features: Sequence[str], targets: Sequence[str]):
    """Fit y = x @ coef.T + intercept by least squares; (artifact bytes, metrics)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float).reshape(len(x), -1)
    design = np.hstack([x, np.ones((len(x), 1))])
    solution, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = design @ solution - y
    artifact = {
        "features": list(features),
        "targets": list(targets),
        "coef": solution[:-1].T.tolist(),
        "intercept": solution[-1].tolist(),
    }
    metrics = {"rmse": float(np.sqrt(np.mean(residual**2))), "rows": float(len(x))}
    return orjson.dumps(artifact), metrics


class LinearPredictor:
    def __init__(self, spec: dict):
        self.features, self.targets = spec["features"], spec["targets"]
        self.coef, self.intercept = np.asarray(spec["coef"]), np.asarray(spec["intercept"])

    def predict(self, body: dict) -> dict:
        rows = _rows(body)
        _reject_unknown(rows, set(self.features))
        x = _matrix(rows, self.features, {})
        return {"predictions": _records(self.targets, x @ self.coef.T + self.intercept)}


def load_linear(version: dict, artifacts: ArtifactReader) -> Predictor:
    filename = (version.get("hyperparameters") or {}).get("artifact", LINEAR_ARTIFACT)
    try:
        spec = orjson.loads(artifacts.read(filename))
        predictor = LinearPredictor(spec)
        shape_ok = predictor.coef.shape == (len(predictor.targets), len(predictor.features))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        shape_ok = False
    if not shape_ok:
        raise InvalidInput(
            f"artifact '{filename}' of {version['name']}/{version['version']} is not a linear "
            "model",
            field="artifacts",
            fix="upload the bytes livetwin.registry.serving.fit_linear returns",
        )
    return predictor


register_flavor("python", load_python)
register_flavor("linear", load_linear)
register_flavor("seasonal-baseline", "livetwin.models.baseline:load_seasonal")
