"""Alarm rules of a twin type: a `when` condition held `for` a while, a severity, an optional
clear condition (hysteresis) and a message template; checked and compiled once per type version.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from livetwin.errors import InvalidInput
from livetwin.expr import Compiled, ExpressionError, compile_expression
from livetwin.timefmt import parse_duration

SEVERITIES = ("info", "warning", "critical")  # in increasing order
Severity = Literal["info", "warning", "critical"]
TEMPLATE_FIELDS = ("twin", "type", "rule", "severity")  # besides the type's names


class Rule(BaseModel):
    """A rule as a user declares it (YAML `for:` is `for_` in Python)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    when: str
    for_: str = Field("0s", alias="for")
    severity: Severity = "warning"
    clear: str | None = None
    message: str = ""
    description: str = ""

    @field_validator("for_")
    @classmethod
    def _duration(cls, value: str) -> str:
        if value.strip() in ("0", "0s", "0ms"):
            return value
        parse_duration(value)  # raises ValueError naming the accepted units
        return value


@dataclass(frozen=True)
class CompiledRule:
    """A checked rule: compiled conditions, `for` in ms, and the names it reads.

    `names` are every column the rule needs (its conditions and its message template).
    """

    name: str
    when: Compiled = field(repr=False)
    clear: Compiled | None = field(repr=False)
    for_ms: int
    severity: str
    message: str
    names: tuple[str, ...]

    def format_message(self, values: dict[str, float | None], **context: str) -> str:
        """The message for one firing: the template filled, or a default naming the rule."""
        if not self.message:
            return f"{self.name} on {context['twin']}: {self.when.source}"
        filled = {k: (float("nan") if v is None else v) for k, v in values.items()}
        return self.message.format_map({**filled, **context})


def compile_rules(
    rules: dict[str, Rule], known: set[str], text: frozenset[str] = frozenset()
) -> dict[str, CompiledRule]:
    """Compile every rule against the type's names (`text`: its text attributes, compared
    with strings); unknown names are a 422 naming the field."""
    return {name: _compile_rule(name, rule, known, text) for name, rule in rules.items()}


def _compile_rule(name: str, rule: Rule, known: set[str], text: frozenset[str]) -> CompiledRule:
    where = f"rules.{name}"
    when = _condition(rule.when, known, text, f"{where}.when")
    clear = None if rule.clear is None else _condition(rule.clear, known, text, f"{where}.clear")
    template = _template_names(rule.message, known | text, f"{where}.message")
    names = sorted(when.names | (clear.names if clear else frozenset()) | template)
    for_ms = 0 if rule.for_.strip() in ("0", "0s", "0ms") else parse_duration(rule.for_)
    return CompiledRule(name, when, clear, for_ms, rule.severity, rule.message, tuple(names))


def _condition(text: str, known: set[str], attributes: frozenset[str], where: str) -> Compiled:
    """A rule condition: the expression language without window functions."""
    try:
        return compile_expression(
            text, known, allow_windows=False, field=where, text_names=attributes
        )
    except ExpressionError:
        try:
            compile_expression(text, known, field=where, text_names=attributes)
        except ExpressionError:
            raise  # wrong for another reason: the original error says why
        raise InvalidInput(
            f"window functions are not allowed in rule conditions: {text!r}",
            field=where,
            fix="declare the window as a derived value (derived: {temp_avg: \"avg(temp, '5m')\"}) "
            "and use its name in the rule",
        ) from None


def _template_names(template: str, known: set[str], where: str) -> set[str]:
    """The type names a message template uses; plain `{name}` or `{name:spec}` fields only."""
    names: set[str] = set()
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise InvalidInput(
            f"bad message template: {exc}",
            field=where,
            fix="write fields as {name} or {name:.1f}; double braces {{ }} for a literal brace",
        ) from None
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name not in known and name not in TEMPLATE_FIELDS:
            allowed = ", ".join(sorted(known) + list(TEMPLATE_FIELDS))
            raise InvalidInput(
                f"the message template uses unknown field '{{{name}}}'",
                field=where,
                fix=f"use one of: {allowed}",
            )
        if conversion is not None:
            raise InvalidInput(
                f"conversions such as '!{conversion}' are not allowed in message templates",
                field=where,
                fix="drop the '!' part; use a format spec such as {temp:.1f}",
            )
        sample: float | str = "pump-7" if name in TEMPLATE_FIELDS else 1.5
        try:
            format(sample, spec or "")
        except ValueError as exc:
            raise InvalidInput(
                f"bad format spec '{spec}' for '{name}': {exc}",
                field=where,
                fix="use a Python format spec such as .1f or .3g for values",
            ) from None
        if name in known:
            names.add(name)
    return names
