"""A type's history over a time range as a Parquet file: one row per stored observation with
the twin id, the time (UTC, ms) and every name of the type; pandas and polars read it as is.

The file is written from record batches, one per twin (`history_batches`), so the same writer
serves a single node (its own twins) and a cluster front end (each shard's twins in turn)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from livetwin.errors import InvalidInput
from livetwin.query import Query, time_arg
from livetwin.spec.types import CompiledType

ROW_GROUP = 200_000  # rows buffered before a row group is written


def export_parquet(
    query: Query,
    type_name: str,
    out: str | Path | IO[bytes],
    *,
    start: Any = None,
    end: Any = None,
    names: list[str] | None = None,
) -> dict:
    """Write the history of every twin of `type_name` within [start, end) to `out`; counts."""
    ctype, twins, uids, _, _ = query.type_rows(type_name, lambda ct: [])
    names, start_ms, end_ms = export_range(ctype, start, end, names)
    batches = history_batches(query, type_name, twins, uids.tolist(), names, start_ms, end_ms)
    rows = write_parquet(out, names, batches)
    return {"type": type_name, "twins": len(twins), "rows": rows, "names": names}


def export_range(
    ctype: CompiledType, start: Any, end: Any, names: list[str] | None
) -> tuple[list[str], int, int]:
    """The names (default: all of the type's) and the [from, to) range in ms of an export,
    checked: InvalidInput naming the field otherwise."""
    columns = list(ctype.columns)
    names = list(names) if names else columns
    unknown = [n for n in names if n not in columns]
    if unknown:
        raise InvalidInput(
            f"'{unknown[0]}' is not a name of type '{ctype.name}'",
            field="names",
            fix=f"use some of: {', '.join(columns)}",
        )
    start_ms = time_arg(start, "from", 0)
    end_ms = time_arg(end, "to", 2**62)
    if end_ms <= start_ms:
        raise InvalidInput("'to' must be after 'from'", field="to", fix="swap or widen the range")
    return names, start_ms, end_ms


def schema_of(names: list[str]) -> pa.Schema:
    return pa.schema(
        [("twin", pa.string()), ("ts", pa.timestamp("ms", tz="UTC"))]
        + [(n, pa.float64()) for n in names]
    )


def history_batches(
    query: Query,
    type_name: str,
    twins: list[str],
    uids: list[int],
    names: list[str],
    start_ms: int,
    end_ms: int,
) -> Iterator[pa.RecordBatch]:
    """One record batch per twin with history in the range, in the order given."""
    schema = schema_of(names)
    for twin, uid in zip(twins, uids, strict=True):
        ts, _, values = query.history_rows(uid, type_name, names, start_ms, end_ms)
        if not len(ts):
            continue
        arrays = [pa.array([twin] * len(ts), pa.string()), pa.array(ts, schema.field(1).type)]
        arrays += [pa.array(values[k], from_pandas=True) for k in range(len(names))]
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)


def write_parquet(
    out: str | Path | IO[bytes], names: list[str], batches: Iterable[pa.RecordBatch]
) -> int:
    """Write `batches` to `out` as Parquet in row groups of about ROW_GROUP rows; the rows."""
    rows = 0
    buffered: list[pa.RecordBatch] = []
    with pq.ParquetWriter(out, schema_of(names), compression="zstd") as writer:
        for batch in batches:
            buffered.append(batch)
            rows += batch.num_rows
            if sum(b.num_rows for b in buffered) >= ROW_GROUP:
                writer.write_table(pa.Table.from_batches(buffered))
                buffered = []
        if buffered:
            writer.write_table(pa.Table.from_batches(buffered))
    return rows
