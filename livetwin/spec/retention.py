"""A type's retention: how long raw history is kept, and which rollups (per-bucket min, max,
avg, last and count) are kept for how long. Checked here; applied by the `compact` job.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from livetwin.timefmt import format_duration, parse_duration

FOREVER = "forever"
MAX_ROLLUPS = 4
MIN_BUCKET_MS = 1_000


def keep_ms(text: str) -> int | None:
    """A retention duration in ms; None for `forever`."""
    return None if text == FOREVER else parse_duration(text)


class Retention(BaseModel):
    """`retention: {raw: 30d, rollups: {1m: 1y, 1h: forever}}` (durations, or `forever`)."""

    model_config = ConfigDict(extra="forbid")

    raw: str = Field(FOREVER, description="how long raw history is kept, e.g. '30d', or 'forever'")
    rollups: dict[str, str] = Field(
        default_factory=dict,
        description="rollup bucket -> how long it is kept, e.g. {'1m': '365d', '1h': 'forever'}",
    )

    @field_validator("raw")
    @classmethod
    def _raw_is_a_duration(cls, value: str) -> str:
        keep_ms(value)  # its ValueError names the problem
        return value

    @field_validator("rollups")
    @classmethod
    def _rollups_are_durations(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_ROLLUPS:
            raise ValueError(f"at most {MAX_ROLLUPS} rollups: drop some")
        for bucket, keep in value.items():
            if parse_duration(bucket) < MIN_BUCKET_MS:
                raise ValueError(f"rollup bucket {bucket!r} is below 1s: use 1s or more")
            keep_ms(keep)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Retention:
        """A rollup kept shorter than its bucket, a coarser rollup kept shorter than a finer
        one, or raw history too short to compute the coarsest bucket from are spec errors."""
        levels = self.levels()
        for bucket, keep in levels:
            if keep is not None and keep < bucket:
                raise ValueError(
                    f"rollup {format_duration(bucket)} is kept {format_duration(keep)}, shorter "
                    f"than its own bucket: keep it at least {format_duration(bucket)}"
                )
        for (fine, fine_keep), (coarse, coarse_keep) in zip(levels, levels[1:], strict=False):
            if coarse_keep is not None and (fine_keep is None or coarse_keep < fine_keep):
                raise ValueError(
                    f"rollup {format_duration(coarse)} is kept shorter than the finer rollup "
                    f"{format_duration(fine)}, so it is never read: keep coarser rollups longer"
                )
        raw = keep_ms(self.raw)
        if levels and raw is not None and raw < 2 * levels[-1][0]:
            raise ValueError(
                f"raw history kept {self.raw} is too short to compute the "
                f"{format_duration(levels[-1][0])} rollup from: keep raw at least "
                f"{format_duration(2 * levels[-1][0])}"
            )
        return self

    def levels(self) -> list[tuple[int, int | None]]:
        """(bucket ms, kept ms or None for forever) of each rollup, finest first."""
        return sorted((parse_duration(b), keep_ms(k)) for b, k in self.rollups.items())

    def raw_ms(self) -> int | None:
        return keep_ms(self.raw)
