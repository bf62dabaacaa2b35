"""Files as a stream of Arrow record batches, read by pyarrow (CSV, JSON lines, Parquet) and
openpyxl (Excel): a file is checked to be what its format says before anything is read, and is
never held whole in memory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from livetwin.errors import InvalidInput
from livetwin.ingest.files.mapping import FORMATS, ImportMapping

BLOCK_BYTES = 2 << 20  # CSV and JSON lines are parsed this many bytes at a time
CHUNK_ROWS = 100_000  # Parquet and Excel rows per batch
EXTENSIONS = {".csv": "csv", ".txt": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
EXTENSIONS |= {".xlsx": "xlsx", ".parquet": "parquet", ".pq": "parquet"}
_MAGIC = {b"PAR1": "parquet", b"PK\x03\x04": "xlsx"}  # an xlsx file is a zip archive
_NAMES = {"csv": "CSV", "jsonl": "JSON lines", "xlsx": "an Excel workbook", "parquet": "Parquet"}


def file_format(path: Path, mapping: ImportMapping, filename: str | None = None) -> str:
    """The mapping's format, else the one of the file's extension; checked against the bytes."""
    name = filename or path.name
    fmt = mapping.format or EXTENSIONS.get(Path(name).suffix.lower())
    if fmt is None:
        raise InvalidInput(
            f"cannot tell the format of '{name[:100]}' from its extension",
            field="format",
            fix=f"name it .csv, .jsonl, .xlsx or .parquet, or set format ({', '.join(FORMATS)}) "
            "in the mapping",
        )
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    found = _MAGIC.get(head[:4])
    if fmt in ("csv", "jsonl"):
        found = found or ("binary" if b"\x00" in head else None)
        if found is None and fmt == "jsonl" and head.strip() and head.lstrip()[:1] != b"{":
            found = "not JSON lines"
    elif found != fmt:
        found = found or ("text" if b"\x00" not in head[:4096] else "another binary format")
    if found is not None and found != fmt:
        raise InvalidInput(
            f"'{name[:100]}' is not {_NAMES[fmt]}: its content looks like "
            f"{_NAMES.get(found, found)}",
            field="file",
            fix="send the file its name says, or set format in the mapping to what it holds",
        )
    return fmt


def read_batches(
    path: Path, fmt: str, mapping: ImportMapping
) -> tuple[list[str], Iterator[tuple[pa.RecordBatch, float]]]:
    """The file's column names, and its rows as (record batch, fraction of the file read).

    Mapped columns of text formats are read as strings (so one bad cell rejects its row, not
    the file); only the columns the mapping names are read where the format allows it.
    """
    opener = {"csv": _csv, "jsonl": _jsonl, "parquet": _parquet, "xlsx": _xlsx}[fmt]
    try:
        return opener(path, mapping)
    except InvalidInput:
        raise
    except Exception as exc:  # the reader's own words: pyarrow, openpyxl, zipfile
        raise InvalidInput(
            f"cannot read the file as {_NAMES[fmt]}: {str(exc)[:300]}",
            field="file",
            fix="check the file (and the mapping's format and delimiter)",
        ) from None


def _csv(path: Path, mapping: ImportMapping):
    parse = pacsv.ParseOptions(delimiter=mapping.delimiter)
    read = pacsv.ReadOptions(block_size=BLOCK_BYTES)
    with pacsv.open_csv(path, read_options=read, parse_options=parse) as head:
        names = head.schema.names
    wanted = [c for c in mapping.columns() if c in names]
    convert = pacsv.ConvertOptions(
        include_columns=wanted,
        column_types={c: pa.string() for c in wanted},
        strings_can_be_null=True,
    )
    handle = open(path, "rb")  # noqa: SIM115 (closed by the generator)
    size = max(path.stat().st_size, 1)
    reader = pacsv.open_csv(handle, read_options=read, parse_options=parse, convert_options=convert)
    return names, _stream(reader, handle, size)


def _jsonl(path: Path, mapping: ImportMapping):
    read = pajson.ReadOptions(block_size=BLOCK_BYTES)
    parse = pajson.ParseOptions(newlines_in_values=False, unexpected_field_behavior="infer")
    handle = open(path, "rb")  # noqa: SIM115 (closed by the generator)
    try:
        reader = pajson.open_json(handle, read_options=read, parse_options=parse)
    except BaseException:
        handle.close()
        raise
    return reader.schema.names, _stream(reader, handle, max(path.stat().st_size, 1))


def _stream(reader, handle: IO[bytes], size: int) -> Iterator[tuple[pa.RecordBatch, float]]:
    try:
        for batch in reader:
            yield batch, min(handle.tell() / size, 1.0)
    finally:
        handle.close()


def _parquet(path: Path, mapping: ImportMapping):
    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    wanted = [c for c in mapping.columns() if c in names]
    total = max(parquet.metadata.num_rows, 1)

    def batches():
        done = 0
        try:
            for batch in parquet.iter_batches(batch_size=CHUNK_ROWS, columns=wanted):
                done += batch.num_rows
                yield batch, done / total
        finally:
            parquet.close()

    return names, batches()


def _xlsx(path: Path, mapping: ImportMapping):
    from openpyxl import load_workbook  # the `files` extra; only Excel needs it

    book = load_workbook(path, read_only=True, data_only=True)
    sheets = book.sheetnames
    if mapping.sheet is None and len(sheets) > 1:
        book.close()
        raise InvalidInput(
            f"the workbook has {len(sheets)} sheets ({', '.join(sheets)[:200]}) and the mapping "
            "names none",
            field="sheet",
            fix=f"add sheet: {sheets[0]} (or another of them) to the mapping",
        )
    if mapping.sheet is not None and mapping.sheet not in sheets:
        book.close()
        raise InvalidInput(
            f"the workbook has no sheet '{mapping.sheet[:100]}' (it has {', '.join(sheets)[:200]})",
            field="sheet",
            fix="name one of the workbook's sheets",
        )
    sheet = book[mapping.sheet or sheets[0]]
    rows = sheet.iter_rows(values_only=True)
    header = next(rows, None) or ()
    names = ["" if h is None else str(h) for h in header]
    total = max((sheet.max_row or 2) - 1, 1)

    def batches():
        done = 0
        try:
            chunk: list[tuple] = []
            for row in rows:
                chunk.append(row)
                if len(chunk) == CHUNK_ROWS:
                    done += len(chunk)
                    yield _xlsx_batch(names, chunk), min(done / total, 1.0)
                    chunk = []
            if chunk:
                yield _xlsx_batch(names, chunk), 1.0
        finally:
            book.close()

    return names, batches()


def _xlsx_batch(names: list[str], rows: list[tuple]) -> pa.RecordBatch:
    """Excel rows as a record batch: a column of one kind keeps its type (numbers, dates), a
    mixed one becomes text."""
    width = len(names)
    columns = []
    for k in range(width):
        cells = [row[k] if k < len(row) else None for row in rows]
        try:
            columns.append(pa.array(cells))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
            columns.append(pa.array([None if c is None else str(c) for c in cells], pa.string()))
    labels = [n or f"column {k + 1}" for k, n in enumerate(names)]
    return pa.RecordBatch.from_arrays(columns, names=labels)
