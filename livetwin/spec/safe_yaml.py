"""YAML from outside (request bodies, spec files): no aliases, bounded nesting, clear errors.

Aliases are refused because a few hundred bytes of them expand to gigabytes (an "alias bomb");
telemetry and specs never need them: repeat the value instead.
"""

from __future__ import annotations

from typing import Any

import yaml

from livetwin.errors import InvalidInput

MAX_YAML_DEPTH = 100  # levels of nested sequences and mappings; specs use fewer than 10


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, refusing aliases and nesting deeper than MAX_YAML_DEPTH."""

    depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise InvalidInput(
                f"YAML aliases are not accepted (*{event.anchor[:40]} at "
                f"line {event.start_mark.line + 1})",
                field="body",
                fix="write the value out instead of referring to an &anchor",
            )
        self.depth += 1
        if self.depth > MAX_YAML_DEPTH:
            raise InvalidInput(
                f"YAML nested deeper than {MAX_YAML_DEPTH} levels "
                f"(at line {self.peek_event().start_mark.line + 1})",
                field="body",
                fix=f"flatten the document: at most {MAX_YAML_DEPTH} levels of lists and maps",
            )
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def load_yaml(text: str | bytes, *, what: str = "YAML") -> Any:
    """Parse one YAML document; a malformed or hostile one is an `InvalidInput` (field "body")."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise InvalidInput(
            f"malformed {what}: {exc}", field="body", fix="check indentation and quoting"
        ) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise InvalidInput(
            f"malformed {what}: {exc}", field="body", fix="send numbers of at most 4300 digits"
        ) from None
