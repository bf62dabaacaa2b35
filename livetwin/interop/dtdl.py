"""DTDL v2/v3 interfaces (JSON-LD) as livetwin types, and types and twins back as DTDL.

Parsed by hand after the published metamodel (docs/interop.md says which parts): telemetry ->
properties, writable properties -> parameters, read-only properties -> properties,
relationships and components -> children, `extends` flattened, Objects one level deep
flattened to `name_field`; what livetwin cannot hold is reported as skipped with the reason.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

from livetwin.errors import InvalidInput, excerpt
from livetwin.expr import RESERVED_NAMES
from livetwin.interop import CHILD_KINDS, ImportedType, Parsed, Skipped
from livetwin.interop.units import from_dtdl, to_dtdl
from livetwin.spec.types import NAME_PATTERN, TwinTypeSpec
from livetwin.timefmt import format_ts

CONTEXTS = {"dtmi:dtdl:context;2": 2, "dtmi:dtdl:context;3": 3}
QUANTITATIVE = "dtmi:dtdl:extension:quantitativeTypes;1"
DTMI = re.compile(
    r"^dtmi:[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z0-9])?(?::_*[A-Za-z0-9](?:[A-Za-z0-9_]*[A-Za-z0-9])?)*"
    r"(?:;[1-9][0-9]{0,8}(?:\.[1-9][0-9]{0,5})?)?$"
)
DTDL_NAME = re.compile(r"^[A-Za-z](?:[A-Za-z0-9_]*[A-Za-z0-9])?$")
CONTENT_KINDS = ("Telemetry", "Property", "Command", "Relationship", "Component")
NUMERIC = frozenset(
    {"boolean", "double", "float", "integer", "long", "byte", "short", "decimal"}
    | {"unsignedByte", "unsignedShort", "unsignedInteger", "unsignedLong"}
)
TEXT = frozenset({"string", "date", "dateTime", "time", "duration", "uuid", "bytes"})
MAX_EXTENDS_DEPTH = 10  # DTDL's own limit on the depth of extends
FIX_DTDL = "see the DTDL v3 language reference (the Interface, its contents and their schemas)"


def parse(document: Any) -> Parsed:
    """The interfaces of a DTDL document (one Interface or an array of them) as types.

    A document that breaks the metamodel is refused whole (InvalidInput naming the element);
    parts livetwin cannot hold are skipped with the reason."""
    interfaces = document if isinstance(document, list) else [document]
    if not interfaces or not all(isinstance(i, dict) for i in interfaces):
        raise InvalidInput(
            "a DTDL document is an Interface object or an array of Interface objects",
            field="body",
            fix='send {"@context": "dtmi:dtdl:context;3", "@id": "dtmi:...;1", '
            '"@type": "Interface", "contents": [...]}',
        )
    by_id: dict[str, tuple[str, dict]] = {}
    schemas: dict[str, Any] = {}
    for i, interface in enumerate(interfaces):
        where = f"[{i}]" if isinstance(document, list) else "body"
        _check_interface(interface, where, top_level=True)
        by_id[interface["@id"]] = (where, interface)
        _collect_schemas(interface, where, schemas)
    skipped: list[Skipped] = []
    types = [
        _to_type(interface, where, by_id, schemas, skipped) for where, interface in by_id.values()
    ]
    return Parsed("dtdl", types, skipped)


def _check_interface(interface: dict, where: str, *, top_level: bool) -> None:
    if top_level:
        context = interface.get("@context")
        contexts = context if isinstance(context, list) else [context]
        if not any(isinstance(c, str) and c in CONTEXTS for c in contexts):
            raise InvalidInput(
                f"{where} has no DTDL context (@context: {excerpt(context)})",
                field=f"{where}.@context",
                fix='set "@context": "dtmi:dtdl:context;3" (or ;2)',
            )
    if "Interface" not in _types_of(interface):
        raise InvalidInput(
            f"{where} is not an Interface (@type: {excerpt(interface.get('@type'))})",
            field=f"{where}.@type",
            fix='set "@type": "Interface"',
        )
    _check_dtmi(interface.get("@id"), f"{where}.@id")
    contents = interface.get("contents", [])
    if not isinstance(contents, list):
        raise InvalidInput(
            f"{where}.contents is not an array", field=f"{where}.contents", fix=FIX_DTDL
        )
    for k, element in enumerate(contents):
        _check_content(element, f"{where}.contents[{k}]")


def _check_dtmi(value: Any, field: str) -> None:
    if not isinstance(value, str) or not DTMI.match(value):
        raise InvalidInput(
            f"{excerpt(value)} is not a DTMI",
            field=field,
            fix="use a digital twin model identifier such as dtmi:com:example:Pump;1",
        )


def _check_content(element: Any, where: str) -> None:
    if not isinstance(element, dict):
        raise InvalidInput(f"{where} is not an object", field=where, fix=FIX_DTDL)
    kinds = [t for t in _types_of(element) if t in CONTENT_KINDS]
    if len(kinds) != 1:
        raise InvalidInput(
            f"{where} has @type {excerpt(element.get('@type'))}: it needs exactly one of "
            + ", ".join(CONTENT_KINDS),
            field=f"{where}.@type",
            fix='give each element of contents its kind, e.g. "@type": "Telemetry"',
        )
    name = element.get("name")
    if not isinstance(name, str) or not DTDL_NAME.match(name) or len(name) > 512:
        raise InvalidInput(
            f"{where} has no valid name ({excerpt(name)})",
            field=f"{where}.name",
            fix="name it with letters, digits and _ (a letter first, no _ last)",
        )
    if kinds[0] in ("Telemetry", "Property", "Component") and "schema" not in element:
        raise InvalidInput(
            f"{where} ({kinds[0]} '{name}') has no schema", field=f"{where}.schema", fix=FIX_DTDL
        )
    if kinds[0] == "Relationship" and "target" in element:
        _check_dtmi(element["target"], f"{where}.target")
    if kinds[0] == "Component" and isinstance(element["schema"], str):
        _check_dtmi(element["schema"], f"{where}.schema")


def _types_of(element: dict) -> list:
    kinds = element.get("@type")
    return kinds if isinstance(kinds, list) else [] if kinds is None else [kinds]


def _shape(schema: dict) -> str:
    """A complex schema's kind: Object, Enum, Map, Array (or what else it says)."""
    return str((_types_of(schema) or [""])[0])


