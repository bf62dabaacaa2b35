"""Record batches of a file -> checked observation batches, column by column: timestamps,
twin ids and values are converted with Arrow compute kernels, and only a column that fails
the fast conversion is walked cell by cell to say which row is wrong and why."""

from __future__ import annotations

import string
from collections.abc import Mapping
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from livetwin.errors import InvalidInput, excerpt
from livetwin.ingest.files.mapping import EPOCH_FORMATS, ImportMapping
from livetwin.ingest.observations import Normalized, Rejection, normalize_columns
from livetwin.spec.types import CompiledType
from livetwin.timefmt import parse_ts

_EPOCH = datetime(1970, 1, 1, tzinfo=ZoneInfo("UTC"))


class Converter:
    """Turns the record batches of one file into `Normalized` work for the writer.

    Rows are numbered from 1 (the first data row; a header row is not counted); a row's
    idempotency key is `<file key>:<row>`, so importing the same file again stores nothing twice.
    """

    def __init__(
        self,
        mapping: ImportMapping,
        types: Mapping[str, CompiledType],
        *,
        file_key: str,
        now_ms: int,
        max_future_ms: int,
    ):
        self.mapping, self.types, self.file_key = mapping, types, file_key
        self.now_ms, self.max_future_ms = now_ms, max_future_ms
        self.zone = mapping.timezone
        columns = mapping.columns()
        self.field_of = {"ts": mapping.ts_column, "parent": mapping.parent_column}
        self.field_of["twin"] = mapping.twin_column or "twin"
        self.field_of["type"] = mapping.type_column or "type"
        if mapping.values:
            self.field_of |= {f"values.{p}": col for p, col in mapping.values.items()}
        self._columns = columns

    def check_columns(self, names: list[str]) -> None:
        """Every column the mapping names must be in the file, and a constant type must be
        declared with the mapped properties: checked before anything is imported."""
        present = set(names)
        for column, field in self._columns.items():
            if column not in present:
                raise InvalidInput(
                    f"the file has no column {excerpt(column, 100)} (named by {field}); it has "
                    f"{', '.join(names[:30])[:400]}",
                    field=field,
                    fix="name one of the file's columns in the mapping (names are case-sensitive)",
                )
        if self.mapping.type is not None:
            ctype = self._ctype(self.mapping.type)
            unknown = sorted(set(self.mapping.values or ()) - set(ctype.inputs))
            if unknown:
                raise InvalidInput(
                    f"'{unknown[0]}' is not a property or parameter of type '{ctype.name}' "
                    f"(it has {', '.join(ctype.inputs)})",
                    field=f"values.{unknown[0]}",
                    fix="map the type's names to columns, or add the property to the type",
                )

    def _ctype(self, name: str) -> CompiledType:
        ctype = self.types.get(name)
        if ctype is None:
            raise InvalidInput(
                f"unknown twin type '{name}'",
                field="type",
                fix=f"declare it first with PUT /api/types/{name}",
            )
        return ctype

    def convert(self, batch: pa.RecordBatch, first_row: int, *, first: bool = False) -> Normalized:
        """One record batch as per-type batches; bad rows become rejections with their row
        number. `first`: a timestamp column none of whose cells parse is a mapping error."""
        n = batch.num_rows
        rows = np.arange(first_row, first_row + n, dtype=np.int64)
        problems: dict[int, tuple[str, str, str]] = {}  # position -> (field, error, fix)
        ts = self._timestamps(batch.column(self.mapping.ts_column), problems)
        if first and n and len(problems) == n:
            self._bad_format(batch.column(self.mapping.ts_column))
        twins = self._twins(batch, problems)
        parents = None
        if self.mapping.parent_column:
            parents = pc.cast(batch.column(self.mapping.parent_column), pa.string()).to_pylist()
        if self.mapping.type is not None:
            groups = {self.mapping.type: np.arange(n)}
        else:
            names = pc.cast(batch.column(self.mapping.type_column), pa.string()).to_numpy(
                zero_copy_only=False
            )
            groups = {}
            for pos, name in enumerate(names.tolist()):
                groups.setdefault(name, []).append(pos)
        result = Normalized()
        if self.mapping.layout == "long":
            slots_of = self._long_values(batch, problems)
        else:
            wide = {
                p: self._numbers(batch.column(c), c, problems)
                for p, c in self.mapping.values.items()
            }
        for type_name, positions in groups.items():
            positions = np.asarray(positions, dtype=np.int64)
            ctype = self.types.get(type_name) if type_name is not None else None
            if ctype is None:
                for pos in positions.tolist():
                    problems.setdefault(
                        pos,
                        (
                            self.field_of["type"],
                            f"unknown twin type {excerpt(type_name, 60)}",
                            "declare the type first, or fix the type column",
                        ),
                    )
                continue
            values = np.full((len(ctype.inputs), len(positions)), np.nan)
            if self.mapping.layout == "long":
                self._place_long(ctype, slots_of, positions, values, problems)
            else:
                slots = _slots(ctype)
                for prop, column in wide.items():
                    if prop in slots:
                        values[slots[prop]] = column[positions]
                    else:
                        for k in np.flatnonzero(~np.isnan(column[positions])).tolist():
                            problems.setdefault(
                                int(positions[k]),
                                _unknown(prop, ctype, self.field_of[f"values.{prop}"]),
                            )
            keep = np.array([p not in problems for p in positions.tolist()], dtype=bool)
            kept = positions[keep]
            if not len(kept):
                continue
            idx = kept.tolist()
            part = normalize_columns(
                ctype,
                [twins[i] for i in idx],
                ts[kept],
                values[:, keep],
                rows[kept],
                parents=None if parents is None else [parents[i] for i in idx],
                keys=[f"{self.file_key}:{r:010d}" for r in rows[kept].tolist()],  # in order
                now_ms=self.now_ms,
                max_future_ms=self.max_future_ms,
            )
            result.batches.extend(part.batches)
            for r in part.rejected:
                r.field = self.field_of.get(r.field, r.field)
                if self.mapping.layout == "long" and (r.field or "").startswith("values."):
                    r.field = self.mapping.value_column
                result.rejected.append(r)
        result.rejected.extend(
            Rejection(int(rows[pos]), *problem) for pos, problem in problems.items()
        )
        result.rejected.sort(key=lambda r: r.index)
        return result

    # ---- columns -----------------------------------------------------------------------

    def _twins(self, batch: pa.RecordBatch, problems: dict) -> list:
        if self.mapping.twin_column is not None:
            column = pc.cast(batch.column(self.mapping.twin_column), pa.string())
        else:
            parts = []
            for literal, name, _, _ in _template(self.mapping.twin):
                if literal:
                    parts.append(pa.scalar(literal))
                if name is not None:
                    parts.append(pc.cast(batch.column(name), pa.string()))
            if all(isinstance(p, pa.Scalar) for p in parts):  # a constant
                return [self.mapping.twin] * batch.num_rows
            column = pc.binary_join_element_wise(*parts, "")
        for pos in np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False)).tolist():
            problems.setdefault(
                pos, (self.field_of["twin"], "the twin id is empty", "fill the twin column")
            )
        encoded = pc.dictionary_encode(column)  # one str per distinct id, shared by its rows
        ids = np.array([*encoded.dictionary.to_pylist(), None], dtype=object)
        codes = pc.fill_null(encoded.indices, len(ids) - 1).to_numpy(zero_copy_only=False)
        return ids[codes].tolist()

    def _numbers(self, column: pa.Array, name: str, problems: dict) -> np.ndarray:
        """A column as float64, NaN where empty; cells that are not numbers are problems."""
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            column = pc.utf8_trim_whitespace(column)
            column = pc.if_else(pc.equal(column, ""), pa.scalar(None, column.type), column)
        try:
            out = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            out = np.full(len(column), np.nan)
            for pos, cell in enumerate(column.to_pylist()):
                if cell is None:
                    continue
                try:
                    out[pos] = float(cell)
                except (TypeError, ValueError):
                    problems.setdefault(
                        pos,
                        (
                            name,
                            f"non-numeric value {excerpt(cell, 40)}",
                            "write a number or leave the cell empty",
                        ),
                    )
        out = np.array(out, dtype=np.float64)
        for pos in np.flatnonzero(np.isinf(out)).tolist():
            problems.setdefault(
                pos, (name, "infinity is not a valid value", "leave the cell empty when unknown")
            )
            out[pos] = np.nan
        return out

    def _long_values(self, batch: pa.RecordBatch, problems: dict):
        names = pc.cast(batch.column(self.mapping.name_column), pa.string()).to_pylist()
        renames = self.mapping.names or {}
        values = self._numbers(
            batch.column(self.mapping.value_column), self.mapping.value_column, problems
        )
        return [renames.get(n, n) for n in names], values

    def _place_long(self, ctype, slots_of, positions, values, problems) -> None:
        names, numbers = slots_of
        slots = _slots(ctype)
        for k, pos in enumerate(positions.tolist()):
            slot = slots.get(names[pos]) if names[pos] is not None else None
            if slot is None:
                problems.setdefault(pos, _unknown(names[pos], ctype, self.mapping.name_column))
            else:
                values[slot, k] = numbers[pos]

    def _timestamps(self, column: pa.Array, problems: dict) -> np.ndarray:
        """Epoch ms per row (0 where bad: such rows are problems)."""
        fmt = self.mapping.ts_format
        field = self.mapping.ts_column
        if fmt in EPOCH_FORMATS:
            numbers = self._numbers(column, field, problems)
            ms = np.round(numbers * EPOCH_FORMATS[fmt])
            bad = ~np.isfinite(ms) | (np.abs(ms) > 2**62)
        else:
            stamps = self._stamps(column, fmt)
            bad = stamps.is_null().to_numpy(zero_copy_only=False)
            ms = pc.fill_null(stamps.cast(pa.int64()), 0).to_numpy(zero_copy_only=False)
        for pos in np.flatnonzero(bad).tolist():
            cell = column[pos].as_py()
            problems.setdefault(
                pos,
                (
                    field,
                    "the timestamp is empty"
                    if cell is None
                    else f"cannot read timestamp {excerpt(cell, 60)} as {fmt}",
                    f"write it as {fmt}, or change ts_format in the mapping",
                ),
            )
        return np.where(bad, 0, ms).astype(np.int64)

    def _stamps(self, column: pa.Array, fmt: str) -> pa.Array:
        """A timestamp[ms, UTC] array (null where a cell does not parse)."""
        utc = pa.timestamp("ms", tz="UTC")
        if pa.types.is_timestamp(column.type):  # Parquet, Excel
            if column.type.tz is None:
                column = self._localize(column.cast(pa.timestamp("ms")))
            return column.cast(utc)
        if pa.types.is_date(column.type):
            return self._localize(column.cast(pa.timestamp("ms")))
        text = pc.utf8_trim_whitespace(pc.cast(column, pa.string()))
        if fmt != "iso":
            parsed = pc.strptime(text, format=fmt, unit="ms", error_is_null=True)
            return parsed.cast(utc) if parsed.type.tz else self._localize(parsed)
        try:
            return pc.cast(text, utc)  # every cell carries its zone
        except pa.ArrowInvalid:
            pass
        try:
            return self._localize(pc.cast(text, pa.timestamp("ms")))  # none does
        except pa.ArrowInvalid:
            pass
        zone = ZoneInfo(self.zone)
        return pa.array([_iso_ms(cell, zone) for cell in text.to_pylist()], pa.int64()).cast(utc)

    def _localize(self, naive: pa.Array) -> pa.Array:
        return pc.assume_timezone(
            naive, self.zone, ambiguous="earliest", nonexistent="latest"
        ).cast(pa.timestamp("ms", tz="UTC"))

    def _bad_format(self, column: pa.Array) -> None:
        sample = next((c for c in column.to_pylist() if c is not None), None)
        if sample is None:
            return  # empty cells: each row says so
        raise InvalidInput(
            f"no timestamp in the first rows of column '{self.mapping.ts_column}' reads as "
            f"{self.mapping.ts_format} (the first is {excerpt(sample, 60)})",
            field="ts_format",
            fix="set ts_format to iso, epoch_s, epoch_ms, epoch_us or a strptime pattern that "
            "matches it, e.g. '%d.%m.%Y %H:%M'",
        )


def _iso_ms(cell: str | None, zone: ZoneInfo) -> int | None:
    """One ISO 8601 cell (or epoch-ms digits) as epoch ms in `zone` if it has none; None if bad."""
    if cell is None:
        return None
    try:
        if cell.lstrip("-").isdigit():
            return parse_ts(cell)
        dt = datetime.fromisoformat(cell)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=zone)
    return int((dt - _EPOCH).total_seconds() * 1000)


def _template(text: str):
    return string.Formatter().parse(text)


def _slots(ctype: CompiledType) -> dict[str, int]:
    return {name: k for k, name in enumerate(ctype.inputs)}


def _unknown(name, ctype: CompiledType, field: str | None) -> tuple[str, str, str]:
    return (
        field or "values",
        f"{excerpt(name, 60)} is not a property of type '{ctype.name}' "
        f"(it has {', '.join(ctype.inputs)[:300]})",
        "fix the name, or add the property to the type",
    )
