"""FMU models (FMI 2.0 / 3.0, co-simulation or model exchange) through FMPy, as livetwin `Model`s.

Each row is one run of the FMU from a reset to `dt` (or to steady state); the FMU is extracted
and instantiated once per process, and rows can be spread over a process pool. Model exchange is
integrated with CVode (SUNDIALS, through FMPy) by default, or with fixed-step RK4.
"""

from __future__ import annotations

import atexit
import ctypes
import math
import multiprocessing
import os
import re
import shutil
import tempfile
import threading
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import parse_qsl

import numpy as np

from livetwin.errors import InvalidInput
from livetwin.models.base import Bounds, Model

Names = Sequence[str] | Mapping[str, str] | None
_REAL = ("Real", "Float64")
_FIX_INSTALL = "install the FMU extra: pip install 'livetwin[fmu]'"
_FIX_FILE = "pass a .fmu file exported for FMI 2.0 or 3.0 with a binary for this platform"
_ME_SUBSTEPS = 10  # default model-exchange RK4 steps per dt
_SOLVERS = ("cvode", "rk4")


@dataclass(frozen=True)
class FmuConfig:
    """What a process needs to run an FMU (picklable, hashable: the key of the instance cache).

    `setters` are the FMU variables set from the columns of a row, in order: before
    initialisation, except those in `continuous` (model exchange), which are continuous states
    set after it. `getters` are the variables read at the end of the run. `solver` integrates
    model exchange: "cvode" (variable step, relative tolerance `rtol`) or "rk4" (fixed step).
    """

    path: str
    unzip_dir: str
    kind: str  # "cs" (co-simulation) or "me" (model exchange)
    setters: tuple[str, ...]
    getters: tuple[str, ...]
    continuous: tuple[str, ...] = ()
    solver: str = "cvode"
    rtol: float = 1e-6
    step: float | None = None
    steady: bool = False
    tol: float = 1e-6
    max_steps: int = 10_000
    retries: int = 3

    def base_step(self, dt: float) -> float:
        """The first step size tried: `step`, else dt (co-simulation, CVode) or dt/10 (RK4)."""
        if self.step is not None:
            return self.step
        return dt / _ME_SUBSTEPS if self.kind == "me" and self.solver == "rk4" else dt


class _Failed(Exception):
    """A run did not succeed (worth a retry with a smaller step)."""


class _NotSteady(Exception):
    """A steady-state run did not settle (a smaller step would not help)."""


# -- process-wide caches: extraction, model descriptions, instances -------------------------------

_EXTRACTED: dict[tuple[str, int, int], str] = {}
_INSTANCES: dict[FmuConfig, _Instance] = {}
_RESOLVED: dict[tuple, Model] = {}
_LOCK = threading.Lock()


def _fmpy():
    try:
        import fmpy
    except ImportError:
        raise InvalidInput(
            "FMU models need FMPy, which is not installed", field="model", fix=_FIX_INSTALL
        ) from None
    return fmpy


def _file_key(path: str) -> tuple[str, int, int]:
    try:
        st = os.stat(path)
    except OSError:
        raise InvalidInput(
            f"FMU file {path!r} does not exist", field="model", fix=_FIX_FILE
        ) from None
    return (path, st.st_mtime_ns, st.st_size)


def _extract(path: str) -> str:
    """Extract the FMU once per process (and file version) into a temporary directory."""
    key = _file_key(path)
    with _LOCK:
        if key not in _EXTRACTED:
            target = tempfile.mkdtemp(prefix="livetwin-fmu-")
            atexit.register(shutil.rmtree, target, True)
            try:
                _fmpy().extract(path, unzipdir=target)
            except Exception as exc:
                raise InvalidInput(
                    f"cannot extract FMU {path!r}: {exc}", field="model", fix=_FIX_FILE
                ) from None
            _EXTRACTED[key] = target
        return _EXTRACTED[key]


