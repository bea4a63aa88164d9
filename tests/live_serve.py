"""`revoc serve` as a subprocess and `openssl ocsp` against it: shared by the live tests."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx

from tests.world import World

OPENSSL = shutil.which("openssl")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def revoc_serve(world: World, *extra: str) -> Iterator[str]:
    """`revoc serve` in a subprocess; yields its base URL once /readyz says 200."""
    port = _free_port()
    env = {**os.environ, "REVOC_DATABASE_URL": world.settings.database_url or "",
           "REVOC_LOG_LEVEL": "WARNING"}
    command = [sys.executable, "-m", "revoc.cli", "serve", "--host", "127.0.0.1",
               "--port", str(port), *extra]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read().decode() if process.stdout else ""
                raise AssertionError(f"revoc serve did not become ready:\n{output}")
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def openssl_ocsp(world: World, url: str, *args: str) -> str:
    assert OPENSSL is not None
    # openssl wants the digest before -cert/-serial.
    args = tuple(a for a in args if a.startswith("-sha")) + tuple(
        a for a in args if not a.startswith("-sha"))
    result = subprocess.run(
        [OPENSSL, "ocsp", "-issuer", str(world.ca_pem), "-url", url + "/ocsp",
         "-CAfile", str(world.root_pem), "-resp_text", *args],
        capture_output=True, text=True, timeout=30, check=False)
    return result.stdout + result.stderr
