"""Everything a deployment sets, in one object; `Settings.from_env()` is the one place that reads
livetwin's environment variables. The defaults suit a laptop or a 1 GB Raspberry Pi.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

DATABASE_URL_ENV = "LIVETWIN_DATABASE_URL"  # store/open.py falls back to it without Settings
LOG_FORMAT_ENV = "LIVETWIN_LOG_FORMAT"
LIST_ENV = {  # comma-separated lists
    "outbound_allow": "LIVETWIN_OUTBOUND_ALLOW",
    "model_packages": "LIVETWIN_MODEL_PACKAGES",
    "fmu_dirs": "LIVETWIN_FMU_DIRS",
}
DEFAULT_MODEL_PACKAGES = ("livetwin.examples", "livetwin.models")
JWT_ENV = {
    "jwks_url": "LIVETWIN_JWKS_URL",
    "jwt_audience": "LIVETWIN_JWT_AUDIENCE",
    "jwt_issuer": "LIVETWIN_JWT_ISSUER",
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

    # ---- the deployment (None: from the environment) ----------------------------------------
    database_url: str | None = None  # postgresql://... ('' : SQLite); LIVETWIN_DATABASE_URL
    mqtt_host: str | None = None  # an MQTT broker: ingest subscriptions and device commands
    mqtt_port: int = 1883
    auth: str | None = None  # open, tokens or oidc (None: open on localhost, tokens elsewhere)
    jwks_url: str | None = None  # OIDC: the identity provider's keys; LIVETWIN_JWKS_URL
    jwt_audience: str | None = None  # LIVETWIN_JWT_AUDIENCE
    jwt_issuer: str | None = None  # LIVETWIN_JWT_ISSUER
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
            "smtp": _section(env, SMTP_PREFIXES),
            "artifacts": _section(env, ARTIFACT_PREFIXES),
            **{name: env.get(var) or None for name, var in JWT_ENV.items()},
            **{name: _list(env.get(var)) for name, var in LIST_ENV.items()},
        }
        settings = base if base is not None else cls()
        unset = {name: value for name, value in found.items() if getattr(settings, name) is None}
        return replace(settings, **unset)


def _list(text: str | None) -> tuple[str, ...] | None:
    """A comma- (or space-) separated variable as a tuple; None when unset or empty."""
    items = tuple(item for item in (text or "").replace(",", " ").split() if item)
    return items or None


def _section(env: Mapping[str, str], prefixes: tuple[str, ...]) -> dict[str, str]:
    return {name: value for name, value in env.items() if name.startswith(prefixes)}
