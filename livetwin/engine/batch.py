"""The columnar batch: observations of one twin type, as the journal stores and the engine applies.

A batch holds M observations; `values[j, i]` is the value of `names[j]` in observation i, NaN
where that observation did not carry the name (NaN input is rejected at ingest, so NaN always
means "absent").
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import msgspec
import numpy as np


@dataclass
class Batch:
    type: str
    twins: list[str]
    ts: np.ndarray  # int64 epoch milliseconds, shape (M,)
    names: tuple[str, ...]
    values: np.ndarray  # float64, shape (len(names), M)
    parents: list[str | None] | None = None
    keys: list[str | None] | None = None
    uids: np.ndarray | None = None  # int64 (M,): the twins' engine ids, set once journaled
    attrs: dict[str, list[str | None]] | None = None  # text attributes set (None: not given)

    def __len__(self) -> int:
        return len(self.twins)

    def take(self, index: np.ndarray) -> Batch:
        """The sub-batch of the observations at `index` (in that order)."""
        idx = index.tolist()
        return Batch(
            self.type,
            [self.twins[i] for i in idx],
            self.ts[index],
            self.names,
            self.values[:, index],
            None if self.parents is None else [self.parents[i] for i in idx],
            None if self.keys is None else [self.keys[i] for i in idx],
            None if self.uids is None else self.uids[index],
            None if self.attrs is None else {n: [v[i] for i in idx] for n, v in self.attrs.items()},
        )

    @staticmethod
    def concat(batches: list[Batch]) -> Batch:
        """One batch of several batches of the same type, in order (names united)."""
        if len(batches) == 1:
            return batches[0]
        names = tuple(dict.fromkeys(n for b in batches for n in b.names))
        total = sum(len(b) for b in batches)
        values = np.full((len(names), total), np.nan)
        start = 0
        for b in batches:
            rows = [names.index(n) for n in b.names]
            values[rows, start : start + len(b)] = b.values
            start += len(b)
        has_parents = any(b.parents is not None for b in batches)
        has_keys = any(b.keys is not None for b in batches)
        attrs = None
        if any(b.attrs for b in batches):
            named = dict.fromkeys(n for b in batches for n in (b.attrs or ()))
            attrs = {
                n: [v for b in batches for v in (b.attrs or {}).get(n) or [None] * len(b)]
                for n in named
            }
        return Batch(
            batches[0].type,
            list(chain.from_iterable(b.twins for b in batches)),
            np.concatenate([b.ts for b in batches]),
            names,
            values,
            [p for b in batches for p in (b.parents or [None] * len(b))] if has_parents else None,
            [k for b in batches for k in (b.keys or [None] * len(b))] if has_keys else None,
            np.concatenate([b.uids for b in batches])
            if all(b.uids is not None for b in batches)
            else None,
            attrs,
        )


class _Wire(msgspec.Struct, array_like=True):
    type: str
    twins: list[str]
    ts: bytes
    names: list[str]
    values: bytes
    parents: list[str | None] | None
    keys: list[str | None] | None
    uids: bytes | None = None
    attrs: dict[str, list[str | None]] | None = None


class _WireUids(msgspec.Struct, array_like=True):
    """`_Wire` with everything but the uids left undecoded."""

    type: msgspec.Raw
    twins: msgspec.Raw
    ts: msgspec.Raw
    names: msgspec.Raw
    values: msgspec.Raw
    parents: msgspec.Raw
    keys: msgspec.Raw
    uids: bytes | None = None  # (then attrs: ignored)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(_Wire)
_uids_decoder = msgspec.msgpack.Decoder(_WireUids)


def encode_batch(batch: Batch) -> bytes:
    """Compact binary form for the journal (msgpack with raw little-endian arrays)."""
    wire = _Wire(
        batch.type,
        batch.twins,
        np.ascontiguousarray(batch.ts, dtype="<i8").tobytes(),
        list(batch.names),
        np.ascontiguousarray(batch.values, dtype="<f8").tobytes(),
        batch.parents,
        batch.keys,
        None if batch.uids is None else np.ascontiguousarray(batch.uids, dtype="<i8").tobytes(),
        batch.attrs or None,
    )
    return _encoder.encode(wire)


def decode_batch(blob: bytes) -> Batch:
    w = _decoder.decode(blob)
    ts = np.frombuffer(w.ts, dtype="<i8").astype(np.int64)
    values = np.frombuffer(w.values, dtype="<f8").reshape(len(w.names), len(w.twins))
    uids = None if w.uids is None else np.frombuffer(w.uids, dtype="<i8").astype(np.int64)
    return Batch(
        w.type, w.twins, ts, tuple(w.names), values.copy(), w.parents, w.keys, uids, w.attrs
    )


def batch_uids(blob: bytes) -> np.ndarray | None:
    """The twins' uids of an encoded batch (None before it was journaled), without decoding
    the rest: cheap enough to skip batches of twins nobody asked for."""
    uids = _uids_decoder.decode(blob).uids
    return None if uids is None else np.frombuffer(uids, dtype="<i8")