def _describe(source: str):
    """FMPy's model description of an extracted FMU directory or a .fmu file."""
    try:
        md = _fmpy().read_model_description(source)
    except InvalidInput:
        raise
    except Exception as exc:
        raise InvalidInput(
            f"cannot read the FMU's modelDescription.xml ({source}): {exc}",
            field="model",
            fix=_FIX_FILE,
        ) from None
    if not md.fmiVersion.startswith(("2.", "3.")):
        raise InvalidInput(
            f"FMI version {md.fmiVersion} is not supported", field="model", fix=_FIX_FILE
        )
    return md


def _instance(cfg: FmuConfig) -> _Instance:
    with _LOCK:
        inst = _INSTANCES.get(cfg)
    if inst is None:
        inst = _Instance(cfg)
        with _LOCK:
            inst = _INSTANCES.setdefault(cfg, inst)
    return inst


# -- one FMU instance: reset, set, run, read ---------------------------------------------------


class _Instance:
    """One instantiated FMU in this process, reused for every row (reset between rows)."""

    def __init__(self, cfg: FmuConfig):
        if not os.path.isdir(cfg.unzip_dir):  # a worker on another machine: extract here
            cfg = replace(cfg, unzip_dir=_extract(cfg.path))
        self.cfg = cfg
        self.md = md = _describe(cfg.unzip_dir)
        self.v3 = md.fmiVersion.startswith("3")
        by_name = {v.name: v for v in md.modelVariables}
        order = continuous_states(md)
        plain = [i for i, n in enumerate(cfg.setters) if n not in cfg.continuous]
        self.set_cols = np.array(plain, dtype=int)
        self.vr_set = [by_name[cfg.setters[i]].valueReference for i in plain]
        self.state_cols = np.array(
            [i for i, n in enumerate(cfg.setters) if n in cfg.continuous], dtype=int
        )
        self.state_index = np.array([order.index(n) for n in cfg.continuous], dtype=int)
        self.vr_get = [by_name[n].valueReference for n in cfg.getters]
        self.nx = int(md.numberOfContinuousStates or 0) if cfg.kind == "me" else 0
        self.nz = int(md.numberOfEventIndicators or 0) if cfg.kind == "me" else 0
        self.next_event: float | None = None
        self.x = np.zeros(self.nx)  # the RK4 state; buffers shared with the FMU calls:
        self.xc, self.dxc = (ctypes.c_double * self.nx)(), (ctypes.c_double * self.nx)()
        self.xv, self.dxv = np.ctypeslib.as_array(self.xc), np.ctypeslib.as_array(self.dxc)
        self.lock = threading.Lock()
        self.fmu = None
        self._open()

    def _open(self) -> None:
        from fmpy.fmi2 import FMU2Model, FMU2Slave
        from fmpy.fmi3 import FMU3Model, FMU3Slave

        cls = {
            (False, "cs"): FMU2Slave,
            (False, "me"): FMU2Model,
            (True, "cs"): FMU3Slave,
            (True, "me"): FMU3Model,
        }[(self.v3, self.cfg.kind)]
        iface = self.md.coSimulation if self.cfg.kind == "cs" else self.md.modelExchange
        self.fmu = cls(
            guid=self.md.guid,
            unzipDirectory=self.cfg.unzip_dir,
            modelIdentifier=iface.modelIdentifier,
            instanceName="livetwin",
        )
        self.fmu.instantiate()
        f = self.fmu
        self._set = f.setFloat64 if self.v3 else f.setReal
        self._get = f.getFloat64 if self.v3 else f.getReal
        if self.cfg.kind == "me":
            self._deriv = f.getContinuousStateDerivatives if self.v3 else f.getDerivatives
        self.solver = None  # CVode, made on the first run of this FMU instance
        self.fresh = True

    def recover(self) -> None:
        """Bring the instance back after a failed run: reset, or instantiate it anew."""
        try:
            self.fmu.reset()
            self.fresh = True
        except Exception:
            try:
                self.fmu.freeInstance()
            except Exception:
                pass
            self._open()

    def run(self, row: np.ndarray, dt: float, h: float, max_steps: int) -> np.ndarray:
        """Reset, set `row`, simulate to `dt` (or to steady state) in steps <= h; read."""
        f, cfg = self.fmu, self.cfg
        if not self.fresh:
            f.reset()
        self.fresh = False
        if not self.v3:
            f.setupExperiment(startTime=0.0)
        if self.vr_set:
            self._set(self.vr_set, row[self.set_cols].tolist())
        f.enterInitializationMode()
        f.exitInitializationMode()
        if cfg.kind == "cs":
            step = self._cs_step
        else:
            step = self._cvode_step if cfg.solver == "cvode" else self._me_step
            self._events()
            if self.nx:
                self._get_states()
                if len(self.state_cols):  # continuous states carried by the filter
                    self.x[self.state_index] = row[self.state_cols]
                    self._set_states(self.x)
            if cfg.solver == "cvode":
                self._cvode().reset(0.0)
        if not cfg.steady:
            n = max(1, math.ceil(dt / h - 1e-9))
            for k in range(n):
                step(k * dt / n, dt / n)
            return self._read()
        y = self._read()
        for k in range(max_steps):
            step(k * h, h)
            y_new = self._read()
            if (np.abs(y_new - y) <= cfg.tol * h * (1.0 + np.abs(y_new))).all():
                return y_new
            y = y_new
        raise _NotSteady

    def _read(self) -> np.ndarray:
        y = np.array(self._get(self.vr_get), dtype=float)
        if not np.isfinite(y).all():
            raise _Failed("non-finite outputs")
        return y

    def _cs_step(self, t: float, h: float) -> None:
        res = self.fmu.doStep(t, h)  # FMPy raises on discard, error and fatal
        if self.v3 and (res[1] or res[2]):  # terminateSimulation or earlyReturn
            raise _Failed("the FMU ended the step early")

    def _events(self) -> None:
        """Event iteration (after initialisation or a step event), then continuous-time mode."""
        f = self.fmu
        update = f.updateDiscreteStates if self.v3 else f.newDiscreteStates
        for _ in range(100):
            needed, terminate, _, _, timed, next_time = update()
            if terminate:
                raise _Failed("the FMU asked to terminate")
            if not needed:
                break
        else:
            raise _Failed("event iteration did not converge")
        self.next_event = next_time if timed else None
        f.enterContinuousTimeMode()

    def _get_states(self) -> None:
        self.fmu.getContinuousStates(self.xc, self.nx)
        self.x = self.xv.copy()

    def _set_states(self, x: np.ndarray) -> None:
        self.xv[:] = x
        self.fmu.setContinuousStates(self.xc, self.nx)

    def _f(self, t: float, x: np.ndarray) -> np.ndarray:
        self.fmu.setTime(t)
        self._set_states(x)
        self._deriv(self.dxc, self.nx)
        return self.dxv.copy()

    def _me_step(self, t: float, h: float) -> None:
        """One classic RK4 step of the FMU's derivatives (no state-event detection)."""
        f = self.fmu
        if self.nx:
            x = self.x
            k1 = self._f(t, x)
            k2 = self._f(t + 0.5 * h, x + 0.5 * h * k1)
            k3 = self._f(t + 0.5 * h, x + 0.5 * h * k2)
            k4 = self._f(t + h, x + h * k3)
            self.x = x + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
            if not np.isfinite(self.x).all():
                raise _Failed("non-finite states")
        f.setTime(t + h)
        if self.nx:
            self._set_states(self.x)
        enter_event, terminate = f.completedIntegratorStep()
        if terminate:
            raise _Failed("the FMU asked to terminate")
        if enter_event:
            f.enterEventMode()
            self._events()
            if self.nx:
                self._get_states()

    def _cvode(self):
        """This instance's CVode solver (BDF, dense Newton; states' nominals scale `rtol`)."""
        if self.solver is None:
            f = self.fmu
            self.solver = _cvode_class()(
                nx=self.nx,
                nz=self.nz,
                get_x=f.getContinuousStates,
                set_x=f.setContinuousStates,
                get_dx=self._deriv,
                get_z=f.getEventIndicators,
                get_nominals=f.getNominalsOfContinuousStates,
                set_time=f.setTime,
                input=_CONSTANT_INPUTS,
                startTime=0.0,
                relativeTolerance=self.cfg.rtol,
                maxNumSteps=self.cfg.max_steps,
            )
        return self.solver

    def _cvode_step(self, t: float, h: float) -> None:
        """Integrate from t to t + h with CVode, handling state, time and step events."""
        f, solver, end = self.fmu, self._cvode(), t + h
        while end - t > 1e-12 * max(1.0, abs(end)):
            stop = end if self.next_event is None else min(end, self.next_event)
            state_event, _, t = solver.step(t, stop)
            f.setTime(t)
            timed = self.next_event is not None and t >= self.next_event - 1e-12
            step_event, terminate = f.completedIntegratorStep()
            if terminate:
                raise _Failed("the FMU asked to terminate")
            if state_event or timed or step_event:
                f.enterEventMode()
                self._events()
                solver.reset(t)
        if self.nx:
            self._get_states()


