"""Asset Administration Shell submodels (JSON or AASX) as livetwin types, and types and twins
back as AAS submodels, through the Eclipse BaSyx Python SDK (`pip install 'livetwin[interop]'`).

Property elements -> properties (category PARAMETER or CONSTANT -> parameters), Range elements
-> properties with bounds, units from concept descriptions (IEC 61360), collections flattened
(`Motor_Speed`) or made child types; what livetwin cannot hold is skipped with the reason.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from livetwin.errors import InvalidInput
from livetwin.expr import RESERVED_NAMES
from livetwin.interop import CHILD_KINDS, ImportedType, Parsed, Skipped, last_segment
from livetwin.spec.types import NAME_PATTERN, TwinTypeSpec

COLLECTIONS = ("flatten", "children")
MAX_DEPTH = 16  # collections within collections
NUMERIC = frozenset(
    "xs:" + t
    for t in (
        "double float decimal integer long int short byte boolean nonPositiveInteger "
        "negativeInteger nonNegativeInteger positiveInteger unsignedLong unsignedInt "
        "unsignedShort unsignedByte"
    ).split()
)
PARAMETER_CATEGORIES = frozenset({"PARAMETER", "CONSTANT"})
IEC61360 = "https://admin-shell.io/DataSpecificationTemplates/DataSpecificationIEC61360/3/0"
FIX_AAS = 'send an AAS V3 environment ({"submodels": [...]}) in JSON, or an AASX package'


def _sdk():
    """The BaSyx SDK's model and JSON adapter, or an error naming the extra to install."""
    try:
        from basyx.aas import model
        from basyx.aas.adapter import json as aas_json
    except ImportError:  # pragma: no cover - the interop extra is installed in tests
        raise InvalidInput(
            "AAS support needs the basyx-python-sdk package",
            field="format",
            fix="pip install 'livetwin[interop]'",
        ) from None
    return model, aas_json


# ---- import ------------------------------------------------------------------------------


def parse_json(data: Any, collections: str = "flatten") -> Parsed:
    """An AAS environment (`{"submodels": [...], "conceptDescriptions": [...]}`) or a single
    Submodel object, schema-checked by the SDK's strict reader."""
    model, aas_json = _sdk()
    if isinstance(data, dict) and data.get("modelType") == "Submodel":
        data = {"submodels": [data]}
    if not isinstance(data, dict) or not {"submodels", "assetAdministrationShells"} & set(data):
        raise InvalidInput("not an AAS environment: no submodels", field="body", fix=FIX_AAS)
    text = io.StringIO(json.dumps(data))
    try:
        store = aas_json.read_aas_json_file(text, failsafe=False)
    except (KeyError, ValueError, TypeError, RecursionError, model.AASConstraintViolation) as exc:
        raise InvalidInput(
            f"not a valid AAS V3 environment: {exc}", field="body", fix=FIX_AAS
        ) from None
    return _from_store(store, collections)


def parse_aasx(raw: bytes, collections: str = "flatten") -> Parsed:
    """The submodels of an AASX package (its JSON or XML part)."""
    model, _ = _sdk()
    from basyx.aas.adapter.aasx import AASXReader, DictSupplementaryFileContainer

    store = model.DictIdentifiableStore()
    try:
        with AASXReader(io.BytesIO(raw), failsafe=False) as reader:
            reader.read_into(store, DictSupplementaryFileContainer())
    except (KeyError, ValueError, TypeError, RecursionError, model.AASConstraintViolation) as exc:
        raise InvalidInput(f"not a valid AASX package: {exc}", field="body", fix=FIX_AAS) from None
    return _from_store(store, collections)


def _from_store(store, collections: str) -> Parsed:
    model, _ = _sdk()
    if collections not in COLLECTIONS:
        raise InvalidInput(
            f"unknown collections mode {collections!r}",
            field="collections",
            fix="use flatten (Motor_Speed) or children (a child type per collection)",
        )
    concepts = {o.id: o for o in store if isinstance(o, model.ConceptDescription)}
    submodels = [o for o in store if isinstance(o, model.Submodel)]
    if not submodels:
        raise InvalidInput("the file holds no submodel", field="body", fix=FIX_AAS)
    skipped: list[Skipped] = []
    types: list[ImportedType] = []
    for k, submodel in enumerate(submodels):
        name = submodel.id_short or last_segment(submodel.id)
        version = ""
        if submodel.administration is not None and submodel.administration.version:
            version = submodel.administration.version
            if submodel.administration.revision:
                version += f".{submodel.administration.revision}"
        reader = _Reader(model, concepts, skipped, collections, types)
        reader.read(
            name, submodel.id, f"submodels[{k}]", submodel.submodel_element, submodel, version
        )
    return Parsed("aas", types, skipped)


