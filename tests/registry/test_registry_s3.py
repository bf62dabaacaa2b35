"""The S3 artifact store against a real S3-protocol server (moto's, on a free loopback port):
configuration from the environment or a file, round trips through the registry API, and a
clear error at start for a missing bucket or an unreachable endpoint."""

from __future__ import annotations

import hashlib
import os

import orjson
import pytest
from fastapi.testclient import TestClient
from s3_support import CREDENTIALS, moto_s3, s3_client
from webhook_support import LOOPBACK, free_port

from livetwin.api.app import create_app
from livetwin.errors import InvalidInput, Unavailable
from livetwin.outbound import OutboundDenied, OutboundPolicy
from livetwin.platform import Platform
from livetwin.registry import FileArtifactStore, Registry, S3ArtifactStore, artifact_store

try:
    import boto3  # noqa: F401
    import moto.server  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    if os.environ.get("CI") == "true":
        raise
    pytest.skip(
        f"moto[server] and boto3 are needed for the S3 tests: {exc}", allow_module_level=True
    )

BUCKET = "livetwin-artifacts"


def store_for(data_dir, env):
    """The configured artifact store; moto listens on loopback, so the policy allows it."""
    return artifact_store(data_dir, env, OutboundPolicy(LOOPBACK))


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture
def s3_env(s3_endpoint):
    env = {
        "LIVETWIN_S3_ENDPOINT": s3_endpoint,
        "LIVETWIN_S3_BUCKET": BUCKET,
        "LIVETWIN_S3_REGION": "us-east-1",
        "LIVETWIN_S3_PREFIX": "site-a/",
        **CREDENTIALS,
    }
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    yield env, client
    listed = client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    for item in listed:  # the test server's bucket, emptied for the next test
        client.delete_object(Bucket=BUCKET, Key=item["Key"])
    client.delete_bucket(Bucket=BUCKET)


def test_the_backend_is_chosen_by_configuration(tmp_path, s3_env):
    env, _ = s3_env
    assert isinstance(store_for(tmp_path, {}), FileArtifactStore)
    assert isinstance(store_for(tmp_path, env), S3ArtifactStore)
    with pytest.raises(InvalidInput) as info:
        store_for(tmp_path, {"LIVETWIN_ARTIFACTS": "ftp"})
    assert info.value.field == "LIVETWIN_ARTIFACTS"
    with pytest.raises(InvalidInput) as info:
        store_for(tmp_path, {"LIVETWIN_ARTIFACTS": "s3"})
    assert info.value.field == "LIVETWIN_S3_BUCKET"
    # a config file works too; the environment overrides it
    config = tmp_path / "s3.json"
    config.write_bytes(
        orjson.dumps(
            {
                "endpoint": env["LIVETWIN_S3_ENDPOINT"],
                "bucket": "from-file",
                "access_key_id": "test-key",
                "secret_access_key": "test-secret",
            }
        )
    )
    store = store_for(tmp_path, {"LIVETWIN_S3_CONFIG": str(config)})
    assert store.config.bucket == "from-file"
    store = store_for(tmp_path, {"LIVETWIN_S3_CONFIG": str(config), "LIVETWIN_S3_BUCKET": BUCKET})
    assert store.config.bucket == BUCKET
    store.check()
    config.write_bytes(b'{"bucket": "b", "pasword": "x"}')
    with pytest.raises(InvalidInput) as info:
        store_for(tmp_path, {"LIVETWIN_S3_CONFIG": str(config)})
    assert "pasword" in info.value.message


def test_artifacts_round_trip_through_s3(tmp_path, clock, s3_env, monkeypatch):
    env, client = s3_env
    for name, value in env.items():  # the platform's registry reads its store from the env
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LIVETWIN_OUTBOUND_ALLOW", ",".join(LOOPBACK))  # moto is on loopback
    with Platform(tmp_path / "s3-data", clock=clock) as platform:
        assert isinstance(platform.registry.artifacts, S3ArtifactStore)
        app = create_app(platform)
        with TestClient(app) as api:
            meta = {"kind": "inductive", "artifacts": ["weights.bin"]}
            assert api.post("/api/models/net/versions", json=meta).status_code == 201
            content = os.urandom(3 * 1024 * 1024 + 17)  # several chunks
            r = api.put("/api/models/net/versions/1/artifacts/weights.bin", content=content)
            assert r.status_code == 201, r.text
            digest = hashlib.sha256(content).hexdigest()
            key = f"site-a/sha256/{digest[:2]}/{digest}"
            stored = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            assert stored == content
            down = api.get("/api/models/net/versions/1/artifacts/weights.bin")
            assert down.status_code == 200 and down.content == content
            # nothing of it is kept on local disk
            assert not (platform.path / "artifacts").exists()
            api.post("/api/models/net/versions", json=meta)
            api.put("/api/models/net/versions/2/artifacts/weights.bin", content=content)
            keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET)["Contents"]]
            assert keys == [key]  # content-addressed: stored once
            # another namespace's version of the same name shares the blob, not the record
            fleet = {"namespace": "fleet-a"}
            assert (
                api.post("/api/models/net/versions", json=meta, params=fleet).json()["version"] == 1
            )
            url = "/api/models/net/versions/1/artifacts/weights.bin"
            assert api.put(url, content=content, params=fleet).status_code == 201
            assert api.get(url, params=fleet).content == content
            keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET)["Contents"]]
            assert keys == [key]


def registry_on(platform, artifacts) -> Registry:
    """A registry on a platform's ports with its own artifact store."""
    return Registry(
        clock=platform.clock,
        open_db=platform.open_db,
        lineage=platform.lineage,
        artifacts=artifacts,
        tmp_dir=platform.path / "tmp",
    )


def test_a_missing_bucket_fails_at_start(platform, s3_env):
    env, _ = s3_env
    store = store_for(platform.path, {**env, "LIVETWIN_S3_BUCKET": "no-such-bucket"})
    with pytest.raises(Unavailable) as info:
        registry_on(platform, store).start()
    assert info.value.field == "LIVETWIN_S3_BUCKET"
    assert "no-such-bucket" in info.value.message and "create it" in info.value.fix


def test_an_unreachable_endpoint_fails_at_start(platform):
    env = {
        "LIVETWIN_S3_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "LIVETWIN_S3_BUCKET": BUCKET,
        **CREDENTIALS,
    }
    with pytest.raises(Unavailable) as info:
        registry_on(platform, store_for(platform.path, env)).start()
    assert info.value.field == "LIVETWIN_S3_ENDPOINT"


def test_an_endpoint_inside_the_network_is_refused_by_default(tmp_path, s3_env):
    env, _ = s3_env
    with pytest.raises(OutboundDenied) as info:
        artifact_store(tmp_path, env)  # the default policy: loopback is refused
    assert info.value.field == "LIVETWIN_S3_ENDPOINT"
    assert "LIVETWIN_OUTBOUND_ALLOW" in info.value.fix
    store_for(tmp_path, env).check()  # allowed
    # each request is checked too: a name that does not resolve now is refused before sending
    unknown = store_for(tmp_path, {**env, "LIVETWIN_S3_ENDPOINT": "http://s3.invalid:9000"})
    with pytest.raises(OutboundDenied, match="does not resolve"):
        unknown.check()
