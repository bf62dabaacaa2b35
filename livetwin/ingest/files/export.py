"""A type's history over a time range as a Parquet file: one row per stored observation with
the twin id, the time (UTC, ms) and every name of the type; pandas and polars read it as is."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from livetwin.errors import InvalidInput
from livetwin.query import Query, time_arg

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
    columns = list(ctype.columns)
    names = list(names) if names else columns
    unknown = [n for n in names if n not in columns]
    if unknown:
        raise InvalidInput(
            f"'{unknown[0]}' is not a name of type '{type_name}'",
            field="names",
            fix=f"use some of: {', '.join(columns)}",
        )
    start_ms = time_arg(start, "from", 0)
    end_ms = time_arg(end, "to", 2**62)
    if end_ms <= start_ms:
        raise InvalidInput("'to' must be after 'from'", field="to", fix="swap or widen the range")
    schema = pa.schema(
        [("twin", pa.string()), ("ts", pa.timestamp("ms", tz="UTC"))]
        + [(n, pa.float64()) for n in names]
    )
    rows = 0
    buffered: list[pa.RecordBatch] = []
    with pq.ParquetWriter(out, schema, compression="zstd") as writer:
        for twin, uid in zip(twins, uids.tolist(), strict=True):
            ts, _, values = query.history_rows(uid, type_name, names, start_ms, end_ms)
            if not len(ts):
                continue
            arrays = [pa.array([twin] * len(ts), pa.string()), pa.array(ts, schema.field(1).type)]
            arrays += [pa.array(values[k], from_pandas=True) for k in range(len(names))]
            buffered.append(pa.RecordBatch.from_arrays(arrays, schema=schema))
            rows += len(ts)
            if sum(b.num_rows for b in buffered) >= ROW_GROUP:
                writer.write_table(pa.Table.from_batches(buffered))
                buffered = []
        if buffered:
            writer.write_table(pa.Table.from_batches(buffered))
    return {"type": type_name, "twins": len(twins), "rows": rows, "names": names}