class _Reader:
    """Walks one submodel's elements into a type (and, in `children` mode, child types)."""

    def __init__(self, model, concepts: dict, skipped: list, collections: str, types: list):
        self.model, self.concepts, self.skipped = model, concepts, skipped
        self.collections, self.types = collections, types

    def read(self, name: str, source_id: str, where: str, elements, owner, version="") -> None:
        spec: dict = {"description": _text(owner.description), "properties": {}}
        spec["parameters"], children, found = {}, [], {}
        source = {"standard": "aas", "id": source_id, "version": version, "elements": found}
        imported = ImportedType(name, where, {**spec, "source": source}, children)
        self.types.append(imported)  # parents before their children
        taken: dict[str, str] = {}
        self._walk(elements, (), imported, taken)
        imported.spec["children"] = children

    def _walk(self, elements, prefix: tuple[str, ...], into: ImportedType, taken: dict) -> None:
        model = self.model
        for element in elements:
            path = (*prefix, element.id_short)
            dotted = ".".join(path)

            def skip(reason: str, at: str = dotted) -> None:
                self.skipped.append(Skipped(f"{into.spec['source']['id']}#{at}", reason))

            if isinstance(element, model.SubmodelElementCollection):
                if len(path) > MAX_DEPTH:
                    skip(f"collections nested deeper than {MAX_DEPTH} levels")
                    continue
                if self.collections == "flatten":
                    self._walk(element.value, path, into, taken)
                    continue
                child_id = f"{into.spec['source']['id']}/{element.id_short}"
                child_name = f"{into.name}_{element.id_short}"
                self.read(child_name, child_id, f"{into.where}.{dotted}", element.value, element)
                into.spec["source"]["elements"][dotted] = {
                    "name": "",
                    "kind": "SubmodelElementCollection",
                    "id": child_id,
                }
                into.children.append(child_id)
                continue
            if isinstance(element, model.ReferenceElement):
                target = _submodel_of(model, element.value)
                if target is None:
                    skip("a reference to something other than a submodel")
                    continue
                into.spec["source"]["elements"][dotted] = {
                    "name": "",
                    "kind": "ReferenceElement",
                    "id": target,
                }
                into.children += [] if target in into.children else [target]
                continue
            if not isinstance(element, model.Property | model.Range):
                skip(f"a {type(element).__name__} element has no livetwin counterpart")
                continue
            datatype = model.datatypes.XSD_TYPE_NAMES[element.value_type]
            if datatype not in NUMERIC:
                skip(f"an {datatype} value: livetwin holds numbers (and booleans as 1/0) only")
                continue
            name = "_".join(path)
            if not re.match(NAME_PATTERN, name) or name in RESERVED_NAMES:
                skip(f"'{name}' is not a livetwin name (an identifier of at most 64 characters)")
                continue
            if name in taken:
                skip(f"its name '{name}' clashes with {taken[name]} after flattening")
                continue
            taken[name] = dotted
            entry: dict = {"unit": self._unit(element), "description": _text(element.description)}
            if isinstance(element, model.Range):
                entry.update(min=_number(element.min), max=_number(element.max))
                into.spec["properties"][name] = entry
            elif element.category in PARAMETER_CATEGORIES:
                into.spec["parameters"][name] = {"value": _number(element.value) or 0.0, **entry}
            else:
                into.spec["properties"][name] = entry
            semantic = _first_key(element.semantic_id)
            into.spec["source"]["elements"][dotted] = {
                "name": name,
                "kind": type(element).__name__,
                "id": semantic or "",
                "datatype": datatype,
            }

    def _unit(self, element) -> str:
        """The unit of the element's own IEC 61360 data specification, else of its concept."""
        holders = [element, self.concepts.get(_first_key(element.semantic_id) or "")]
        for holder in holders:
            for spec in getattr(holder, "embedded_data_specifications", None) or ():
                unit = getattr(spec.data_specification_content, "unit", None)
                if unit:
                    return unit
        return ""


