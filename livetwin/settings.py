"""Everything a deployment sets, in one object; `Settings.from_env()` is the one place that reads
livetwin's environment variables. The defaults suit a laptop or a 1 GB Raspberry Pi.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from livetwin.errors import InvalidInput

if TYPE_CHECKING:
    import ssl

DATABASE_URL_ENV = "LIVETWIN_DATABASE_URL"  # store/open.py falls back to it without Settings
LOG_FORMAT_ENV = "LIVETWIN_LOG_FORMAT"
JOURNAL_RETENTION_ENV = "LIVETWIN_JOURNAL_RETENTION"
LIST_ENV = {  # comma-separated lists
    "outbound_allow": "LIVETWIN_OUTBOUND_ALLOW",
    "model_packages": "LIVETWIN_MODEL_PACKAGES",
    "fmu_dirs": "LIVETWIN_FMU_DIRS",
    "model_dirs": "LIVETWIN_MODEL_DIRS",
}
DEFAULT_MODEL_PACKAGES = ("livetwin.examples", "livetwin.models")
MQTT_ENV = {  # the broker connection's secrets and identity (host and port come from serve)
    "client_id": "LIVETWIN_MQTT_CLIENT_ID",
    "username": "LIVETWIN_MQTT_USERNAME",
    "password": "LIVETWIN_MQTT_PASSWORD",
    "tls_ca": "LIVETWIN_MQTT_TLS_CA",
    "tls_cert": "LIVETWIN_MQTT_TLS_CERT",
    "tls_key": "LIVETWIN_MQTT_TLS_KEY",
    "share_group": "LIVETWIN_MQTT_SHARE_GROUP",
}
JWT_ENV = {
    "jwks_url": "LIVETWIN_JWKS_URL",
    "jwt_audience": "LIVETWIN_JWT_AUDIENCE",
    "jwt_issuer": "LIVETWIN_JWT_ISSUER",
    "oidc_client_id": "LIVETWIN_OIDC_CLIENT_ID",
    "oidc_scopes": "LIVETWIN_OIDC_SCOPES",
}
# variables kept as a group, for the parser of their section: actions.email.SmtpSettings ...
SMTP_PREFIXES = ("LIVETWIN_SMTP_", "LIVETWIN_PUBLIC_URL")
# ... and registry.artifacts.artifact_store
ARTIFACT_PREFIXES = (
    "LIVETWIN_ARTIFACTS",
    "LIVETWIN_S3_",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
)


@dataclass(frozen=True)
class MqttConnection:
    """How livetwin reaches its MQTT broker, for ingest and device commands alike.

    A fixed `client_id` keeps a persistent session (clean start off, `session_expiry_s`): the
    broker holds QoS 1 messages published while livetwin is down and delivers them on reconnect.
    Without one every start is a clean session. TLS is on with `tls` or any `tls_*` file
    (`tls_ca`: the CA bundle to trust, default the system's; `tls_cert`/`tls_key`: a client
    certificate). With `share_group` every ingest subscription is a shared subscription
    (`$share/<group>/<topic>`): the broker hands each message to one of the servers in the
    group, so several front ends split one topic.
    """

    host: str
    port: int = 1883
    client_id: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: bool = False
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    session_expiry_s: int = 7 * 24 * 3600
    share_group: str | None = None

    @property
    def uses_tls(self) -> bool:
        return self.tls or any((self.tls_ca, self.tls_cert, self.tls_key))

    def check(self) -> MqttConnection:
        """Refuse what cannot work, naming the option and the fix (before anything starts)."""
        if self.password is not None and self.username is None:
            raise InvalidInput(
                "an MQTT password needs a username",
                field="mqtt.username",
                fix="set --mqtt-username (or LIVETWIN_MQTT_USERNAME)",
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise InvalidInput(
                "a TLS client certificate needs both its certificate and its key",
                field="mqtt.tls_key" if self.tls_key is None else "mqtt.tls_cert",
                fix="give --mqtt-tls-cert and --mqtt-tls-key together",
            )
        for name in ("tls_ca", "tls_cert", "tls_key"):
            path = getattr(self, name)
            if path is not None and not os.access(path, os.R_OK):
                raise InvalidInput(
                    f"the MQTT {name.replace('_', ' ').upper()} file {path} is missing or "
                    "unreadable",
                    field=f"mqtt.{name}",
                    fix="give the path of a readable PEM file",
                )
        if self.share_group is not None and (
            not self.share_group or any(c in self.share_group for c in "/+#")
        ):
            raise InvalidInput(
                f"the MQTT share group {self.share_group!r} is not a valid share name",
                field="mqtt.share_group",
                fix="give a non-empty name without '/', '+' or '#', e.g. livetwin",
            )
        if not 0 <= self.session_expiry_s <= 0xFFFFFFFF:
            raise InvalidInput(
                f"session expiry {self.session_expiry_s} s is out of range",
                field="mqtt.session_expiry",
                fix="give seconds from 0 to 4294967295",
            )
        if self.uses_tls:
            self.ssl_context()  # a file that is not a certificate fails here, at start
        return self

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context (server certificate and host name verified), or None."""
        if not self.uses_tls:
            return None
        import ssl

        try:
            context = ssl.create_default_context(cafile=self.tls_ca)
            if self.tls_cert:
                context.load_cert_chain(self.tls_cert, self.tls_key)
        except (ssl.SSLError, OSError) as exc:
            raise InvalidInput(
                f"the MQTT TLS files cannot be used: {exc}",
                field="mqtt.tls_ca" if self.tls_ca else "mqtt.tls_cert",
                fix="give PEM files: a CA bundle, and a client certificate with its key",
            ) from None
        return context

    def with_env(self, env: Mapping[str, str]) -> MqttConnection:
        """This connection with the `LIVETWIN_MQTT_*` values it leaves unset taken from `env`."""
        found = {name: env[var] for name, var in MQTT_ENV.items() if env.get(var)}
        return replace(self, **{k: v for k, v in found.items() if getattr(self, k) is None})