def _cvode_class():
    """FMPy's CVode solver whose right-hand side reports a failed FMU call to CVode (which
    then fails the run) instead of letting ctypes swallow the exception."""
    from fmpy.sundials import CVodeSolver

    class SafeCVode(CVodeSolver):
        def f(self, t, y, ydot, user_data):
            try:
                return super().f(t, y, ydot, user_data)
            except Exception:
                return -1  # unrecoverable: CVode stops and the row is retried or NaN

    return SafeCVode


class _ConstantInputs:
    """Inputs are set once per run before initialisation; CVode's input hook has nothing to do."""

    def apply(self, time: float) -> None:
        pass


_CONSTANT_INPUTS = _ConstantInputs()


def continuous_states(md) -> list[str]:
    """Names of the FMU's continuous states, in the order of its state vector."""
    return [d.variable.derivative.name for d in md.derivatives if d.variable.derivative]


def evaluate_rows(cfg: FmuConfig, rows: np.ndarray, dt: float) -> np.ndarray:
    """Run every row on this process's instance; a row that never succeeds comes back NaN.

    A failed run is retried with the step halved, up to `cfg.retries` times. A row with
    NaN values is not run.
    """
    inst = _instance(cfg)
    out = np.full((len(rows), len(cfg.getters)), np.nan)
    base = cfg.base_step(dt)
    with inst.lock:
        for i, row in enumerate(rows):
            if not np.isfinite(row).all():
                continue
            for attempt in range(cfg.retries + 1):
                try:
                    out[i] = inst.run(row, dt, base / 2**attempt, cfg.max_steps * 2**attempt)
                    break
                except _NotSteady:
                    break
                except Exception:
                    try:
                        inst.recover()
                    except Exception:  # it cannot be brought back: drop it, the rest is NaN
                        with _LOCK:
                            _INSTANCES.pop(cfg, None)
                        return out
    return out


