"""The model interface: one vectorised callable per model, described by names, resolved by name.

A model maps a batch of rows (one row per twin, or per sigma point / ensemble member) to outputs.
There is a single interface with two shapes of callable, told apart by whether it has states:

* steady-state (``states == ()``): ``fn(params[N,p], inputs[N,u], dt) -> outputs[N,m]``
* transient: ``fn(states[N,s], params[N,p], inputs[N,u], dt) -> (new_states[N,s], outputs[N,m])``

`Model.step` always takes and returns states (an ``[N,0]`` array for steady-state models), so the
filters have one code path. Outputs are the values at the *end* of the step (time ``t + dt``);
they include measured outputs and virtual sensors alike (the calibration spec says which are
measured). Inputs are held constant over the step. A model never does I/O and never loops over
rows: all rows go through NumPy at once. A model written against the array namespace of its
arguments (`livetwin.models.xp`, declared with ``array_api=True``) also runs on the compiled
JAX backend of the filters.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from livetwin.errors import InvalidInput
from livetwin.settings import DEFAULT_MODEL_PACKAGES, Settings

Bounds = tuple[float | None, float | None]


@dataclass(frozen=True)
class Model:
    """A named vectorised model: its callable and the names of its columns.

    `bounds` gives default bounds of parameters (for example ``(0, None)`` for a drag); a
    calibration may override them. `array_api`: the callable takes its array namespace from its
    arguments (`livetwin.models.xp`), so it runs on NumPy and on `jax.numpy` alike.
    """

    name: str
    fn: Callable
    params: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    states: tuple[str, ...] = ()
    bounds: Mapping[str, Bounds] = field(default_factory=dict)
    doc: str = ""
    array_api: bool = False

    @property
    def transient(self) -> bool:
        """True when the model carries internal state from one step to the next."""
        return bool(self.states)

    def step(
        self, states: np.ndarray, params: np.ndarray, inputs: np.ndarray, dt: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Advance all rows by `dt`: ``(new_states[N,s], outputs[N,m])`` for either shape."""
        if self.states:
            return self.fn(states, params, inputs, dt)
        return states, self.fn(params, inputs, dt)

    def index(self, kind: str, names: object) -> list[int]:
        """Column indices of `names` among this model's `kind` ("params", "outputs", ...)."""
        have = getattr(self, kind)
        if isinstance(names, str):
            names = [names]
        out = []
        for name in names:  # type: ignore[union-attr]
            if name not in have:
                raise InvalidInput(
                    f"model {self.name!r} has no {kind[:-1]} {name!r}",
                    field=kind,
                    fix=f"use one of {', '.join(have) or '(none)'}",
                )
            out.append(have.index(name))
        return out


def model(
    *,
    params: tuple[str, ...] | list[str],
    inputs: tuple[str, ...] | list[str],
    outputs: tuple[str, ...] | list[str],
    states: tuple[str, ...] | list[str] = (),
    bounds: Mapping[str, Bounds] | None = None,
    array_api: bool = False,
) -> Callable[[Callable], Callable]:
    """Decorator that names a model function's columns (the function itself is unchanged);
    ``array_api=True`` says it is written against `livetwin.models.xp` (NumPy or JAX).

    >>> @model(params=["k"], inputs=["x"], outputs=["y"])
    ... def gain(params, inputs, dt):
    ...     return params[:, :1] * inputs[:, :1]
    """

    def wrap(fn: Callable) -> Callable:
        fn.params = tuple(params)  # type: ignore[attr-defined]
        fn.inputs = tuple(inputs)  # type: ignore[attr-defined]
        fn.outputs = tuple(outputs)  # type: ignore[attr-defined]
        fn.states = tuple(states)  # type: ignore[attr-defined]
        fn.bounds = dict(bounds or {})  # type: ignore[attr-defined]
        fn.array_api = bool(array_api)  # type: ignore[attr-defined]
        return fn

    return wrap