def _first_key(reference) -> str | None:
    return reference.key[0].value if reference is not None and reference.key else None


def _submodel_of(model, reference) -> str | None:
    """The submodel id a ReferenceElement's value points to, if it points to a submodel."""
    if reference is None or not reference.key:
        return None
    first = reference.key[0]
    return first.value if first.type == model.KeyTypes.SUBMODEL else None


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)  # the SDK has cast it to its XSD type: int, float, bool or Decimal
    return number if math.isfinite(number) else None


def _text(value: Any) -> str:
    """A language string set as plain text (English, else the first)."""
    if not value:
        return ""
    return value.get("en") or next(iter(value.values()), "")


# ---- export ------------------------------------------------------------------------------


SpecOf = Callable[[str], "tuple[TwinTypeSpec, int] | None"]  # a child type's spec and version


def submodel_id(name: str, spec: TwinTypeSpec) -> str:
    """A type's submodel id: the one it was imported with, else one made from its name."""
    if spec.source is not None and spec.source.standard == "aas":
        return spec.source.id
    return f"urn:livetwin:type:{quote(name, safe='')}"


def export_type(name: str, spec: TwinTypeSpec, version: int, spec_of: SpecOf) -> dict:
    """A type as an AAS V3 environment: its submodel template and concept descriptions (units)."""
    model, aas_json = _sdk()
    builder = _Builder(model, spec_of, values=None)
    submodel = builder.submodel(name, spec, version, submodel_id(name, spec))
    return builder.environment(submodel)


def export_twin(twin: dict, spec: TwinTypeSpec, spec_of: SpecOf) -> dict:
    """A twin's current state as an AAS submodel instance (and the concept descriptions)."""
    model, _ = _sdk()
    values = {**twin["properties"], **twin["parameters"], **twin["derived"]}
    builder = _Builder(model, spec_of, values=values)
    template = submodel_id(twin["type"], spec)
    instance_id = f"{template}/twins/{quote(twin['id'], safe='')}"
    submodel = builder.submodel(twin["type"], spec, twin["version"], instance_id)
    submodel.semantic_id = model.ExternalReference(
        (model.Key(model.KeyTypes.GLOBAL_REFERENCE, template),)
    )
    return builder.environment(submodel)


