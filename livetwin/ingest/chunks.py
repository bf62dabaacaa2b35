"""Large JSON arrays of observations, normalised in chunks so a request never holds them all as
Python objects: the body is split into element slices (msgspec builds no objects for them),
and each slice of `CHUNK_OBSERVATIONS` is decoded, checked and reduced to columnar batches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec
import numpy as np
import orjson

from livetwin.engine.batch import Batch
from livetwin.ingest.observations import Normalized, normalize
from livetwin.spec.types import CompiledType

CHUNK_OBSERVATIONS = 10_000  # decoded at once: some 12 MB of Python objects
BATCH_ROWS = 20_000  # the writer gets batches of at most this many rows (or one chunk's)
CHUNKED_ABOVE_BYTES = 1 << 20  # smaller bodies are decoded whole
_ELEMENTS = msgspec.json.Decoder(list[msgspec.Raw])


def split_array(raw: bytes) -> list[msgspec.Raw] | None:
    """The elements of a top-level JSON array as undecoded slices of `raw`; None when `raw` is
    not a well-formed JSON array (the whole-body path then says what is wrong)."""
    try:
        return _ELEMENTS.decode(raw)
    except (msgspec.DecodeError, RecursionError):
        return None


def normalize_chunked(
    elements: Sequence[msgspec.Raw],
    types: Mapping[str, CompiledType],
    *,
    now_ms: int,
    max_future_ms: int,
    chunk: int | None = None,
) -> Normalized | None:
    """`normalize` of the decoded elements, `chunk` (default `CHUNK_OBSERVATIONS`) at a
    time, with the same answer and batches (one per type, request indexes included); None when
    orjson refuses what msgspec let through (a lone surrogate, 1e400): the whole-body path
    then answers as it always did."""
    chunk = chunk or CHUNK_OBSERVATIONS
    result = Normalized()
    per_type: dict[str, list[tuple[Batch, np.ndarray]]] = {}  # in order of first appearance
    twin_ids: dict[str, str] = {}
    for start in range(0, len(elements), chunk):
        try:
            rows = orjson.loads(b"[%s]" % b",".join(elements[start : start + chunk]))
        except orjson.JSONDecodeError:
            return None
        part = normalize(rows, types, now_ms=now_ms, max_future_ms=max_future_ms)
        del rows  # this chunk's dicts go before the next chunk's are made
        for batch, index in part.batches:
            batch.twins = [twin_ids.setdefault(t, t) for t in batch.twins]  # one str per twin
            per_type.setdefault(batch.type, []).append((batch, index + start))
        for rejection in part.rejected:
            rejection.index += start
        result.rejected.extend(part.rejected)
    for parts in per_type.values():
        result.batches.extend(_joined(parts, BATCH_ROWS))
    return result


def _joined(parts: list[tuple[Batch, np.ndarray]], most: int) -> list[tuple[Batch, np.ndarray]]:
    """Consecutive batches of one type joined into batches of up to `most` rows (or one, when
    a part is larger): fewer, larger batches for the writer, each of a bounded size."""
    joined, group, rows = [], [], 0
    for batch, index in [*parts, (None, None)]:
        if group and (batch is None or rows + len(batch) > most):
            batches, indexes = zip(*group, strict=True)
            joined.append((Batch.concat(list(batches)), np.concatenate(indexes)))
            group, rows = [], 0
        if batch is not None:
            group.append((batch, index))
            rows += len(batch)
    return joined
