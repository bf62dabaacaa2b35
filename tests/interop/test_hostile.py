"""Whatever a file holds, parsing it answers a livetwin error naming the field (or types), never
an exception of another kind: random JSON shaped like DTDL interfaces and AAS environments."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from livetwin.errors import LivetwinError
from livetwin.interop.importer import parse_models

KEYS = ["@context", "@id", "@type", "contents", "name", "schema", "fields", "extends"]
KEYS += ["schemas", "unit", "writable", "target", "valueSchema", "submodels", "modelType"]
KEYS += ["idShort", "id", "valueType", "value", "submodelElements", "min", "max", "category"]
WORDS = ["dtmi:dtdl:context;3", "dtmi:com:x:A;1", "Interface", "Telemetry", "Property"]
WORDS += ["Component", "Relationship", "Object", "Enum", "double", "string", "integer"]
WORDS += ["Submodel", "Property", "Range", "SubmodelElementCollection", "xs:double", "x"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False), st.sampled_from(WORDS)
)
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=6)
    ),
    max_leaves=40,
)
BOUNDED = settings(
    max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)


@BOUNDED
@given(document=documents, format=st.sampled_from([None, "dtdl", "aas"]))
def test_random_documents_parse_or_answer_a_livetwin_error(document, format):
    try:
        parse_models(document, format=format)
    except LivetwinError as exc:
        assert exc.field and exc.fix


@BOUNDED
@given(raw=st.binary(max_size=200).map(lambda b: b"PK\x03\x04" + b))
def test_random_zip_bytes_answer_a_livetwin_error(raw):
    try:
        parse_models(raw)
    except LivetwinError as exc:
        assert exc.field == "body"