@dataclass
class Settings:
    """Limits, policies and the deployment's choices. A deployment field left None is read from
    the environment by `from_env` (`Platform` calls it); after that None means "not configured".
    """

    # ---- limits and policies -------------------------------------------------------------
    max_body_bytes: int = 32 * 1024 * 1024  # largest request body the API accepts
    max_import_bytes: int = 1 << 30  # largest file POST /api/imports accepts
    max_future_ms: int = 86_400_000  # observations further in the future are rejected
    snapshot_every: int = 1_000_000  # observations between snapshots ...
    snapshot_interval_s: float = 300.0  # ... and at most this long between them
    snapshot_after_replay: int = 100_000  # a start that replayed this many snapshots at once
    history_flush_rows: int = 100_000  # buffered history rows that trigger a flush ...
    history_flush_s: float = 2.0  # ... and at most this long between flushes
    cache_mb: int = 64  # SQLite page cache
    max_history_points: int = 200_000  # raw rows one history query may return
    max_artifact_bytes: int = 512 * 1024 * 1024  # largest model artifact the registry stores
    alarm_tick_s: float = 1.0  # how often `for:` conditions without new data are checked
    webhooks: bool = True  # deliver webhooks (tests run their own service with fast retries)
    run_schedules: bool = True  # calibrate on calibration.every; run the scheduler's triggers
    scheduler_modules: tuple[str, ...] = ()  # module prefixes an API `ref` may import
    # journal entries older than this (and behind the newest snapshot) are compacted into a
    # base snapshot, e.g. '90d'; None keeps the whole journal; LIVETWIN_JOURNAL_RETENTION
    journal_retention: str | None = None

    # ---- the deployment (None: from the environment) ----------------------------------------
    database_url: str | None = None  # postgresql://... ('' : SQLite); LIVETWIN_DATABASE_URL
    mqtt: MqttConnection | None = None  # the broker for ingest subscriptions and commands
    auth: str | None = None  # open, tokens or oidc (None: open on localhost, tokens elsewhere)
    jwks_url: str | None = None  # OIDC: the identity provider's keys; LIVETWIN_JWKS_URL
    jwt_audience: str | None = None  # LIVETWIN_JWT_AUDIENCE
    jwt_issuer: str | None = None  # LIVETWIN_JWT_ISSUER
    # the dashboard's "Sign in with OIDC" (authorization code + PKCE against jwt_issuer): its
    # public client id, LIVETWIN_OIDC_CLIENT_ID, and the scopes it asks for (space-separated,
    # default "openid"), LIVETWIN_OIDC_SCOPES
    oidc_client_id: str | None = None
    oidc_scopes: str | None = None
    log_format: str | None = None  # text or json; LIVETWIN_LOG_FORMAT (default text)
    smtp: Mapping[str, str] | None = None  # LIVETWIN_SMTP_* (actions.email.SmtpSettings)
    artifacts: Mapping[str, str] | None = None  # LIVETWIN_ARTIFACTS, LIVETWIN_S3_*, AWS keys
    # what outbound HTTP may reach beyond public addresses: CIDRs or host:port;
    # LIVETWIN_OUTBOUND_ALLOW (comma-separated; default: nothing inside the network)
    outbound_allow: tuple[str, ...] | None = None
    # packages a model `ref` from data (a type's model.ref, a registry version) may name;
    # LIVETWIN_MODEL_PACKAGES (default: DEFAULT_MODEL_PACKAGES)
    model_packages: tuple[str, ...] | None = None
    # folders an `fmu:` path may lie in; LIVETWIN_FMU_DIRS (default: <data>/fmus and the
    # registry's artifact folder)
    fmu_dirs: tuple[str, ...] | None = None
    # folders whose Python modules a model `ref` may name besides the packages (appended to the
    # import path); LIVETWIN_MODEL_DIRS (default: <data>/models)
    model_dirs: tuple[str, ...] | None = None

    @classmethod
    def from_env(
        cls, base: Settings | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """`base` (the defaults when None) with every deployment field it leaves None taken from
        `environ` (the process environment when None). Values set in `base` win.

        SMTP and artifact-store variables are kept as given (their own parsers validate them:
        `SmtpSettings.from_env`, `artifact_store`), so an empty mapping means "not configured".
        """
        env = os.environ if environ is None else environ
        found = {
            "database_url": env.get(DATABASE_URL_ENV, "").strip(),
            "log_format": env.get(LOG_FORMAT_ENV) or None,
            "journal_retention": env.get(JOURNAL_RETENTION_ENV, "").strip() or None,
            "smtp": _section(env, SMTP_PREFIXES),
            "artifacts": _section(env, ARTIFACT_PREFIXES),
            **{name: env.get(var) or None for name, var in JWT_ENV.items()},
            **{name: _list(env.get(var)) for name, var in LIST_ENV.items()},
        }
        settings = base if base is not None else cls()
        unset = {name: value for name, value in found.items() if getattr(settings, name) is None}
        if settings.mqtt is not None:
            unset["mqtt"] = settings.mqtt.with_env(env)
        return replace(settings, **unset)


def _list(text: str | None) -> tuple[str, ...] | None:
    """A comma- (or space-) separated variable as a tuple; None when unset or empty."""
    items = tuple(item for item in (text or "").replace(",", " ").split() if item)
    return items or None


def _section(env: Mapping[str, str], prefixes: tuple[str, ...]) -> dict[str, str]:
    return {name: value for name, value in env.items() if name.startswith(prefixes)}
