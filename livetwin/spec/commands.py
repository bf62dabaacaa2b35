"""The `commands:` section of a twin type: where desired values are published as MQTT commands."""

from __future__ import annotations

import math
import string

from pydantic import BaseModel, ConfigDict, field_validator

PLACEHOLDERS = frozenset({"twin", "type"})


class CommandSection(BaseModel):
    """`commands: {topic: "plant/{twin}/set", qos: 1, tolerance: 1e-6}`.

    `topic` may use `{twin}` and `{type}`; a reported value within `tolerance` of the desired
    one counts as reached.
    """

    model_config = ConfigDict(extra="forbid")

    topic: str
    qos: int = 1
    tolerance: float = 1e-6

    @field_validator("topic")
    @classmethod
    def _topic_template(cls, value: str) -> str:
        if not value or "\x00" in value:
            raise ValueError("topic must be a non-empty MQTT topic, e.g. plant/{twin}/set")
        try:
            names = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
        except ValueError as exc:
            raise ValueError(f"topic {value!r} has a broken placeholder ({exc})") from None
        unknown = sorted(set(names) - PLACEHOLDERS)
        if unknown:
            raise ValueError(
                f"topic placeholder {{{unknown[0]}}} is unknown: use {{twin}}, {{type}}"
            )
        if "+" in value or "#" in value:
            raise ValueError("a command topic cannot contain the wildcards + or #")
        return value

    @field_validator("qos")
    @classmethod
    def _qos(cls, value: int) -> int:
        if value not in (0, 1):
            raise ValueError("qos must be 0 or 1 (1: the broker confirms each command)")
        return value

    @field_validator("tolerance")
    @classmethod
    def _tolerance(cls, value: float) -> float:
        if not math.isfinite(value) or value < 0:
            raise ValueError("tolerance must be a finite number >= 0")
        return value

    def topic_for(self, twin: str, type_name: str) -> str:
        """The device topic of one twin."""
        return self.topic.format(twin=twin, type=type_name)
