"""Where model artifacts live: content-addressed blobs (by sha256) on local files or on
S3-compatible object storage. `artifact_store()` is the one place that picks the backend.

Configuration (environment): `LIVETWIN_ARTIFACTS=files|s3` (default: s3 when
`LIVETWIN_S3_BUCKET` is set, else files); `LIVETWIN_S3_ENDPOINT`, `LIVETWIN_S3_BUCKET`,
`LIVETWIN_S3_REGION`, `LIVETWIN_S3_PREFIX`, `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`
(or boto3's own `AWS_PROFILE`/`AWS_SHARED_CREDENTIALS_FILE`), or `LIVETWIN_S3_CONFIG`: a
JSON file with the keys endpoint, bucket, region, prefix, access_key_id, secret_access_key.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import orjson

from livetwin.errors import InvalidInput, NotFound, Unavailable
from livetwin.outbound import OutboundPolicy

CHUNK = 1 << 20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ArtifactStore(Protocol):
    """Immutable blobs addressed by the sha256 of their content (there is no delete)."""

    def check(self) -> None:
        """Raise Unavailable with a fix when the store cannot be used (called at start)."""

    def put(self, path: Path, sha256: str) -> None:
        """Store the file at `path` whose content hashes to `sha256` (no-op if present)."""

    def exists(self, sha256: str) -> bool: ...

    def read(self, sha256: str) -> Iterator[bytes]:
        """The blob's bytes in chunks (NotFound if it is missing)."""

    def describe(self) -> dict:
        """Backend and location, for health output (no secrets)."""


def blob_key(sha256: str) -> str:
    if not _SHA256.match(sha256):
        raise ValueError(f"not a sha256 hex digest: {sha256!r}")
    return f"sha256/{sha256[:2]}/{sha256}"


def hash_file(path: Path) -> tuple[str, int]:
    """(sha256 hex, size in bytes) of a file."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _missing_blob(sha256: str) -> NotFound:
    return NotFound(
        f"artifact blob {sha256} is missing from the artifact store",
        field="artifact",
        fix="restore the artifact store from a backup; blobs are never deleted by livetwin",
    )


class FileArtifactStore:
    """Blobs as files under `root/sha256/ab/<sha256>`, written atomically and fsynced."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def check(self) -> None:
        try:
            (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Unavailable(
                f"cannot create the artifact directory {self.root}: {exc}",
                field="artifacts",
                fix="make the data directory writable",
            ) from None

    def _path(self, sha256: str) -> Path:
        return self.root / blob_key(sha256)

    def put(self, path: Path, sha256: str) -> None:
        target = self._path(sha256)
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.root / "tmp")
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                for chunk in iter(lambda: src.read(CHUNK), b""):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def exists(self, sha256: str) -> bool:
        return self._path(sha256).exists()

    def read(self, sha256: str) -> Iterator[bytes]:
        try:
            handle = open(self._path(sha256), "rb")
        except FileNotFoundError:
            raise _missing_blob(sha256) from None
        return _chunks(handle)

    def describe(self) -> dict:
        return {"backend": "files", "root": str(self.root)}


def _chunks(handle) -> Iterator[bytes]:
    with handle:
        yield from iter(lambda: handle.read(CHUNK), b"")


@dataclass(frozen=True)
class S3Config:
    """Where the S3 artifact store is; credentials fall back to boto3's own chain when None."""

    bucket: str
    endpoint: str | None = None
    region: str | None = None
    prefix: str = ""
    access_key_id: str | None = None
    secret_access_key: str | None = None

    @staticmethod
    def from_env(env: Mapping[str, str]) -> S3Config:
        """From `LIVETWIN_S3_CONFIG` (a JSON file) overridden by the environment variables."""
        values: dict = {}
        config_file = env.get("LIVETWIN_S3_CONFIG")
        if config_file:
            try:
                values = orjson.loads(Path(config_file).read_bytes())
            except (OSError, orjson.JSONDecodeError) as exc:
                raise InvalidInput(
                    f"cannot read the S3 config file {config_file}: {exc}",
                    field="LIVETWIN_S3_CONFIG",
                    fix="point it to a JSON file with bucket, endpoint, region and credentials",
                ) from None
            known = {f.name for f in fields(S3Config)}
            unknown = set(values) - known if isinstance(values, dict) else {"(not an object)"}
            if unknown:
                raise InvalidInput(
                    f"unknown key(s) in {config_file}: {', '.join(sorted(unknown))}",
                    field="LIVETWIN_S3_CONFIG",
                    fix=f"use only {', '.join(sorted(known))}",
                )
        for key, var in (
            ("bucket", "LIVETWIN_S3_BUCKET"),
            ("endpoint", "LIVETWIN_S3_ENDPOINT"),
            ("region", "LIVETWIN_S3_REGION"),
            ("prefix", "LIVETWIN_S3_PREFIX"),
            ("access_key_id", "AWS_ACCESS_KEY_ID"),
            ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
        ):
            if env.get(var):
                values[key] = env[var]
        if not values.get("bucket"):
            raise InvalidInput(
                "the S3 artifact store needs a bucket",
                field="LIVETWIN_S3_BUCKET",
                fix="set LIVETWIN_S3_BUCKET (and LIVETWIN_S3_ENDPOINT for MinIO and friends)",
            )
        return S3Config(**values)