def _collect_schemas(interface: dict, where: str, schemas: dict[str, Any]) -> None:
    """Interface-level `schemas` (reusable Objects, Enums, ...) by their @id."""
    found = interface.get("schemas", [])
    if not isinstance(found, list):
        raise InvalidInput(
            f"{where}.schemas is not an array", field=f"{where}.schemas", fix=FIX_DTDL
        )
    for k, schema in enumerate(found):
        if not isinstance(schema, dict):
            raise InvalidInput(
                f"{where}.schemas[{k}] is not an object",
                field=f"{where}.schemas[{k}]",
                fix=FIX_DTDL,
            )
        _check_dtmi(schema.get("@id"), f"{where}.schemas[{k}].@id")
        schemas[schema["@id"]] = schema


def _flattened(
    interface: dict,
    where: str,
    by_id: dict[str, tuple[str, dict]],
    seen: tuple[str, ...] = (),
    included: set[str] | None = None,
) -> list[tuple[str, dict]]:
    """(where, element) of an interface's contents after those of the interfaces it extends
    (each base once, however many paths reach it)."""
    included = set() if included is None else included
    if interface["@id"] in seen:
        raise InvalidInput(
            f"{interface['@id']} extends itself (through {' -> '.join(seen)})",
            field=f"{where}.extends",
            fix="break the cycle of extends",
        )
    if len(seen) >= MAX_EXTENDS_DEPTH:
        raise InvalidInput(
            f"extends nests deeper than DTDL's limit of {MAX_EXTENDS_DEPTH} levels",
            field=f"{where}.extends",
            fix="extend fewer levels of interfaces",
        )
    included.add(interface["@id"])
    bases = interface.get("extends", [])
    out: list[tuple[str, dict]] = []
    for k, base in enumerate(bases if isinstance(bases, list) else [bases]):
        chain = seen + (interface["@id"],)
        if isinstance(base, dict):  # an inline Interface
            _check_interface(base, f"{where}.extends[{k}]", top_level=False)
            if base["@id"] not in included:
                out += _flattened(base, f"{where}.extends[{k}]", by_id, chain, included)
            continue
        _check_dtmi(base, f"{where}.extends")
        if base not in by_id:
            raise InvalidInput(
                f"{interface['@id']} extends {base}, which is not in the file",
                field=f"{where}.extends",
                fix=f"put the Interface {base} in the same file (an array of Interfaces)",
            )
        if base in chain:
            _flattened(by_id[base][1], by_id[base][0], by_id, chain, included)  # the cycle
        if base not in included:
            out += _flattened(by_id[base][1], by_id[base][0], by_id, chain, included)
    out += [(f"{where}.contents[{k}]", e) for k, e in enumerate(interface.get("contents", []))]
    return out


