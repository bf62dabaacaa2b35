"""S3 test helpers: a real S3-protocol server (moto's) on a free loopback port, and a client of
it with the test credentials."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from webhook_support import free_port

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret"}
REGION = "us-east-1"


@contextmanager
def moto_s3() -> Iterator[str]:
    """moto's S3 server while the block runs; yields its endpoint URL (skips the test when
    moto[server] is not installed)."""
    moto_server = pytest.importorskip("moto.server")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def s3_client(endpoint: str):
    """A boto3 S3 client of the test server."""
    boto3 = pytest.importorskip("boto3")
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    )
