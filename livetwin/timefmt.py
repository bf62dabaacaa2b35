"""Timestamps: ISO 8601 strings or epoch milliseconds in, int64 epoch milliseconds inside."""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime, timedelta

from livetwin.errors import InvalidInput

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
SMALLEST_MS = 100_000_000_000  # 1973-03-03: smaller numbers are almost surely epoch *seconds*
LARGEST_MS = 2**63 - 1  # the largest epoch-ms value the stores and JSON hold (64 bits)


def wall_clock_ms() -> int:
    """Epoch milliseconds now (the default clock; tests pass a fake one)."""
    return time.time_ns() // 1_000_000


def parse_ts(value: object) -> int:
    """Epoch milliseconds from an ISO 8601 string (naive = UTC) or an epoch-ms number.

    Raises ValueError with a message a user can act on.
    """
    if isinstance(value, bool):
        raise ValueError("a timestamp must be an ISO 8601 string or epoch milliseconds, not a bool")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("a timestamp must be finite")
        ms = int(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            if len(text) > 20:  # past 64 bits: never convert thousands of digits
                raise ValueError(_out_of_range(text))
            return parse_ts(int(text))
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(
                f"cannot parse timestamp '{value[:40]}': use ISO 8601 such as "
                "2026-11-22T10:00:00Z or epoch milliseconds"
            ) from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return (dt - _EPOCH) // _MS
    else:
        raise ValueError("a timestamp must be an ISO 8601 string or epoch milliseconds")
    if 0 <= ms < SMALLEST_MS:
        raise ValueError(
            f"timestamp {value} looks like epoch seconds: send epoch milliseconds (x1000) "
            "or an ISO 8601 string"
        )
    if ms < 0:
        raise ValueError("timestamps before 1970 are not supported")
    if ms > LARGEST_MS:
        raise ValueError(_out_of_range(value))
    return ms


def _out_of_range(value: object) -> str:
    if isinstance(value, int) and value.bit_length() > 128:
        shown = f"of {value.bit_length()} bits"
    else:
        text = str(value)
        shown = text if len(text) <= 40 else f"{text[:20]}... ({len(text)} characters)"
    return f"timestamp {shown} is beyond the range of epoch milliseconds (0 to {LARGEST_MS})"


def parse_ts_field(value: object, field: str) -> int:
    """`parse_ts` of a named input: bad input raises InvalidInput naming the field and the fix."""
    try:
        return parse_ts(value)
    except ValueError as exc:
        raise InvalidInput(
            str(exc), field=field, fix="use ISO 8601 (2026-11-22T10:00:00Z) or epoch ms"
        ) from None


def format_ts(ms: int) -> str:
    """ISO 8601 UTC with milliseconds, e.g. 2026-11-22T10:00:00.000Z."""
    return (_EPOCH + timedelta(milliseconds=int(ms))).isoformat(timespec="milliseconds")[:-6] + "Z"


DURATION_UNITS = {
    "ms": 1,
    "s": 1_000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 7 * 86_400_000,
    "y": 365 * 86_400_000,  # a year of 365 days
}
MAX_DURATION_MS = 3650 * DURATION_UNITS["d"]
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]+)\s*")


def parse_duration(text: str) -> int:
    """Return the duration `text` ('500ms', '30s', '10m', '1h', '2d') in milliseconds.

    Raises ValueError with a message that names the accepted units.
    """
    units = ", ".join(DURATION_UNITS)
    match = _DURATION.fullmatch(text)
    if match is None or match.group(2) not in DURATION_UNITS:
        raise ValueError(
            f"bad duration {text[:40]!r}: write a number and a unit ({units}), e.g. '10m'"
        )
    ms = float(match.group(1)) * DURATION_UNITS[match.group(2)]
    if not math.isfinite(ms) or not 1 <= round(ms) <= MAX_DURATION_MS:  # inf: 400 digits
        raise ValueError(f"bad duration {text[:40]!r}: it must be between 1ms and 3650d")
    return round(ms)


def format_duration(ms: int) -> str:
    """`ms` in the largest unit that divides it, e.g. 3600000 -> '1h' (parse_duration's inverse)."""
    for unit, size in sorted(DURATION_UNITS.items(), key=lambda u: -u[1]):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"