def _to_type(
    interface: dict,
    where: str,
    by_id: dict[str, tuple[str, dict]],
    schemas: dict[str, Any],
    skipped: list[Skipped],
) -> ImportedType:
    dtmi = interface["@id"]
    spec: dict = {"description": _text(interface.get("description")), "properties": {}}
    spec["parameters"], elements, children = {}, {}, []
    taken: dict[str, str] = {}  # livetwin name -> the source path that took it

    def skip(path: str, reason: str) -> None:
        skipped.append(Skipped(f"{dtmi}#{path}", reason))

    def add(path: str, name: str, element: dict, kind: str, schema: str, writable: bool) -> None:
        if not re.match(NAME_PATTERN, name):
            return skip(path, f"'{name}' is longer than livetwin's 64-character names")
        if name in RESERVED_NAMES:
            return skip(path, f"'{name}' is a reserved word of livetwin's expressions")
        if name in taken:
            return skip(path, f"its name '{name}' clashes with {taken[name]} after flattening")
        unit = element.get("unit", "")
        if not isinstance(unit, str):
            raise InvalidInput(
                f"{dtmi}#{path} has a unit that is not a name: {excerpt(unit)}",
                field=f"{dtmi}#{path}.unit",
                fix="give the unit's DTDL name, e.g. degreeCelsius",
            )
        taken[name] = path
        entry: dict = {"unit": from_dtdl(unit) if unit else ""}
        entry["description"] = _text(element.get("description"))
        if writable:
            spec["parameters"][name] = {"value": 0.0, **entry}
        else:
            spec["properties"][name] = entry
        semantic = [t for t in _types_of(element) if t not in (*CONTENT_KINDS, "Field")]
        elements[path] = {
            "name": name,
            "kind": kind,
            "id": element.get("@id", ""),
            "datatype": schema,
        }
        elements[path]["semantic_type"] = semantic[0] if semantic else ""

    for at, element in _flattened(interface, where, by_id):
        kind = next(t for t in _types_of(element) if t in CONTENT_KINDS)
        name = element["name"]
        if kind in ("Relationship", "Component"):
            target = element.get("target") if kind == "Relationship" else element["schema"]
            if isinstance(target, dict):  # an inline component Interface
                skip(name, "an inline component interface: give it an @id and put it in the file")
                continue
            if target is None:
                skip(name, "a relationship without a target: livetwin's children are types")
                continue
            elements[name] = {"name": "", "kind": kind, "id": target}
            children += [] if target in children else [target]
            continue
        if kind == "Command":
            skip(name, "commands are not imported: livetwin sends device commands over MQTT")
            continue
        writable = kind == "Property" and element.get("writable") is True
        schema = _resolve(element["schema"], schemas, f"{at}.schema")
        if isinstance(schema, str):
            if schema in NUMERIC:
                add(name, name, element, kind, schema, writable)
            else:
                skip(name, _cannot(schema))
            continue
        shape = _shape(schema)
        if shape == "Enum" and schema.get("valueSchema") == "integer":
            add(name, name, element, kind, "integer", writable)  # its names are lost
        elif shape == "Object":
            fields = schema.get("fields", [])
            for f in fields if isinstance(fields, list) else []:
                if not isinstance(f, dict) or not DTDL_NAME.match(str(f.get("name"))):
                    raise InvalidInput(
                        f"{at}.schema has a field without a valid name",
                        field=f"{at}.schema",
                        fix=FIX_DTDL,
                    )
                path = f"{name}.{f['name']}"
                inner = _resolve(f.get("schema"), schemas, f"{at}.schema.fields")
                if isinstance(inner, str) and inner in NUMERIC:
                    add(path, f"{name}_{f['name']}", f, kind, inner, writable)
                elif isinstance(inner, dict) and _shape(inner) == "Object":
                    skip(path, "an Object nested in an Object: livetwin flattens one level only")
                else:
                    skip(path, _cannot(inner))
        else:
            skip(name, _cannot(schema))
    spec["source"] = {"standard": "dtdl", "id": dtmi, "elements": elements}
    spec["children"] = children
    return ImportedType(_name_of(dtmi), where, spec, children)


