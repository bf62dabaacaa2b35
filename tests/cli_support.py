"""What the command-line tests share: running `livetwin` in-process (CliRunner), checking a
refusal, and `livetwin serve` in a subprocess."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from livetwin.cli import app

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str):
    return CliRunner().invoke(app, list(args))


def refused(result, *words: str) -> None:
    """Exit status 2, the words in the message, and nothing a user should not see."""
    assert result.exit_code == 2, result.output
    for word in words:
        assert word in result.output, result.output
    for leak in ("serving", "Traceback", "Errno"):
        assert leak not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@contextlib.contextmanager
def serving(tmp_path: Path, data: Path, port: int, *options: str, verify=True):
    """`livetwin serve` in a subprocess, ready (its /api/types answers): (process, base URL)."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    args = ["serve", "--data", str(data), "--port", str(port), *options]
    server = subprocess.Popen(
        [sys.executable, "-m", "livetwin.cli", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    base = f"{'https' if '--tls-cert' in options else 'http'}://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server.communicate()
            try:
                if httpx.get(f"{base}/api/types", timeout=2, verify=verify).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        yield server, base
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
