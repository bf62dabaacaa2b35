"""A read-only NGSI-LD view of twins: entities by type and query, one entity by id.

Implements from ETSI GS CIM 009 the two reads "Query Entities" (`type`, `q`, `attrs`, `limit`,
`offset`, `count`, `options=keyValues`) and "Retrieve Entity" (`attrs`, `options=keyValues`),
normalized and simplified representations; `q` is translated to a livetwin `where` expression.
docs/interop.md lists what it leaves out.
"""

from __future__ import annotations

import math
import re
from urllib.parse import quote, unquote

from livetwin.errors import InvalidInput, NotFound, excerpt
from livetwin.interop.units import cefact
from livetwin.query import Query
from livetwin.timefmt import format_ts

CORE_CONTEXT = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
PREFIX = "urn:ngsi-ld:"
PARENT = "refParent"  # the Relationship to a twin's parent
MAX_LIMIT = 1000
FIX_Q = (
    "write terms such as flow>10;pressure<=3 (';' is and, '|' is or, parentheses group) over "
    "numeric attributes; attr==1..5 is a range, attr==1,2 a list, attr alone means it has a value"
)
TERM = re.compile(
    r"(?P<attr>[A-Za-z][A-Za-z0-9_]*)\s*(?:(?P<op>==|!=|>=|<=|>|<|=~|!~=)\s*(?P<value>[^;|()]*))?"
)


def entity_id(type_name: str, twin_id: str) -> str:
    """A twin's NGSI-LD id: `urn:ngsi-ld:<type>:<twin id, percent-encoded>`."""
    return f"{PREFIX}{type_name}:{quote(twin_id, safe='')}"


def parse_id(identifier: str) -> tuple[str | None, str]:
    """(entity type, twin id) of an entity id; a plain twin id is accepted, with no type."""
    if not identifier.startswith(PREFIX):
        return None, identifier
    type_name, colon, encoded = identifier[len(PREFIX) :].partition(":")
    if not colon or not encoded:
        raise NotFound(
            f"no entity {excerpt(identifier)}",
            field="entityId",
            fix="use an id the entity list gives: urn:ngsi-ld:<type>:<twin id>",
        )
    return type_name, unquote(encoded)


class NgsiLdView:
    """Entities over one core's twins (read through `Query`) or a cluster's (its front end):
    `twins`, `twin`, `compiled_version` and `type_of` are all it reads."""

    def __init__(self, query: Query):
        self.query = query

    def entities(
        self,
        *,
        type: str | None = None,
        q: str | None = None,
        attrs: str | None = None,
        key_values: bool = False,
        limit: int = 20,
        offset: int = 0,
    ) -> tuple[list[dict], int]:
        """One page of entities and how many match in all."""
        if type is not None and "," in type:
            raise InvalidInput(
                "one entity type at a time", field="type", fix="query each type separately"
            )
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidInput(
                f"limit must be between 1 and {MAX_LIMIT}", field="limit", fix="page with offset"
            )
        where = translate_q(q) if q else None
        if where is not None and type is None:
            raise InvalidInput(
                "q needs type, because attribute names belong to an entity type",
                field="q",
                fix="add &type=<type name> to the query",
            )
        try:
            found = self.query.twins(type=type, where=where, limit=limit, offset=offset)
        except NotFound:
            return [], 0  # NGSI-LD: an unknown type matches nothing
        except InvalidInput as exc:
            if exc.field == "where":
                exc.field, exc.fix = "q", FIX_Q
            raise
        wanted = _attrs(attrs)
        page = []
        for item in found["items"]:
            try:
                page.append(self._entity(item["id"], wanted, key_values))
            except NotFound:  # gone between the list and the read
                continue
        return page, found["total"]

    def entity(self, identifier: str, *, attrs: str | None = None, key_values: bool = False):
        """One entity by its id (or its twin's id)."""
        type_name, twin_id = parse_id(identifier)
        entity = self._entity(twin_id, _attrs(attrs), key_values)
        if type_name is not None and type_name != entity["type"]:
            raise NotFound(
                f"no entity {excerpt(identifier)}: twin {twin_id!r} is a {entity['type']}",
                field="entityId",
                fix=f"use {entity['id']}",
            )
        return entity

    def _entity(self, twin_id: str, attrs: set[str] | None, key_values: bool) -> dict:
        twin = self.query.twin(twin_id)
        declared = self.query.compiled_version(twin["type"], twin["version"]).spec
        units = {n: p.unit for n, p in {**declared.properties, **declared.parameters}.items()}
        units.update({n: d.unit for n, d in declared.derived.items()})
        observed = format_ts(twin["updated"]) if twin["updated"] is not None else None
        out: dict = {"id": entity_id(twin["type"], twin_id), "type": twin["type"]}
        values = {**twin["properties"], **twin["parameters"], **twin["derived"]}
        for name, value in values.items():
            if value is None or (attrs is not None and name not in attrs):
                continue  # NGSI-LD has no null property values
            if key_values:
                out[name] = value
                continue
            prop: dict = {"type": "Property", "value": value}
            if observed:
                prop["observedAt"] = observed
            code = cefact(units.get(name, ""))
            if code:
                prop["unitCode"] = code
            out[name] = prop
        parent = twin["parent"]
        if parent is not None and (attrs is None or PARENT in attrs):
            target = entity_id(self.query.type_of(parent).name, parent)
            out[PARENT] = target if key_values else {"type": "Relationship", "object": target}
        return out