def _resolve(schema: Any, schemas: dict[str, Any], field: str) -> Any:
    """A schema: a primitive's name, or a complex schema object (a reference resolved)."""
    if (
        isinstance(schema, str)
        and schema.startswith("dtmi:")
        and not schema.startswith("dtmi:standard:")
    ):
        if schema not in schemas:
            raise InvalidInput(
                f"schema {excerpt(schema)} is defined nowhere in the file",
                field=field,
                fix="define it in the Interface's schemas, or use a primitive such as double",
            )
        return schemas[schema]
    if isinstance(schema, str) or (isinstance(schema, dict) and "@type" in schema):
        return schema
    raise InvalidInput(f"{excerpt(schema)} is not a DTDL schema", field=field, fix=FIX_DTDL)


def _cannot(schema: Any) -> str:
    if isinstance(schema, str):
        if schema in TEXT:
            return f"a {schema} value: livetwin holds numbers (and booleans as 1/0) only"
        return f"the schema {schema} has no livetwin counterpart"
    shape = _shape(schema)
    if shape == "Enum":
        return "a string Enum: livetwin holds numbers only (integer Enums are imported)"
    return f"a {shape} schema: livetwin holds one number per name (Objects one level deep)"


def _text(value: Any) -> str:
    """A DTDL string or language map (`{"en": ...}`) as plain text."""
    if isinstance(value, dict):
        value = value.get("en", next(iter(value.values()), ""))
    return value if isinstance(value, str) else ""


def _name_of(dtmi: str) -> str:
    return dtmi.partition(";")[0].rpartition(":")[2]


# ---- export ------------------------------------------------------------------------------


def dtmi_of(name: str, spec: TwinTypeSpec, version: int) -> str:
    """A type's DTMI: the one it was imported with, else one made from its name and version."""
    if spec.source is not None and spec.source.standard == "dtdl":
        return spec.source.id
    segments = [re.sub(r"[^A-Za-z0-9_]", "_", s).strip("_") or "x" for s in name.split(".")]
    segments = [s if s[0].isalpha() else f"t{s}" for s in segments]
    return f"dtmi:livetwin:{':'.join(segments)};{min(version, 999_999_999)}"


