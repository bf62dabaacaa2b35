"""Import mappings: which columns of a file give the twin, type, time and values, declared as
data (YAML or JSON) and stored by name like extractor specs."""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from livetwin.errors import InvalidInput, NotFound
from livetwin.namespaces import DEFAULT as DEFAULT_NAMESPACE
from livetwin.namespaces import owner_namespace
from livetwin.spec import parse_model
from livetwin.spec.safe_yaml import load_yaml

FORMATS = ("csv", "jsonl", "xlsx", "parquet")
EPOCH_FORMATS = {"epoch_s": 1000.0, "epoch_ms": 1.0, "epoch_us": 0.001}
CONFIG_KIND = "import-mapping"  # the store's configuration kind (Store.put_config)
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_PROPERTY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ImportMapping(BaseModel):
    """How the rows of a file become observations.

    Wide layout: one row per twin and time, `values` maps each property to its column. Long
    layout: one row per value, `name_column` says which property and `value_column` its value
    (`names` renames the file's names to properties). The twin is a column (`twin_column`) or a
    template (`twin`: a constant, or `{column}` placeholders: `pump-{site}-{id}`); the type is a
    constant (`type`) or a column (`type_column`). `ts_format` is `iso`, `epoch_s`, `epoch_ms`,
    `epoch_us` or a strptime pattern (`%d.%m.%Y %H:%M`); `timezone` is the zone of timestamps
    written without one (default UTC).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    namespace: str | None = Field(
        None, description="the namespace (tenant) that owns it (default: 'default')"
    )
    format: Literal["csv", "jsonl", "xlsx", "parquet"] | None = None  # default: the extension
    layout: Literal["wide", "long"] = "wide"
    twin: str | None = None
    twin_column: str | None = None
    type: str | None = None
    type_column: str | None = None
    ts_column: str
    ts_format: str = "iso"
    timezone: str = "UTC"
    values: dict[str, str] | None = None
    name_column: str | None = None
    value_column: str | None = None
    names: dict[str, str] | None = None
    parent_column: str | None = None
    sheet: str | None = None  # xlsx: the sheet to read (required when the file has several)
    delimiter: str = ","  # csv

    @field_validator("namespace")
    @classmethod
    def _namespace_by_the_one_rule(cls, value: str | None) -> str | None:
        return owner_namespace(value)

    @classmethod
    def from_data(cls, data: Any, *, name: str | None = None) -> ImportMapping:
        """A mapping from parsed JSON/YAML (or YAML text), every mistake an InvalidInput."""
        if isinstance(data, str | bytes):
            data = load_yaml(data)
        if not isinstance(data, dict):
            raise InvalidInput(
                "a mapping must be an object",
                field="mapping",
                fix="send {ts_column: time, type: pump, twin_column: id, values: {flow: q}}",
            )
        if name is not None:
            data = {**data, "name": name}
        return parse_model(cls, data, what="import mapping")

    @model_validator(mode="after")
    def _check(self) -> ImportMapping:
        if self.name is not None and not _NAME_RE.fullmatch(self.name):
            raise InvalidInput(
                f"name {self.name[:60]!r} is not a valid mapping name",
                field="name",
                fix="use 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit",
            )
        _one_of(self, "twin", "twin_column", "twin_column: id, or twin: pump-{id}")
        _one_of(self, "type", "type_column", "type: pump, or type_column: kind")
        if self.layout == "wide":
            if not self.values:
                raise InvalidInput(
                    "a wide mapping needs values: property -> column",
                    field="values",
                    fix="write values: {flow: q_m3h, pressure: p_bar}, or layout: long",
                )
            for field in ("name_column", "value_column", "names"):
                if getattr(self, field) is not None:
                    raise InvalidInput(
                        f"{field} belongs to the long layout",
                        field=field,
                        fix="add layout: long, or remove it",
                    )
            for prop in self.values:
                if not _PROPERTY_RE.fullmatch(prop):
                    raise InvalidInput(
                        f"values: {prop[:60]!r} is not a property name",
                        field=f"values.{prop[:60]}",
                        fix="map property names (identifiers) to column names",
                    )
        else:
            if not self.name_column or not self.value_column:
                raise InvalidInput(
                    "a long mapping needs name_column and value_column",
                    field="name_column" if not self.name_column else "value_column",
                    fix="write name_column: signal, value_column: value",
                )
            if self.values is not None:
                raise InvalidInput(
                    "values belongs to the wide layout",
                    field="values",
                    fix="remove values (use names to rename), or layout: wide",
                )
        if self.ts_format not in ("iso", *EPOCH_FORMATS) and "%" not in self.ts_format:
            raise InvalidInput(
                f"ts_format {self.ts_format[:60]!r} is not a timestamp format",
                field="ts_format",
                fix="use iso, epoch_s, epoch_ms, epoch_us or a strptime pattern such as "
                "'%d.%m.%Y %H:%M'",
            )
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise InvalidInput(
                f"unknown time zone {self.timezone[:60]!r}",
                field="timezone",
                fix="use an IANA zone such as UTC or Europe/Berlin",
            ) from None
        if len(self.delimiter) != 1:
            raise InvalidInput(
                "delimiter must be one character", field="delimiter", fix="e.g. ',' or ';'"
            )
        self.template_columns()  # checks the template
        return self

    def template_columns(self) -> list[str]:
        """The columns the twin template names (`pump-{id}` -> ['id'])."""
        if self.twin is None:
            return []
        try:
            parts = list(string.Formatter().parse(self.twin))
        except ValueError as exc:
            raise InvalidInput(
                f"twin template {self.twin[:60]!r}: {exc}",
                field="twin",
                fix="write literal text and {column} placeholders, e.g. pump-{id}",
            ) from None
        if any(spec or conv for _, col, spec, conv in parts if col is not None):
            raise InvalidInput(
                "twin template placeholders take no format or conversion",
                field="twin",
                fix="write {column} only, e.g. pump-{id}",
            )
        return [col for _, col, _, _ in parts if col is not None]

    def columns(self) -> dict[str, str]:
        """Every column the mapping reads -> the mapping field that names it."""
        named = {
            "twin_column": self.twin_column,
            "type_column": self.type_column,
            "ts_column": self.ts_column,
            "name_column": self.name_column,
            "value_column": self.value_column,
            "parent_column": self.parent_column,
        }
        found = {col: field for field, col in named.items() if col is not None}
        for col in self.template_columns():
            found.setdefault(col, "twin")
        for prop, col in (self.values or {}).items():
            found.setdefault(col, f"values.{prop}")
        return found

    def to_json(self) -> dict:
        return self.model_dump(mode="json", exclude_defaults=True)


def _one_of(mapping: ImportMapping, a: str, b: str, fix: str) -> None:
    if (getattr(mapping, a) is None) == (getattr(mapping, b) is None):
        raise InvalidInput(f"give exactly one of {a} and {b}", field=a, fix=f"write {fix}")


class ImportMappings:
    """The stored import mappings, by name, in a store's config table (`configs`: a single
    node's store, or on a cluster shard 0's: `configs`, `put_config`, `delete_config`)."""

    def __init__(self, configs: Any, clock: Callable[[], int]):
        self.configs, self.clock = configs, clock

    def put(self, name: str, spec: Any) -> dict:
        """Declare (or replace) how a file's columns map to observations (docs/import.md)."""
        body = ImportMapping.from_data(spec, name=name).to_json()
        self.configs.put_config(CONFIG_KIND, name, orjson.dumps(body).decode(), self.clock())
        return body

    def get(self, name: str) -> dict:
        stored = self.configs.configs(CONFIG_KIND).get(name)
        if stored is None:
            raise NotFound(
                f"no import mapping '{name}'",
                field="mapping",
                fix=f"declare it with PUT /api/mappings/{name}",
            )
        return orjson.loads(stored)

    def namespace(self, name: str) -> str:
        """The namespace that owns an import mapping (NotFound for an unknown one)."""
        return self.get(name).get("namespace") or DEFAULT_NAMESPACE

    def list(self) -> list[dict]:
        return [orjson.loads(s) for _, s in sorted(self.configs.configs(CONFIG_KIND).items())]

    def delete(self, name: str) -> dict:
        if not self.configs.delete_config(CONFIG_KIND, name):
            self.get(name)  # NotFound, with the fix
        return {"name": name, "deleted": True}

    def resolve(self, mapping: str | dict | ImportMapping) -> ImportMapping:
        """A mapping given by its stored name, as data, or as is."""
        if isinstance(mapping, str):
            mapping = self.get(mapping)
        return mapping if isinstance(mapping, ImportMapping) else ImportMapping.from_data(mapping)
