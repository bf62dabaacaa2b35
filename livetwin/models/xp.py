"""The array-namespace port of models: one model source for NumPy and for `jax.numpy`.

A model declared with ``@model(..., array_api=True)`` takes its namespace from its arguments
(``xp = namespace(states, params)``) and uses only functions both namespaces share, with
functional updates (no ``x[i] = ...``, no ``out=``): called with NumPy arrays it is an ordinary
NumPy model; traced by the compiled filter backend (`livetwin.calibrate.compiled`) it becomes
part of one compiled step. Loops over substeps go through `repeat`, which the compiler keeps
as one loop instead of unrolling it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from types import ModuleType
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def namespace(*arrays: object) -> ModuleType:
    """`jax.numpy` when any argument is a JAX array (traced or concrete), else NumPy."""
    jax = sys.modules.get("jax")  # never imports JAX: a JAX array means it is loaded
    array = getattr(jax, "Array", None)  # None while another thread is still importing JAX
    if array is not None and any(isinstance(a, array) for a in arrays):
        return jax.numpy
    return np


def repeat(xp: ModuleType, times: int, body: Callable[[T], T], value: T) -> T:
    """``value = body(value)`` `times` times: a Python loop on NumPy, one compiled loop on JAX."""
    if xp is np:
        for _ in range(times):
            value = body(value)
        return value
    from jax import lax

    return lax.fori_loop(0, times, lambda _, v: body(v), value)


def transposed(a):
    """``a.T`` laid out row by row: contiguous on NumPy, where mixed memory orders make the
    column-wise arithmetic of an ODE right-hand side several times slower; JAX picks its own."""
    return np.ascontiguousarray(a.T) if isinstance(a, np.ndarray) else a.T
