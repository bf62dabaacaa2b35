"""Integer parameters of the routes, bounded to what SQLite and orjson hold (64 bits).

A larger number answers 422 naming the parameter and the range, never a 500 from the store.
"""

from __future__ import annotations

from typing import Annotated

from annotated_types import Interval

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

Int64 = Annotated[int, Interval(ge=INT64_MIN, le=INT64_MAX)]