def resolve_model(ref: str | Model | Callable) -> Model:
    """A `Model` from ``"package.module:function"``, a decorated function or a `Model`.

    Raises `InvalidInput` when the reference does not resolve or the object lacks names.
    """
    if isinstance(ref, Model):
        return ref
    if isinstance(ref, str) and ref.startswith("fmu:"):
        from livetwin.models.fmu import resolve_fmu_ref  # FMPy is an optional extra

        return resolve_fmu_ref(ref)
    if isinstance(ref, str):
        obj = _import(ref)
        name = ref
    elif callable(ref):
        obj = ref
        name = f"{getattr(ref, '__module__', '?')}:{getattr(ref, '__qualname__', repr(ref))}"
    else:
        raise InvalidInput(
            f"a model must be a 'module:function' name or a callable, not {type(ref).__name__}",
            field="model",
            fix="pass a name such as 'livetwin.examples.rollers:roller_line'",
        )
    if isinstance(obj, Model):
        return obj
    if not callable(obj):
        raise InvalidInput(f"model {name!r} is not callable", field="model", fix=_FIX_NAMES)
    missing = [k for k in ("params", "inputs", "outputs") if not hasattr(obj, k)]
    if missing:
        raise InvalidInput(
            f"model {name!r} does not declare its {', '.join(missing)} names",
            field="model",
            fix=_FIX_NAMES,
        )
    spec = {k: tuple(getattr(obj, k)) for k in ("params", "inputs", "outputs")}
    states = tuple(getattr(obj, "states", ()))
    for kind, names in {**spec, "states": states}.items():
        if not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
            raise InvalidInput(
                f"model {name!r} has invalid {kind} names {names!r}",
                field="model",
                fix="names must be distinct non-empty strings",
            )
    if not spec["outputs"]:
        raise InvalidInput(f"model {name!r} has no outputs", field="model", fix=_FIX_NAMES)
    return Model(
        name=name,
        fn=obj,
        states=states,
        bounds=dict(getattr(obj, "bounds", {}) or {}),
        doc=(obj.__doc__ or "").strip().split("\n")[0],
        array_api=bool(getattr(obj, "array_api", False)),
        **spec,
    )


@dataclass(frozen=True)
class ModelRefs:
    """Resolves model references that come as data (a type's `model.ref`, a registry version's
    `ref`): "module:function" only from `packages` (nothing else is imported), "fmu:" paths only
    inside `fmu_dirs`. Callables and `Model`s pass as they are; `resolve_model` itself trusts
    its caller (Python code that could import anything anyway)."""

    packages: tuple[str, ...] | None = DEFAULT_MODEL_PACKAGES  # None: any module
    fmu_dirs: tuple[Path, ...] = ()
    model_dirs: tuple[Path, ...] = ()

    @classmethod
    def configured(cls, settings: Settings, data_dir: str | Path) -> ModelRefs:
        """From `settings.model_packages`, `settings.fmu_dirs` (default: the data directory's
        `fmus/` and `artifacts/` folders) and `settings.model_dirs` (default: its `models/`)."""
        data = Path(data_dir)
        dirs = settings.fmu_dirs or (data / "fmus", data / "artifacts")
        modules = settings.model_dirs or (data / "models",)
        return cls(
            settings.model_packages or DEFAULT_MODEL_PACKAGES,
            tuple(map(Path, dirs)),
            tuple(map(Path, modules)),
        )

    def trusting_modules(self) -> ModelRefs:
        """The same FMU folders, any module: for declarations checked when they were stored
        (a narrower LIVETWIN_MODEL_PACKAGES never keeps a data directory from opening)."""
        return replace(self, packages=None)

    def __call__(self, ref: str | Model | Callable) -> Model:
        if isinstance(ref, str) and ref.startswith("fmu:"):
            from livetwin.models.fmu import resolve_fmu_ref

            base = self.fmu_dirs[0] if self.fmu_dirs else None
            return resolve_fmu_ref(ref, base, inside=self.fmu_dirs)
        if isinstance(ref, str) and self._from_model_dirs(ref):
            return resolve_model(ref)
        if isinstance(ref, str) and self.packages is not None:
            module, _, attr = ref.partition(":")
            if any(part.startswith("_") for part in attr.split(".")):
                raise InvalidInput(
                    f"model name {ref!r} reaches a private attribute",
                    field="model",
                    fix="name a public model function: 'package.module:function'",
                )
            if not any(module == p or module.startswith(p + ".") for p in self.packages):
                raise InvalidInput(
                    f"model module {module!r} is not in a configured model package",
                    field="model",
                    fix=f"use a model from {', '.join(self.packages)}, or add its package to "
                    "LIVETWIN_MODEL_PACKAGES on the server",
                )
        return resolve_model(ref)

    def _from_model_dirs(self, ref: str) -> bool:
        """Whether `ref`'s top-level module is a file or package in a model folder; if so, that
        folder goes on the import path (last, so it never shadows an installed module)."""
        top = ref.partition(":")[0].split(".")[0]
        for folder in self.model_dirs:
            found = (folder / f"{top}.py").is_file() or (folder / top / "__init__.py").is_file()
            if top and found:
                if str(folder) not in sys.path:
                    sys.path.append(str(folder))
                return True
        return False


_FIX_NAMES = (
    "decorate the function with @livetwin.models.model(params=..., inputs=..., outputs=...) "
    "or define a livetwin.models.Model"
)


def _import(ref: str) -> object:
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise InvalidInput(
            f"model name {ref!r} is not of the form 'module:function'",
            field="model",
            fix="write it as 'package.module:function'",
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInput(
            f"model module {module_name!r} cannot be imported: {exc}",
            field="model",
            fix="check the module name and that it is installed",
        ) from None
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InvalidInput(
                f"module {module_name!r} has no attribute {attr!r}",
                field="model",
                fix="check the function name after the ':'",
            )
        obj = getattr(obj, part)
    return obj