def export_type(
    name: str, spec: TwinTypeSpec, version: int, child_dtmi: Callable[[str], str]
) -> dict:
    """A type as a DTDL v3 Interface: properties as telemetry (or read-only properties where the
    model said so), parameters as writable properties, derived values as read-only properties,
    children as relationships (`child_dtmi` names a child type's DTMI)."""
    elements = spec.source.elements if spec.source and spec.source.standard == "dtdl" else {}
    by_name = {e.name: (path, e) for path, e in elements.items() if e.kind not in CHILD_KINDS}
    contents: list[dict] = []
    objects: dict[str, dict] = {}  # flattened Object fields regrouped by their element

    def emit(lt_name: str, kind: str, unit: str, description: str, writable: bool) -> None:
        path, element = by_name.get(lt_name, (lt_name, None))
        kind = element.kind if element is not None else kind
        outer, dot, field_name = path.partition(".")
        item: dict = {"@type": "Field" if dot else kind, "name": field_name or outer}
        quantity = to_dtdl(unit, element.semantic_type if element else "") if unit else None
        if quantity is not None:
            item["@type"], item["unit"] = [item["@type"], quantity[0]], quantity[1]
        item["schema"] = element.datatype if element and element.datatype in NUMERIC else "double"
        if description:
            item["description"] = description
        if element is not None and element.id:
            item["@id"] = element.id
        if not dot:
            contents.append({**item, "writable": writable} if kind == "Property" else item)
            return
        if outer not in objects:  # a field of an Object telemetry or property
            objects[outer] = {"@type": kind, "name": outer, "schema": {"@type": "Object"}}
            objects[outer]["schema"]["fields"] = []
            if kind == "Property":
                objects[outer]["writable"] = writable
            contents.append(objects[outer])
        objects[outer]["schema"]["fields"].append(item)

    for p_name, p in spec.properties.items():
        emit(p_name, "Telemetry", p.unit, p.description, False)
    for p_name, p in spec.parameters.items():
        emit(p_name, "Property", p.unit, p.description, True)
    for d_name, d in spec.derived.items():
        emit(d_name, "Property", d.unit, d.description or f"derived: {d.expr}", False)
    for child in spec.children:
        links = [(p, e) for p, e in elements.items() if e.kind in CHILD_KINDS and e.name == child]
        for path, element in links or [(f"has_{re.sub(r'[^A-Za-z0-9_]', '_', child)}", None)]:
            target = (element.id if element is not None else "") or child_dtmi(child)
            if element is not None and element.kind == "Component":
                contents.append({"@type": "Component", "name": path, "schema": target})
            else:
                contents.append({"@type": "Relationship", "name": path, "target": target})
    interface = {
        "@context": ["dtmi:dtdl:context;3", QUANTITATIVE],
        "@id": dtmi_of(name, spec, version),
        "@type": "Interface",
        "displayName": name[:64],
        "contents": contents,
    }
    if spec.description:
        interface["description"] = spec.description
    return interface


def export_twin(twin: dict, spec: TwinTypeSpec) -> dict:
    """A twin's current state in the shape Azure Digital Twins' API returns for a twin:
    `$dtId`, `$etag`, the values, and `$metadata` with `$model` and update times."""
    values = {**twin["properties"], **twin["parameters"], **twin["derived"]}
    updated = format_ts(twin["updated"] if twin["updated"] is not None else twin["created"])
    metadata: dict = {"$model": dtmi_of(twin["type"], spec, twin["version"])}
    metadata["$lastUpdateTime"] = updated
    shown = {}
    for name, value in values.items():
        if value is None:
            continue
        shown[name] = value
        metadata[name] = {"lastUpdateTime": updated}
    tag = hashlib.sha256(f"{twin['id']}|{twin['version']}|{updated}".encode()).hexdigest()[:32]
    return {"$dtId": twin["id"], "$etag": f'W/"{tag}"', **shown, "$metadata": metadata}