# -- the vectorised callable and its process pool ------------------------------------------------


def _pool_init(cfg: FmuConfig) -> None:
    _instance(cfg)  # extract (only if needed) and instantiate once per worker


class FmuFunction:
    """The `fn` of an FMU `Model`: ``fn(params, inputs, dt)`` (or with states first, for a
    transient model) runs each row on the FMU. Rows go to a pool of `workers` processes (spawned
    once, kept until `close`) or, with ``workers=0``, run in this process.
    """

    def __init__(self, cfg: FmuConfig, n_states: int = 0, workers: int = 0):
        self.cfg, self.n_states, self.workers = cfg, n_states, workers
        self._pool: ProcessPoolExecutor | None = None
        self._warned = False

    def __call__(self, *args):
        *arrays, dt = args
        n = len(arrays[0])
        rows = np.hstack([np.asarray(a, dtype=float).reshape(n, -1) for a in arrays])
        out = self.evaluate(rows, float(dt))
        self._check_moved(rows, out)
        if self.n_states:
            return out[:, : self.n_states], out[:, self.n_states :]
        return out

    def evaluate(self, rows: np.ndarray, dt: float) -> np.ndarray:
        """Outputs ``[N, len(getters)]`` of ``rows[N, len(setters)]``, serial or pooled."""
        if not self.workers or len(rows) < 2:
            return evaluate_rows(self.cfg, rows, dt)
        pool = self._get_pool()
        parts = np.array_split(rows, min(len(rows), self.workers))
        futures = [pool.submit(evaluate_rows, self.cfg, p, dt) for p in parts]
        out = []
        for part, fut in zip(parts, futures, strict=True):
            try:
                out.append(fut.result())
            except Exception as exc:  # a worker died (the FMU crashed?): NaN, new pool next call
                warnings.warn(f"FMU worker pool failed ({exc!r}): rows set to NaN", stacklevel=2)
                out.append(np.full((len(part), len(self.cfg.getters)), np.nan))
                self.close()
        return np.concatenate(out)

    def _check_moved(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Warn once when co-simulation gives every row the same outputs although the rows
        differ: a step that moves nothing (one explicit Euler step from rest, say) cannot be
        calibrated, and the filter alone would only show bands that never shrink."""
        if self._warned or self.cfg.kind != "cs" or len(rows) < 2:
            return
        ok = np.isfinite(out).all(axis=1)
        if ok.sum() < 2 or np.ptp(rows[ok], axis=0).max() == 0:
            return
        if np.ptp(out[ok], axis=0).max() == 0:
            self._warned = True
            warnings.warn(
                f"the co-simulation step of FMU {Path(self.cfg.path).name} left the outputs "
                f"{', '.join(self.cfg.getters)} the same for all {int(ok.sum())} rows although "
                "their parameters differ: its doStep may be a single explicit step. Use "
                "mode=me (CVode) if the FMU offers model exchange, or a smaller step=",
                stacklevel=3,
            )

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_pool_init,
                initargs=(self.cfg,),
            )
        return self._pool

    def close(self) -> None:
        """Stop the process pool, if one was started."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __getstate__(self) -> dict:
        # A copy sent to another process (e.g. a filter's worker) runs its rows serially there.
        return {"cfg": self.cfg, "n_states": self.n_states, "workers": 0}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


# -- building a Model ----------------------------------------------------------------------------


def fmu_model(
    path: str | os.PathLike,
    *,
    params: Names = None,
    inputs: Names = None,
    outputs: Names = None,
    states: Names = None,
    mode: str = "auto",
    solver: str = "cvode",
    rtol: float = 1e-6,
    step: float | None = None,
    steady: bool = False,
    tol: float = 1e-6,
    max_steps: int = 10_000,
    retries: int = 3,
    workers: int = 0,
    name: str | None = None,
) -> Model:
    """A livetwin `Model` that runs the FMU at `path`, one run per row.

    * `params`, `inputs`, `outputs`: either a mapping ``livetwin name -> FMU variable`` or a
      list of FMU variables. None takes the FMU's own Real variables of causality parameter,
      input and output. An FMU name that is not a livetwin name (Modelica's ``damper.d``,
      ``der(x)``) gets one with every other character replaced by ``_`` (``damper_d``).
      FMU parameters not listed keep their start values.
    * `states`: makes the model transient, like `params` (a list or ``livetwin state -> FMU
      variable``), or ``livetwin state -> (FMU variable set at the start, FMU variable read at
      the end)``, e.g. ``{"x": ("x0", "x")}``. In model exchange a continuous state of the FMU is
      set after initialisation (``setContinuousStates``); otherwise the start variable must
      have a start value (a parameter, an input or ``initial="exact"``).
    * `mode`: "me" (model exchange, integrated here by `solver`), "cs" (co-simulation: the
      FMU's own `doStep`) or "auto" (model exchange when the FMU has it, else co-simulation).
    * `solver`: "cvode" (SUNDIALS CVode through FMPy: BDF with relative tolerance `rtol`; state,
      time and step events) or "rk4" (fixed-step RK4, step events only).
    * Each row runs from a reset to `dt` in steps of at most `step` (default: one step of dt for
      co-simulation and CVode, dt/10 for RK4); with ``steady=True`` it runs in steps of `step`
      until every output changes by less than ``tol * (1 + |y|)`` per unit of time, at most
      `max_steps` steps. A failed run is retried `retries` times with the step halved each time,
      then the row is NaN (the filters treat it as a failed twin).
    * `workers` > 0 spreads rows over that many spawned processes.
    """
    _fmpy()
    path = str(Path(path).resolve())
    unzip_dir = _extract(path)
    md = _describe(unzip_dir)
    have = {v.name: v for v in md.modelVariables}
    kinds = [k for k, i in (("me", md.modelExchange), ("cs", md.coSimulation)) if i is not None]
    if mode == "auto":
        mode = kinds[0] if kinds else "cs"
    if mode not in kinds:
        raise InvalidInput(
            f"the FMU does not support mode {mode!r} (it has {', '.join(kinds) or 'none'})",
            field="mode",
            fix="use mode='auto', 'cs' or 'me' as the FMU supports",
        )
    real = [v for v in md.modelVariables if v.type in _REAL and not v.shape]
    defaults = {
        "params": [
            v.name
            for v in real
            if v.causality == "parameter" and v.variability in ("fixed", "tunable")
        ],
        "inputs": [v.name for v in real if v.causality == "input"],
        "outputs": [v.name for v in real if v.causality == "output"],
    }
    if solver not in _SOLVERS:
        raise InvalidInput(
            f"unknown solver {solver!r}", field="solver", fix=f"use one of {', '.join(_SOLVERS)}"
        )
    state_map = {
        k: (v, v) if isinstance(v, str) else tuple(v)
        for k, v in _mapping("states", states, [], pairs=True).items()
    }
    start_vars = {s: a for s, (a, _) in state_map.items()}
    end_vars = {s: b for s, (_, b) in state_map.items()}
    continuous = tuple(
        v for v in start_vars.values() if mode == "me" and v in continuous_states(md)
    )
    maps = {
        "params": _mapping("params", params, defaults["params"]),
        "inputs": _mapping("inputs", inputs, defaults["inputs"]),
        "outputs": _mapping("outputs", outputs, defaults["outputs"]),
    }
    if state_map and params is None:  # a state's start variable is not also a parameter
        maps["params"] = {k: v for k, v in maps["params"].items() if v not in start_vars.values()}
    for kind, mapping in (*maps.items(), ("states", start_vars), ("states", end_vars)):
        settable = kind in ("params", "inputs") or mapping is start_vars
        for fmu_name in mapping.values():
            _check_variable(have, fmu_name, kind, settable and fmu_name not in continuous)
    if not maps["outputs"]:
        raise InvalidInput(
            "the FMU has no Real outputs", field="outputs", fix="map outputs={name: variable}"
        )
    _check_options(step, tol, max_steps, retries, workers)
    if not (isinstance(rtol, int | float) and 0 < rtol < 1):
        raise InvalidInput("rtol must be in (0, 1)", field="rtol", fix="pass rtol like 1e-6")
    cfg = FmuConfig(
        path=path,
        unzip_dir=unzip_dir,
        kind=mode,
        setters=(*start_vars.values(), *maps["params"].values(), *maps["inputs"].values()),
        getters=(*end_vars.values(), *maps["outputs"].values()),
        continuous=continuous,
        solver=solver,
        rtol=float(rtol),
        step=step,
        steady=steady,
        tol=tol,
        max_steps=max_steps,
        retries=retries,
    )
    try:
        _instance(cfg)  # instantiate now: a broken binary fails here, not inside a filter
    except Exception as exc:
        raise InvalidInput(
            f"cannot load FMU {path!r}: {exc}", field="model", fix=_FIX_FILE
        ) from None
    bounds: dict[str, Bounds] = {}
    for lt_name, fmu_name in maps["params"].items():
        lo, hi = _float(have[fmu_name].min), _float(have[fmu_name].max)
        if lo is not None or hi is not None:
            bounds[lt_name] = (lo, hi)
    return Model(
        name=name or f"fmu:{path}",
        fn=FmuFunction(cfg, n_states=len(state_map), workers=workers),
        params=tuple(maps["params"]),
        inputs=tuple(maps["inputs"]),
        outputs=tuple(maps["outputs"]),
        states=tuple(state_map),
        bounds=bounds,
        doc=md.description or f"FMU {md.modelName}",
    )


def livetwin_name(fmu_name: str) -> str:
    """The livetwin name of an FMU variable: ``damper.d`` -> ``damper_d``, ``der(x)`` ->
    ``der_x`` (a letter first, then letters, digits and ``_``; at most 64 characters)."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", fmu_name).strip("_")
    if not name or not name[0].isalpha():
        name = f"v_{name}"
    return name[:64]


def _mapping(kind: str, names: Names, default: list[str], pairs: bool = False) -> dict:
    """``livetwin name -> FMU variable`` from a mapping, a list of FMU names or the default."""
    if names is None:
        names = default
    if isinstance(names, str):
        names = [names]
    if isinstance(names, Mapping):
        mapping = dict(names)
        count = len(mapping)
    else:
        listed = list(names)
        mapping = {livetwin_name(n) if isinstance(n, str) else n: n for n in listed}
        count = len(listed)
    bad = [n for n in mapping if not isinstance(n, str) or not n]
    values = [v for v in mapping.values() if not (pairs and isinstance(v, tuple | list))]
    if bad or len(mapping) != count or any(not isinstance(v, str) or not v for v in values):
        raise InvalidInput(
            f"{kind} names must be distinct non-empty strings",
            field=kind,
            fix=f"name them yourself: {kind}={{livetwin name: FMU variable}} (in an fmu: "
            f"reference {kind}=fmu.variable:name,...)",
        )
    return mapping


def _check_variable(have: dict, fmu_name: str, kind: str, settable: bool) -> None:
    var = have.get(fmu_name)
    if var is None:
        close = [n for n in have if n.lower() == str(fmu_name).lower()]
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise InvalidInput(
            f"the FMU has no variable {fmu_name!r}{hint}",
            field=kind,
            fix=f"map {kind} to variables of the FMU: {', '.join(sorted(have))}",
        )
    if var.type not in _REAL or var.shape:
        raise InvalidInput(
            f"FMU variable {fmu_name!r} is a {var.type} {var.shape or 'scalar'}; only scalar "
            "Real/Float64 variables can be mapped",
            field=kind,
            fix="map a scalar Real variable",
        )
    has_start = var.causality in ("parameter", "input") or var.initial in ("exact", "approx")
    if settable and not has_start:
        raise InvalidInput(
            f"FMU variable {fmu_name!r} (causality {var.causality}) cannot be set",
            field=kind,
            fix="map parameters and inputs to FMU parameters, inputs or start values",
        )


def _check_options(step, tol, max_steps, retries, workers) -> None:
    checks = [
        ("step", step is None or (isinstance(step, int | float) and step > 0), "a time > 0"),
        ("tol", isinstance(tol, int | float) and tol > 0, "a number > 0"),
        ("max_steps", isinstance(max_steps, int) and max_steps >= 1, "an integer >= 1"),
        ("retries", isinstance(retries, int) and retries >= 0, "an integer >= 0"),
        ("workers", isinstance(workers, int) and workers >= 0, "an integer >= 0"),
    ]
    for fld, ok, what in checks:
        if not ok:
            raise InvalidInput(f"{fld} must be {what}", field=fld, fix=f"pass {fld} as {what}")


def _float(value: object) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


# -- references in twin type specs ---------------------------------------------------------------


def _names(value: str) -> dict[str, str]:
    """``a.b:x,c.d`` -> ``{"x": "a.b", "c_d": "c.d"}`` (FMU variable, then its livetwin name)."""
    mapping: dict[str, str] = {}
    for item in filter(None, value.split(",")):
        fmu_name, _, name = item.partition(":")
        mapping[name or livetwin_name(fmu_name)] = fmu_name
    return mapping


_OPTIONS = {
    "mode": str,
    "solver": str,
    "rtol": float,
    "step": float,
    "steady": lambda v: v.lower() in ("1", "true", "yes"),
    "tol": float,
    "max_steps": int,
    "retries": int,
    "workers": int,
    "params": _names,
    "inputs": _names,
    "outputs": _names,
    "states": _names,
}


def _inside(path: Path, folders: Sequence[str | os.PathLike], given: str) -> Path:
    """`path` when it is a file inside one of `folders` (symbolic links followed), else the
    one error that says neither "outside" nor "missing"."""

    def within(p: str, roots: list[str]) -> bool:
        return any(os.path.commonpath([p, root]) == root for root in roots)

    plain = os.path.abspath(path)  # no file system access before the path is known to be inside
    if within(plain, [os.path.abspath(f) for f in folders]):
        real = os.path.realpath(plain)
        if within(real, [os.path.realpath(f) for f in folders]) and os.path.isfile(real):
            return Path(real)
    raise InvalidInput(
        f"no FMU file {given!r} in the server's FMU folders",
        field="model",
        fix="put the .fmu file in an FMU folder (LIVETWIN_FMU_DIRS; by default the data "
        "directory's fmus/) and give its path there",
    )


def resolve_fmu_ref(
    ref: str,
    base: str | os.PathLike | None = None,
    *,
    inside: Sequence[str | os.PathLike] | None = None,
) -> Model:
    """The `Model` of ``"fmu:path/to/model.fmu[?option=value&...]"`` (cached per file version).

    A relative path is taken from `base` (default: the working directory). With `inside` (the
    configured FMU folders) the file must lie in one of them, and a path outside them gets the
    very error of a missing file, so the answer never tells whether it exists. Names come from the
    FMU's modelDescription (parameters, inputs, outputs); options are those of `fmu_model`
    (``mode, solver, rtol, step, steady, tol, max_steps, retries, workers``, and ``params,
    inputs, outputs, states`` as comma-separated FMU names, each optionally renamed with
    ``:name``: ``params=damper.d:d,spring.c:c``).
    """
    body = ref[4:] if ref.startswith("fmu:") else ref
    file_part, _, query = body.partition("?")
    if not file_part:
        raise InvalidInput(
            f"FMU reference {ref!r} has no path", field="model", fix="write 'fmu:path/to/x.fmu'"
        )
    path = Path(file_part)
    if not path.is_absolute():
        path = Path(base or os.getcwd()) / path
    if inside is not None:
        path = _inside(path, inside, file_part)
    path_s = str(path.resolve())
    options: dict = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in _OPTIONS:
            raise InvalidInput(
                f"unknown FMU option {key!r} in {ref!r}",
                field="model",
                fix=f"use options among {', '.join(_OPTIONS)}",
            )
        try:
            options[key] = _OPTIONS[key](value)
        except ValueError:
            raise InvalidInput(
                f"FMU option {key}={value!r} is not valid", field="model", fix=f"fix {key}"
            ) from None
    key = (_file_key(path_s), tuple(sorted((k, str(v)) for k, v in options.items())))
    with _LOCK:
        cached = _RESOLVED.get(key)
    if cached is None:
        cached = fmu_model(path_s, name=ref, **options)
        with _LOCK:
            cached = _RESOLVED.setdefault(key, cached)
    return cached
