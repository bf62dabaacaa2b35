"""Snapshots of engine state: one `.npz` file per snapshot, written atomically, newest kept.

A snapshot records the journal sequence number it covers; start-up loads the newest one and
replays only the journal after it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from livetwin.engine.engine import Engine
from livetwin.engine.state import export_state, import_state
from livetwin.models.base import resolve_model
from livetwin.spec.types import CompiledType, TwinTypeSpec, compile_type

KEEP = 2


def capture(engine: Engine, seq: int) -> tuple[dict, dict[str, np.ndarray]]:
    """Copy the engine's state (call under the engine lock; cheap compared with writing)."""
    meta: dict = {"seq": seq, "next_uid": engine.next_uid, "types": []}
    arrays: dict[str, np.ndarray] = {}
    for i, (name, st) in enumerate(engine.states.items()):
        type_meta, type_arrays = export_state(st)
        spec = st.ctype.spec.model_dump(mode="json")
        meta["types"].append({"name": name, "version": st.ctype.version, "spec": spec, **type_meta})
        arrays.update({f"t{i}/{key}": a for key, a in type_arrays.items()})
    return meta, arrays


def file_name(seq: int) -> str:
    return f"snapshot-{seq:012d}.npz"


def encode(meta: dict, arrays: dict[str, np.ndarray]) -> bytes:
    """A captured snapshot as npz bytes."""
    buffer = io.BytesIO()
    header = np.frombuffer(msgspec.msgpack.encode(meta), dtype=np.uint8)
    np.savez(buffer, __meta__=header, **arrays)
    return buffer.getvalue()


def write_atomic(path: Path, data: bytes) -> None:
    """Write a file atomically: a temporary file, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write(directory: Path, seq: int, data: bytes) -> Path:
    """Write an encoded snapshot atomically (temp file, fsync, rename) and prune old ones."""
    path = directory / file_name(seq)
    write_atomic(path, data)
    for old in sorted(directory.glob("snapshot-*.npz"))[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def load_newest(
    directory: Path,
    kept: tuple[int, bytes] | None = None,
    models: Callable = resolve_model,
    accept: Callable[[dict, Any], bool] | None = None,
) -> tuple[Engine, int] | None:
    """The engine restored from the newest readable snapshot and its seq, or None.

    `kept` is the store's newest snapshot (seq, bytes), used when it is newer than the files;
    `models` resolves the types' model references (a core passes its `ModelRefs`); with
    `accept(meta, arrays)`, the newest one it accepts, asked before the state is restored
    (`arrays` read lazily by name: a back-test wants one before its window).
    """
    paths = sorted(directory.glob("snapshot-*.npz"), reverse=True)
    sources: list = list(paths)
    if kept is not None and (not paths or kept[0] > int(paths[0].stem.split("-")[1])):
        sources.insert(0, io.BytesIO(kept[1]))
    for source in sources:
        try:
            loaded = _load(source, models, accept)
        except (OSError, ValueError, KeyError, msgspec.DecodeError):
            continue  # a damaged snapshot: fall back to an older one or to a full replay
        if loaded is not None:
            return loaded
    return None


def load_bytes(
    data: bytes, models: Callable = resolve_model, accept: Callable | None = None
) -> tuple[Engine, int] | None:
    """The engine of one encoded snapshot and its seq (None when `accept` refuses it)."""
    return _load(io.BytesIO(data), models, accept)


def _load(source, models: Callable, accept=None) -> tuple[Engine, int] | None:
    with np.load(source, allow_pickle=False) as npz:
        meta = msgspec.msgpack.decode(npz["__meta__"].tobytes())
        if accept is not None and not accept(meta, npz):
            return None
        engine = Engine()
        engine.next_uid = meta["next_uid"]
        for i, t in enumerate(meta["types"]):
            spec = TwinTypeSpec.model_validate(t["spec"])
            ctype: CompiledType = compile_type(spec, t["version"], resolve_model=models)
            prefix = f"t{i}/"
            arrays = {k[len(prefix) :]: npz[k] for k in npz.files if k.startswith(prefix)}
            st = import_state(ctype, t, arrays)
            engine.states[t["name"]] = st
            engine.type_of.update(dict.fromkeys(st.ids, t["name"]))
    return engine, meta["seq"]
