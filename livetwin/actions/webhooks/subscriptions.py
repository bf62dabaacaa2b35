"""Webhook subscriptions: what a subscriber asked for (URL, secret, filters), checked, and how
each delivery is signed so the receiver can verify it."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from livetwin.errors import InvalidInput
from livetwin.namespaces import check_namespace, namespace_of

KINDS = ("state", "created", "alarm", "run", "job", "removed")  # "job": the older name of "run"
NOTICE_KINDS = ("alarm", "run", "job", "removed")  # "removed": a twin deleted
MIN_SECRET = 16


@dataclass(frozen=True)
class Filters:
    """Which events a subscription wants: a twin type, a twin id prefix, event kinds, and a
    namespace (its twins only; a subscription of a namespace-scoped token always has one)."""

    type: str | None = None
    twin_prefix: str | None = None
    kinds: tuple[str, ...] = ("state",)
    namespace: str | None = None

    def to_dict(self) -> dict:
        out = {"type": self.type, "twin_prefix": self.twin_prefix, "kinds": list(self.kinds)}
        return out if self.namespace is None else {**out, "namespace": self.namespace}

    def twin_ok(self, twin: str | None) -> bool:
        if self.namespace is not None and (twin is None or namespace_of(twin) != self.namespace):
            return False
        return self.twin_prefix is None or (twin is not None and twin.startswith(self.twin_prefix))


@dataclass(frozen=True)
class Subscription:
    id: str
    url: str
    secret: str
    filters: Filters
    from_seq: int
    created: int

    def public(self) -> dict:
        """What the API shows: everything but the secret."""
        return {
            "id": self.id,
            "url": self.url,
            "filters": self.filters.to_dict(),
            "from_seq": self.from_seq,
            "created": self.created,
        }


def sign(secret: str, body: bytes) -> str:
    """The `X-Livetwin-Signature` header value for `body`: `sha256=<hex HMAC-SHA256>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str | None) -> bool:
    """Whether `header` is the signature of `body` under `secret` (constant-time compare)."""
    return hmac.compare_digest(sign(secret, body), header or "")


def _invalid(message: str, field: str, fix: str) -> InvalidInput:
    return InvalidInput(message, field=field, fix=fix)


def validate_subscription(body: Any) -> tuple[str, str, Filters]:
    """(url, secret, filters) from a POST body, or InvalidInput naming the field and the fix."""
    if not isinstance(body, dict):
        raise _invalid(
            "the body must be a JSON object",
            "body",
            'send {"url": "https://...", "secret": "...", "filters": {...}}',
        )
    unknown = sorted(set(body) - {"url", "secret", "filters"})
    if unknown:
        raise _invalid(
            f"unknown field(s): {', '.join(unknown)}", unknown[0], "use only url, secret, filters"
        )
    url = body.get("url")
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise _invalid(
            "url must be an http:// or https:// URL with a host",
            "url",
            "e.g. https://example.com/hooks/livetwin",
        )
    secret = body.get("secret")
    if not isinstance(secret, str) or len(secret) < MIN_SECRET:
        raise _invalid(
            f"secret is required: a string of at least {MIN_SECRET} characters",
            "secret",
            "generate one, e.g. python -c 'import secrets; print(secrets.token_hex(32))'",
        )
    raw = body.get("filters") or {}
    if not isinstance(raw, dict):
        raise _invalid(
            "filters must be an object",
            "filters",
            'e.g. {"type": "pump", "twin_prefix": "site-a/", "kinds": ["state", "alarm"]}',
        )
    unknown = sorted(set(raw) - {"type", "twin_prefix", "kinds", "namespace"})
    if unknown:
        raise _invalid(
            f"unknown filter(s): {', '.join(unknown)}",
            f"filters.{unknown[0]}",
            "use only type, twin_prefix, kinds and namespace",
        )
    namespace = raw.get("namespace")
    if namespace is not None:
        check_namespace(namespace, "filters.namespace")
    for name in ("type", "twin_prefix"):
        if raw.get(name) is not None and (not isinstance(raw[name], str) or not raw[name]):
            raise _invalid(
                f"filters.{name} must be a non-empty string",
                f"filters.{name}",
                f"give a string or leave {name} out to match all",
            )
    kinds = raw.get("kinds", ["state"])
    if not isinstance(kinds, list) or not kinds or not all(isinstance(k, str) for k in kinds):
        raise _invalid(
            "filters.kinds must be a non-empty list of strings",
            "filters.kinds",
            f"use some of: {', '.join(KINDS)}",
        )
    bad = sorted(set(kinds) - set(KINDS))
    if bad:
        raise _invalid(
            f"unknown event kind(s): {', '.join(bad)}",
            "filters.kinds",
            f"use some of: {', '.join(KINDS)}",
        )
    kinds_in_order = tuple(k for k in KINDS if k in kinds)
    return url, secret, Filters(raw.get("type"), raw.get("twin_prefix"), kinds_in_order, namespace)


def filters_from_json(text: str | bytes) -> Filters:
    """The filters of a stored subscription (the JSON of `Filters.to_dict`)."""
    raw = orjson.loads(text)
    kinds = tuple(raw.get("kinds") or ("state",))
    return Filters(raw.get("type"), raw.get("twin_prefix"), kinds, raw.get("namespace"))
