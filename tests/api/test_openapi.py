"""The OpenAPI document tells the truth: a bounded schemathesis run over every operation,
in-process, open and with an admin token, fails on a 5xx, an undocumented status code or content
type, a response that breaks its schema, and an operation whose schema is invalid."""

from __future__ import annotations

import re

import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Err
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from livetwin.api.app import create_app
from livetwin.api.auth import install_auth
from livetwin.platform import Platform, Settings

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# Not run: `unsupported_method` (405 with Allow for undeclared methods) needs schemathesis'
# coverage phase, which this bounded run skips; test_a_method_a_route_does_not_have_answers_405_
# with_allow checks it directly.
# Bounded: a fixed seed (derandomize), a few examples per operation, no shrinking and no
# example database, so the two runs together take about a minute on a small machine.
BOUNDED = settings(
    max_examples=12,
    derandomize=True,
    database=None,
    deadline=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
# The live stream never ends by itself, and the in-process client reads a body to its end: its
# document (text/event-stream) is checked by test_stream_is_documented_as_event_stream instead.
NOT_CALLED = {("GET", "/api/stream")}


def _describe(exc: BaseException) -> str:
    found = exc.exceptions if isinstance(exc, FailureGroup) else [exc]
    return "\n".join(f"{type(f).__name__}: {f}" for f in found)


def _platform(tmp_path, name: str) -> Platform:
    # webhook routes exist only with the service; the scheduler stays stopped (no runs execute)
    settings = Settings(max_body_bytes=200_000, webhooks=True, run_schedules=False)
    return Platform(tmp_path / name, settings=settings)


def _check_every_operation(app, headers: dict | None = None) -> None:
    """Run the bounded checks over each operation of the app's document; fail listing all."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            failures.append(f"invalid schema: {result.err()}")
            continue
        operation = result.ok()
        if (operation.method.upper(), operation.path) in NOT_CALLED:
            continue
        cases = st.one_of(*(operation.as_strategy(mode) for mode in GenerationMode))

        @BOUNDED
        @given(case=cases)
        def answers_as_documented(case):
            case.call_and_validate(headers=headers, checks=CHECKS)

        try:
            answers_as_documented()
        except (Exception, FailureGroup) as exc:  # every operation's failures are reported
            failures.append(f"{operation.label}: {_describe(exc)}")
    assert not failures, "\n\n".join(failures)


def _describe(exc: BaseException) -> str:
    found = exc.exceptions if isinstance(exc, FailureGroup) else [exc]
    return "\n".join(f"{type(f).__name__}: {f}" for f in found)


def _platform(tmp_path, name: str) -> Platform:
    # webhook routes exist only with the service; the scheduler stays stopped (no runs execute)
    settings = Settings(max_body_bytes=200_000, webhooks=True, run_schedules=False)
    return Platform(tmp_path / name, settings=settings)


def test_open_mode_answers_as_documented(tmp_path):
    with _platform(tmp_path, "open") as platform:
        _check_every_operation(create_app(platform))


def test_tokens_mode_answers_as_documented(tmp_path):
    with _platform(tmp_path, "tokens") as platform:
        app = create_app(platform)
        tokens = install_auth(app, platform, mode="tokens")
        admin = tokens.create(name="schemathesis", scope="admin", namespace="*")["token"]
        _check_every_operation(app, {"Authorization": f"Bearer {admin}"})


def _document(app) -> dict:
    with TestClient(app) as client:
        return client.get("/openapi.json").json()


def test_document_declares_what_the_checker_cannot_call(platform):
    """The stream is text/event-stream, the ingest result has a schema, every path template's
    parameters are declared (the DELETE refusals too), and no operation claims FastAPI's own
    validation error: livetwin answers `{"error": {...}}`."""
    document = _document(create_app(platform))
    stream = document["paths"]["/api/stream"]["get"]["responses"]["200"]["content"]
    assert list(stream) == ["text/event-stream"]
    ingest = document["paths"]["/api/ingest"]["post"]["responses"]
    assert ingest["200"]["content"]["application/json"]["schema"]["required"] == [
        "accepted",
        "duplicates",
        "rejected",
    ]
    for path, operations in document["paths"].items():
        templated = set(re.findall(r"{([^}]+)}", path))
        for method, operation in operations.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == templated, (method, path)
            assert "HTTPValidationError" not in str(operation), (method, path)
    refusal = document["paths"]["/api/models/{name}/versions/{version}"]["delete"]
    assert set(refusal["responses"]) >= {"405"}
    error = document["components"]["schemas"]["ErrorBody"]
    assert error["required"] == ["error"]


def test_tokens_mode_documents_the_bearer_scheme_and_401_403(platform):
    app = create_app(platform)
    install_auth(app, platform, mode="tokens")
    document = _document(app)
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    twins = document["paths"]["/api/twins"]["get"]
    assert twins["security"] == [{"bearer": []}]
    assert {"401", "403"} <= set(twins["responses"])
    health = document["paths"]["/api/health"]["get"]
    assert "security" not in health and "401" not in health["responses"]
    assert "securitySchemes" not in _document(create_app(platform)).get("components", {})


def test_a_method_a_route_does_not_have_answers_405_with_allow(client):
    r = client.patch("/api/types")
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "http_error"
    assert r.headers["allow"] == "GET"
