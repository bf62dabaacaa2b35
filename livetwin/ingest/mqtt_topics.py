"""MQTT topic filters (their grammar and matching), broker addresses, and the subscription that
maps a topic filter to an extractor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from livetwin.errors import InvalidInput
from livetwin.ports import DEVICE_TOPIC_ROOT

__all__ = [
    "Subscription",
    "device_of_topic",
    "parse_address",
    "topic_matches",
    "validate_topic_filter",
]


@dataclass(frozen=True)
class Subscription:
    """One topic pattern mapped to an extractor.

    `twin_from_topic` (1-based index of a `+` level) makes that topic level the twin id: the
    extractor's own `twin` path is then not read (its `twin_prefix` still applies).
    """

    name: str
    topic: str
    extractor: str
    qos: int = 1
    twin_from_topic: int | None = None

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "topic": self.topic,
            "extractor": self.extractor,
            "qos": self.qos,
            "twin_from_topic": self.twin_from_topic,
        }

    def topic_vars(self, topic: str) -> dict[str, str]:
        """The levels of `topic` matched by this pattern's `+` levels, as {"1": ..., "2": ...}."""
        levels = topic.split("/")
        found: dict[str, str] = {}
        for position, pattern in enumerate(self.topic.split("/")):
            if pattern == "#":
                break
            if pattern == "+":
                found[str(len(found) + 1)] = levels[position]
        return found


def validate_topic_filter(topic: Any, field: str = "topic") -> str:
    """Return `topic` if it is a valid MQTT topic filter, else raise InvalidInput naming `field`."""
    fix = "write levels separated by '/'; use '+' or '#' only as a whole level, '#' only last"
    if not isinstance(topic, str) or not topic:
        raise InvalidInput(
            f"{field} must be a non-empty string", field=field, fix="e.g. plant/+/telemetry"
        )
    if "\x00" in topic or len(topic.encode()) > 65535:
        raise InvalidInput(f"{field} has a NUL character or is too long", field=field, fix=fix)
    levels = topic.split("/")
    for i, level in enumerate(levels):
        if level in ("+", "#"):
            if level == "#" and i != len(levels) - 1:
                raise InvalidInput(
                    f"{field} {topic!r}: '#' must be the last level", field=field, fix=fix
                )
        elif "+" in level or "#" in level:
            raise InvalidInput(
                f"{field} {topic!r}: level {level!r} mixes a wildcard with text",
                field=field,
                fix=fix,
            )
    return topic


def parse_address(text: str) -> tuple[str, int]:
    """`host:port` (or `host`, port 1883) as used by `livetwin serve --mqtt`."""
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "1883")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidInput(
            f"MQTT address {text!r} is not host:port", field="mqtt", fix="e.g. 127.0.0.1:1883"
        )
    return host, int(port)


def topic_matches(pattern: str, topic: str) -> bool:
    """Whether MQTT topic filter `pattern` matches `topic` (wildcards never match `$` topics)."""
    if topic.startswith("$") and pattern[:1] in ("+", "#"):
        return False
    levels = topic.split("/")
    parts = pattern.split("/")
    for i, part in enumerate(parts):
        if part == "#":
            return True
        if i >= len(levels) or (part != "+" and part != levels[i]):
            return False
    return len(parts) == len(levels)


def device_of_topic(topic: str) -> str | None:
    """The device id of a device topic `devices/<id>/...` (possibly ''), else None."""
    root, _, rest = topic.partition("/")
    return rest.partition("/")[0] if root == DEVICE_TOPIC_ROOT else None