class _Builder:
    """Builds submodels (templates when `values` is None, else instances) and their concepts."""

    def __init__(self, model, spec_of: SpecOf, values: dict | None):
        self.model, self.spec_of, self.values = model, spec_of, values
        self.concepts: dict[str, Any] = {}

    def environment(self, submodel) -> dict:
        _, aas_json = _sdk()
        store = self.model.DictIdentifiableStore([submodel, *self.concepts.values()])
        return json.loads(aas_json.object_store_to_json(store))

    def submodel(self, name: str, spec: TwinTypeSpec, version: int, identifier: str):
        model = self.model
        administration = model.AdministrativeInformation(version=str(min(version, 9999)))
        if spec.source is not None and spec.source.standard == "aas":
            kept, _, revision = spec.source.version.partition(".")
            administration = (
                model.AdministrativeInformation(version=kept, revision=revision or None)
                if kept
                else None
            )
        submodel = model.Submodel(
            identifier,
            id_short=_id_short(name),
            description=_langs(model, spec.description),
            administration=administration,
            kind=model.ModellingKind.TEMPLATE
            if self.values is None
            else model.ModellingKind.INSTANCE,
        )
        for element in self.elements(name, spec):
            submodel.submodel_element.add(element)
        return submodel

    def elements(self, name: str, spec: TwinTypeSpec) -> list:
        """The type's elements, regrouped into the collections they were flattened from."""
        model = self.model
        kept = spec.source.elements if spec.source and spec.source.standard == "aas" else {}
        by_name = {e.name: (p, e) for p, e in kept.items() if e.kind not in CHILD_KINDS}
        top: list = []
        groups: dict[tuple[str, ...], Any] = {}

        def place(path: str, element) -> None:
            *outer, _ = path.split(".")
            if not outer:
                top.append(element)
                return
            for depth in range(1, len(outer) + 1):
                key = tuple(outer[:depth])
                if key not in groups:
                    groups[key] = model.SubmodelElementCollection(key[-1])
                    (groups[key[:-1]].value.add if depth > 1 else top.append)(groups[key])
            groups[tuple(outer)].value.add(element)

        sections = (
            [(n, p, "property") for n, p in spec.properties.items()]
            + [(n, p, "parameter") for n, p in spec.parameters.items()]
            + [(n, d, "derived") for n, d in spec.derived.items()]
        )
        for lt_name, declared, role in sections:
            path, element = by_name.get(lt_name, (lt_name, None))
            leaf = path.rpartition(".")[2]
            semantic = element.id if element else ""
            place(path, self.data_element(leaf, lt_name, declared, role, element, semantic))
        for child in spec.children:
            links = [(p, e) for p, e in kept.items() if e.kind in CHILD_KINDS and e.name == child]
            found = self.spec_of(child)
            for path, element in links or [(f"has_{child}", None)]:
                if element is not None and element.kind == "SubmodelElementCollection" and found:
                    collection = model.SubmodelElementCollection(_id_short(path))
                    collection.description = _langs(model, found[0].description)
                    for inner in self.elements(child, found[0]):
                        collection.value.add(inner)
                    place(path, collection)
                    continue
                target = (element.id if element else "") or (
                    submodel_id(child, found[0]) if found else submodel_id(child, TwinTypeSpec())
                )
                reference = model.ModelReference(
                    (model.Key(model.KeyTypes.SUBMODEL, target),), model.Submodel
                )
                place(path, model.ReferenceElement(_id_short(path.rpartition(".")[2]), reference))
        return top

    def data_element(self, leaf: str, lt_name: str, declared, role: str, element, semantic: str):
        model = self.model
        datatype = element.datatype if element and element.datatype in NUMERIC else "xs:double"
        value_type = model.datatypes.XSD_TYPE_CLASSES[datatype]
        common: dict = {"description": _langs(model, declared.description)}
        if role == "derived" and not declared.description:
            common["description"] = _langs(model, f"derived: {declared.expr}")
        if semantic:  # the unit goes to its concept description, else onto the element
            common["semantic_id"] = model.ExternalReference(
                (model.Key(model.KeyTypes.GLOBAL_REFERENCE, semantic),)
            )
        if semantic and declared.unit:
            self.concepts[semantic] = model.ConceptDescription(
                semantic,
                id_short=_id_short(lt_name),
                embedded_data_specifications=[_unit_spec(model, lt_name, declared.unit)],
            )
        elif declared.unit:
            common["embedded_data_specifications"] = [_unit_spec(model, lt_name, declared.unit)]
        kind = element.kind if element else ("Range" if _bounded(declared) else "Property")
        if self.values is None and kind == "Range" and role == "property":
            low, high = (_cast(value_type, v) for v in (declared.min, declared.max))
            return model.Range(_id_short(leaf), value_type, min=low, max=high, **common)
        if role == "parameter":
            value = declared.value if self.values is None else self.values.get(lt_name)
            return model.Property(
                _id_short(leaf),
                value_type,
                _cast(value_type, value),
                category="PARAMETER",
                **common,
            )
        value = None if self.values is None else self.values.get(lt_name)
        return model.Property(_id_short(leaf), value_type, _cast(value_type, value), **common)


def _bounded(declared) -> bool:
    return getattr(declared, "min", None) is not None or getattr(declared, "max", None) is not None


def _cast(value_type, value):
    """A number as the element's XSD type (None for an unknown value)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return None
    if value_type is bool:
        return bool(value)
    if issubclass(value_type, int):
        return value_type(round(value))
    return value_type(value) if value_type is not float else float(value)


def _unit_spec(model, name: str, unit: str):
    """An IEC 61360 data specification that states a unit."""
    content = model.DataSpecificationIEC61360(
        model.PreferredNameTypeIEC61360({"en": name}), unit=unit
    )
    reference = model.ExternalReference((model.Key(model.KeyTypes.GLOBAL_REFERENCE, IEC61360),))
    return model.EmbeddedDataSpecification(reference, content)


def _langs(model, text: str):
    return model.MultiLanguageTextType({"en": text}) if text else None


def _id_short(text: str) -> str:
    """An AAS idShort (a letter, then letters, digits, _ or -; not ending in -)."""
    short = re.sub(r"[^A-Za-z0-9_-]", "_", text)[:128].rstrip("-")
    return short if short and short[0].isalpha() else f"x{short}"[:128]
