"""A bounded Locust smoke run (about 10 s, headless) against `revoc serve` on 127.0.0.1.

Asserts zero failures (wrong Content-Type, unparseable body, unexpected status all count as
failures in loadtests/locustfile.py) and that every expected status came back.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from revoc.demo import import_demo
from revoc.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture()
def served(database_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """revoc serve on a free port, with the demo PKI imported, pre-signed and published."""
    port = _free_port()
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVOC_")}
    env |= {"REVOC_DATABASE_URL": database_url, "REVOC_HOME": str(home),
            "REVOC_PUBLIC_URL": f"http://127.0.0.1:{port}", "REVOC_PORT": str(port)}
    settings = load_settings(env)

    async def prepare() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await import_demo(conn, settings)
        finally:
            await conn.close()

    asyncio.run(prepare())
    revoc = str(Path(sys.executable).parent / "revoc")
    for command in (["presign", "--once"], ["publish", "--once"]):
        subprocess.run([revoc, *command], env=env, check=True, capture_output=True, timeout=120)
    server = subprocess.Popen([revoc, "serve"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, server.stderr.read() if server.stderr else ""
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "revoc serve never became ready"
            time.sleep(0.1)
        yield base, home / "demo" / "manifest.json"
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


def test_locust_smoke_run(served: tuple[str, Path], tmp_path: Path) -> None:
    base, manifest = served
    report = tmp_path / "report.json"
    env = os.environ | {"LOADTEST_MANIFEST": str(manifest), "LOADTEST_REPORT": str(report)}
    run = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtests" / "locustfile.py"),
         "--headless", "-H", base, "-u", "12", "-r", "12", "--run-time", "10s",
         "--stop-timeout", "5", "--only-summary", "DeviceUser", "StaplingUser", "CdnCrlUser"],
        env=env, capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = json.loads(report.read_text())
    assert summary["failures"] == 0
    assert summary["requests"] > 100
    seen = summary["seen"]
    # Good and revoked answers carry their status; never-issued serials get unauthorized from
    # a key-less responder (never good); CDN revalidation gets 200 once, then 304.
    for outcome in ("good->good", "revoked->revoked", "unknown->unauthorized", "crl->200",
                    "crl->304"):
        assert seen.get(outcome, 0) > 0, (outcome, seen)
    assert not any(k.endswith("->good") and not k.startswith("good") for k in seen), seen
