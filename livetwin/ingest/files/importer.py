"""Import one file through the ingest path: checked before anything is stored, streamed in
chunks (bounded memory), each chunk submitted while the next is read, and answered with what
was accepted, what was a duplicate and which rows were rejected why."""

from __future__ import annotations

import hashlib
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from pathlib import Path

from livetwin.errors import InvalidInput, LivetwinError, Unavailable
from livetwin.ingest.files.columns import Converter
from livetwin.ingest.files.mapping import ImportMapping
from livetwin.ingest.files.readers import file_format, read_batches
from livetwin.ports import Clock, Ingest
from livetwin.spec.types import CompiledType

MAX_LISTED = 100  # rejected rows listed in the answer; the rest are counted
IN_FLIGHT = 2  # chunks submitted and not yet durable: reading overlaps committing

Progress = Callable[[float, int], None]
"""Called after each chunk with the fraction of the file read and the rows read so far."""


def file_key(path: Path) -> str:
    """The start of the file's SHA-256: with a row number, each row's idempotency key."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def import_file(
    path: str | Path,
    mapping: ImportMapping,
    *,
    ingest: Ingest,
    types: Callable[[], Mapping[str, CompiledType]],
    clock: Clock,
    max_future_ms: int,
    filename: str | None = None,
    progress: Progress | None = None,
) -> dict:
    """Import `path` under `mapping`; the report (see docs/import.md).

    Mistakes that concern the whole file (its format, a missing column, a timestamp format
    that reads none of the first rows) raise InvalidInput before anything is stored. A failure
    later raises with the counts of what was stored before it.
    """
    path = Path(path)
    name = filename or path.name
    started = time.perf_counter()
    fmt = file_format(path, mapping, name)
    digest = file_key(path)
    columns, batches = read_batches(path, fmt, mapping)
    converter = Converter(
        mapping, types(), file_key=digest[:16], now_ms=clock(), max_future_ms=max_future_ms
    )
    converter.check_columns(columns)
    report = {
        "file": name,
        "format": fmt,
        "sha256": digest,
        "rows": 0,
        "accepted": 0,
        "duplicates": 0,
        "rejected": [],
        "rejected_total": 0,
    }
    pending: deque[Future] = deque()
    try:
        for batch, fraction in batches:
            normalized = converter.convert(batch, report["rows"] + 1, first=not report["rows"])
            report["rows"] += batch.num_rows
            pending.append(ingest.submit_normalized(normalized))
            while len(pending) >= IN_FLIGHT:
                _collect(pending.popleft(), report)
            if progress is not None:
                progress(fraction, report["rows"])
        while pending:
            _collect(pending.popleft(), report)
    except Exception as exc:
        for future in pending:  # what was submitted still becomes durable: count it
            try:
                _collect(future, report)
            except Exception:  # noqa: BLE001 (the first failure is the one reported)
                pass
        raise _stopped(exc, report) from None
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report


def _collect(future: Future, report: dict) -> None:
    result = future.result()
    unavailable = getattr(result, "unavailable", None)  # a cluster's shards that are down
    if unavailable:
        raise Unavailable(
            f"{len(unavailable)} rows of a batch could not be stored now: their shard is "
            "recovering",
            field="shard",
        )
    report["accepted"] += result.accepted
    report["duplicates"] += result.duplicates
    report["rejected_total"] += len(result.rejected)
    room = MAX_LISTED - len(report["rejected"])
    for r in sorted(result.rejected, key=lambda r: r.index)[: max(room, 0)]:
        report["rejected"].append(
            {"row": r.index, **{k: v for k, v in r.to_dict().items() if k != "index"}}
        )


def _stopped(exc: Exception, report: dict) -> LivetwinError:
    """The error that stopped an import midway, saying which rows were stored before it."""
    stored = report["accepted"] + report["duplicates"]
    if not report["rows"] and isinstance(exc, LivetwinError):
        return exc  # nothing was read: the error is about the file or the mapping
    where = f"after row {report['rows']}" if report["rows"] else "before the first row"
    message = getattr(exc, "message", None) or str(exc)
    error = type(exc)(message[:500]) if isinstance(exc, LivetwinError) else None
    if error is None:
        error = InvalidInput(f"cannot read the file {where}: {str(exc)[:400]}")
    error.message = (
        f"{error.message} (the import stopped {where}: {stored} rows are stored, "
        f"{report['accepted']} of them new)"
    )
    error.args = (error.message,)
    error.field = getattr(exc, "field", None) or "file"
    error.fix = (
        "fix the file (or the store) and import it again: rows stored already count as "
        "duplicates, nothing is stored twice"
    )
    error.details = [{k: v for k, v in report.items() if k != "rejected"}] + report["rejected"][:20]
    return error
