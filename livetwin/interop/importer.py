"""Declares the types a DTDL or AAS file describes: all or none, each under the name of the type
already imported from the same model (so a newer model version updates it)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from livetwin.errors import Conflict, InvalidInput, LivetwinError
from livetwin.interop import CHILD_KINDS, Parsed, aas, dtdl, last_segment, source_key
from livetwin.spec.types import CompiledType, compile_type, parse_type_spec

FORMATS = ("dtdl", "aas")
ZIP_MAGIC = b"PK\x03\x04"  # an AASX package is an OPC (zip) file


def is_package(raw: bytes) -> bool:
    """Whether a file's bytes are a zip package (AASX) rather than JSON."""
    return raw.startswith(ZIP_MAGIC)


def parse_models(
    document: Any, *, format: str | None = None, collections: str = "flatten"
) -> Parsed:
    """The types a file describes: `document` is parsed JSON, or the bytes of an AASX package.

    `format` (dtdl or aas) is read from the document when not given."""
    if format is not None and format not in FORMATS:
        raise InvalidInput(
            f"unknown format {format!r}", field="format", fix="use format=dtdl or format=aas"
        )
    if isinstance(document, bytes):
        if format == "dtdl":
            raise InvalidInput("a zip package is not DTDL", field="format", fix="send DTDL as JSON")
        return aas.parse_aasx(document, collections)
    format = format or _sniff(document)
    if format == "dtdl":
        return dtdl.parse(document)
    return aas.parse_json(document, collections)


def _sniff(document: Any) -> str:
    first = document[0] if isinstance(document, list) and document else document
    if isinstance(first, dict) and ("@context" in first or "@type" in first):
        return "dtdl"
    if isinstance(document, dict) and (
        {"submodels", "assetAdministrationShells", "conceptDescriptions"} & set(document)
        or document.get("modelType") == "Submodel"
    ):
        return "aas"
    raise InvalidInput(
        "cannot tell whether the file is DTDL or AAS",
        field="format",
        fix="send a DTDL Interface (with @context) or an AAS environment (with submodels), "
        "or name it with format=dtdl or format=aas",
    )


def declare(
    parsed: Parsed,
    existing: dict[str, CompiledType],
    put_type: Callable[[str, dict], dict],
    *,
    prefix: str = "",
) -> dict:
    """Check every type of `parsed` against the `existing` ones (by name), then declare them.

    Answers `{"types": [{name, version, changed, source}], "skipped": [{path, reason}]}`;
    raises before declaring anything when one type is unusable or clashes."""
    imported = {
        source_key(ct.spec.source.standard, ct.spec.source.id): name
        for name, ct in existing.items()
        if ct.spec.source is not None
    }
    names: dict[str, str] = {}  # source key -> livetwin type name
    for t in parsed.types:
        key = source_key(parsed.standard, t.spec["source"]["id"])
        name = imported.get(key) or type_name(prefix + t.name)
        held = existing.get(name)
        held_source = held.spec.source if held is not None else None
        if held is not None and (
            held_source is None or source_key(held_source.standard, held_source.id) != key
        ):
            raise Conflict(
                f"type '{name}' exists and was not imported from {t.spec['source']['id']}"
                + (f" (it came from {held_source.id})" if held_source else ""),
                field=f"{t.where}.name",
                fix="import with a prefix (?prefix=... or --prefix) to give the new types "
                "other names",
            )
        if name in names.values():
            raise InvalidInput(
                f"two models of the file map to the type name '{name}'",
                field=f"{t.where}.name",
                fix="give them ids that end differently, or import them separately",
            )
        names[key] = name

    def child_name(source_id: str) -> str:
        key = source_key(parsed.standard, source_id)
        return names.get(key) or imported.get(key) or type_name(prefix + last_segment(source_id))

    checked: list[tuple[str, dict]] = []
    for t in parsed.types:
        name = names[source_key(parsed.standard, t.spec["source"]["id"])]
        spec = {**t.spec, "children": [child_name(c) for c in t.children]}
        for element in spec["source"]["elements"].values():
            if element["kind"] in CHILD_KINDS:
                element["name"] = child_name(element["id"])
        if not spec["properties"] and not spec["parameters"]:
            error = InvalidInput(
                f"nothing usable remains of {t.spec['source']['id']}: livetwin needs at least "
                "one numeric property or parameter, and every element was skipped",
                field=t.where,
                fix="add numeric telemetry or properties to the model, or leave it out of the file",
            )
            ours = t.spec["source"]["id"]
            error.details = [s.to_dict() for s in parsed.skipped if s.path.startswith(ours)]
            raise error
        try:
            compile_type(parse_type_spec(spec, name), 1)
        except LivetwinError as exc:
            exc.field = f"{t.where} ({name}).{exc.field}" if exc.field else t.where
            raise
        checked.append((name, spec))
    declared = []
    for name, spec in checked:
        result = put_type(name, spec)
        declared.append({**result, "source": spec["source"]["id"]})
    return {"types": declared, "skipped": [s.to_dict() for s in parsed.skipped]}


def type_name(text: str) -> str:
    """A livetwin type name made from a model's name (invalid characters become '_')."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:64]
    return name if name and name[0].isalpha() else ("T" + name)[:64]