def s3_client(config: S3Config, outbound: OutboundPolicy | None = None) -> Any:
    """A boto3 S3 client for `config`'s endpoint and credentials; the endpoint passes `outbound`
    (default: public addresses only) now, and every request's URL before it is sent."""
    policy = outbound or OutboundPolicy()
    if config.endpoint:
        policy.check_url(config.endpoint, "LIVETWIN_S3_ENDPOINT", unresolved_ok=True)
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise Unavailable(
            "S3 storage needs boto3",
            field="LIVETWIN_ARTIFACTS",
            fix="pip install 'livetwin[s3]', or use LIVETWIN_ARTIFACTS=files",
        ) from None
    client = boto3.client(
        "s3",
        endpoint_url=config.endpoint,
        region_name=config.region,
        aws_access_key_id=config.access_key_id,
        aws_secret_access_key=config.secret_access_key,
        config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5),
    )

    def check_request(request, **_) -> None:
        policy.check_url(request.url, "LIVETWIN_S3_ENDPOINT")

    client.meta.events.register("before-send.s3", check_request)
    return client


class S3ArtifactStore:
    """Blobs as objects `<prefix>sha256/ab/<sha256>` in an S3-compatible bucket (boto3)."""

    def __init__(self, config: S3Config, outbound: OutboundPolicy | None = None):
        """`outbound`: the policy the endpoint passes now and every request's URL passes
        before it is sent (default: public addresses only)."""
        self.config = config
        self.client = s3_client(config, outbound)

    def _key(self, sha256: str) -> str:
        return self.config.prefix + blob_key(sha256)

    def check(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        where = f"at {self.config.endpoint}" if self.config.endpoint else "on AWS"
        try:
            self.client.head_bucket(Bucket=self.config.bucket)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404:
                raise Unavailable(
                    f"the S3 bucket '{self.config.bucket}' does not exist {where}",
                    field="LIVETWIN_S3_BUCKET",
                    fix=f"create it (aws s3 mb s3://{self.config.bucket}) or set "
                    "LIVETWIN_S3_BUCKET to an existing bucket",
                ) from None
            raise Unavailable(
                f"the S3 bucket '{self.config.bucket}' {where} refused access (HTTP {status})",
                field="AWS_ACCESS_KEY_ID",
                fix="check the credentials and that they may read and write the bucket",
            ) from None
        except BotoCoreError as exc:
            raise Unavailable(
                f"cannot reach S3 {where}: {exc}",
                field="LIVETWIN_S3_ENDPOINT",
                fix="check the endpoint URL and that the server is running",
            ) from None

    def exists(self, sha256: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.config.bucket, Key=self._key(sha256))
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                return False
            raise
        return True

    def put(self, path: Path, sha256: str) -> None:
        if self.exists(sha256):
            return
        self.client.upload_file(
            str(path),
            self.config.bucket,
            self._key(sha256),
            ExtraArgs={"Metadata": {"sha256": sha256}},
        )

    def read(self, sha256: str) -> Iterator[bytes]:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=self.config.bucket, Key=self._key(sha256))["Body"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise _missing_blob(sha256) from None
            raise
        return _s3_chunks(body)

    def describe(self) -> dict:
        return {
            "backend": "s3",
            "endpoint": self.config.endpoint,
            "bucket": self.config.bucket,
            "prefix": self.config.prefix,
        }


def bucket_client(artifacts: dict | None, outbound: OutboundPolicy | None, bucket: str) -> Any:
    """A client on the deployment's S3 endpoint and credentials (the artifact store's
    LIVETWIN_S3_* settings, `artifacts`) for another `bucket`, through `outbound` (the `import`
    job's S3 prefixes)."""
    config = S3Config.from_env({**(artifacts or {}), "LIVETWIN_S3_BUCKET": bucket})
    return s3_client(config, outbound)


def _s3_chunks(body) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(CHUNK)
    finally:
        body.close()


def artifact_store(
    data_dir: str | Path,
    env: Mapping[str, str] | None = None,
    outbound: OutboundPolicy | None = None,
) -> ArtifactStore:
    """The configured artifact store (see the module docstring): the one place that chooses.
    An S3 endpoint must pass `outbound` (the outbound policy; default: public addresses only)."""
    env = os.environ if env is None else env
    backend = env.get("LIVETWIN_ARTIFACTS") or (
        "s3" if env.get("LIVETWIN_S3_BUCKET") or env.get("LIVETWIN_S3_CONFIG") else "files"
    )
    if backend == "files":
        return FileArtifactStore(Path(data_dir) / "artifacts")
    if backend == "s3":
        return S3ArtifactStore(S3Config.from_env(env), outbound)
    raise InvalidInput(
        f"unknown artifact store '{backend}'",
        field="LIVETWIN_ARTIFACTS",
        fix="use files (the default) or s3",
    )