def _attrs(attrs: str | None) -> set[str] | None:
    return None if not attrs else {a.strip() for a in attrs.split(",") if a.strip()}


def translate_q(q: str) -> str:
    """An NGSI-LD query (`flow>10;(pressure<3|running==true)`) as a livetwin `where`."""
    out: list[str] = []
    i, depth, expect_term = 0, 0, True
    while i < len(q):
        char = q[i]
        if char.isspace():
            i += 1
        elif expect_term and char == "(":
            out.append("(")
            depth, i = depth + 1, i + 1
        elif expect_term:
            found = TERM.match(q, i)
            if found is None:
                _bad_q(q, i)
            out.append(_term(found, q))
            i, expect_term = found.end(), False
        elif char == ")" and depth > 0:
            out.append(")")
            depth, i = depth - 1, i + 1
        elif char in ";|":
            out.append(" and " if char == ";" else " or ")
            i, expect_term = i + 1, True
        else:
            _bad_q(q, i)
    if expect_term or depth:
        _bad_q(q, len(q))
    return "".join(out)


def _term(found: re.Match, q: str) -> str:
    attr, op, raw = found["attr"], found["op"], (found["value"] or "").strip()
    if op is None:
        return f"not isnan({attr})"
    if op in ("=~", "!~="):
        raise InvalidInput(
            f"q: pattern matching ({op}) needs text values; livetwin's are numbers",
            field="q",
            fix=FIX_Q,
        )
    if ".." in raw and op in ("==", "!="):
        low, _, high = raw.partition("..")
        inside = f"({attr} >= {_number(low, q)} and {attr} <= {_number(high, q)})"
        return inside if op == "==" else f"not {inside}"
    if "," in raw and op in ("==", "!="):
        values = [_number(v, q) for v in raw.split(",")]
        joined = (" or " if op == "==" else " and ").join(f"{attr} {op} {v}" for v in values)
        return f"({joined})"
    return f"{attr} {op} {_number(raw, q)}"


def _number(text: str, q: str) -> str:
    text = text.strip()
    if text in ("true", "false"):
        return "1" if text == "true" else "0"
    try:
        value = float(text)
    except ValueError:
        raise InvalidInput(
            f"q: {excerpt(text)} is not a number (livetwin's attributes are numbers)",
            field="q",
            fix=FIX_Q,
        ) from None
    if not math.isfinite(value):
        raise InvalidInput(f"q: {excerpt(text)} is not a finite number", field="q", fix=FIX_Q)
    return repr(value)


def _bad_q(q: str, at: int) -> None:
    raise InvalidInput(
        f"q: cannot read {excerpt(q[at:] or 'the end')} at position {at} of {excerpt(q)}",
        field="q",
        fix=FIX_Q,
    )
