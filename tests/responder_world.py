"""The responder's test world: a CA with good, revoked and later-revoked leaves registered in
the database and pre-signed, fixtures (`world`, `live_world`, `running`), an in-process server
(`serve_asgi`) and request helpers. Shared by tests/test_responder.py and the other responder
tests (and bench/); not a test module.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import asyncpg
import httpx
import pytest_asyncio
from cryptography.x509 import ocsp as x509_ocsp
from starlette.applications import Starlette

from responder.app import Responder, create_app
from revoc.clock import FixedClock
from revoc.der.ocsp import (
    ERROR_RESPONSES,
)
from revoc.model import OcspResponseStatus
from tests.world import (
    GOOD,
    LATER,
    NEVER,
    NO_CACHE,
    OCSP_TYPE,
    REVOKED,
    World,
    presign,
    setup_world,
)

__all__ = [
    "GOOD",
    "LATER",
    "NEVER",
    "NO_CACHE",
    "OCSP_TYPE",
    "REVOKED",
    "World",
    "presign",
    "setup_world",
]


@pytest_asyncio.fixture(loop_scope="session")
async def world(clean_db: asyncpg.Pool, database_url: str, tmp_path: Path) -> World:
    return await setup_world(clean_db, database_url, tmp_path / "pki")


@pytest_asyncio.fixture(loop_scope="session")
async def live_world(clean_db: asyncpg.Pool, database_url: str, tmp_path: Path) -> World:
    return await setup_world(clean_db, database_url, tmp_path / "pki", live_signing=True)


async def wait_until(predicate: object, deadline_seconds: float = 5.0) -> None:
    deadline = time.monotonic() + deadline_seconds
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)


@pytest_asyncio.fixture(loop_scope="session")
async def running(world: World) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    async with serve_asgi(world) as pair:
        yield pair


class serve_asgi:
    """Run the app's lifespan and hand out an httpx client bound to it through ASGI."""

    def __init__(self, world: World, clock: FixedClock | None = None,
                 **settings: object) -> None:
        # Cold by default: these tests count misses and cache entries from the first request
        # on; tests/test_cache_warm.py turns the warm-up on (`revoc serve` has it on).
        settings.setdefault("cache_warm", False)
        self.app = create_app(replace(world.settings, **settings),  # type: ignore[arg-type]
                              pool=world.pool, clock=clock)

    async def __aenter__(self) -> tuple[Starlette, httpx.AsyncClient]:
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        responder: Responder = self.app.state.responder
        await wait_until(responder.ready)
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                         base_url="http://responder.test")
        return self.app, self._client

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()
        await self._lifespan.__aexit__(None, None, None)


async def post(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await client.post("/ocsp", content=body,
                             headers={"content-type": "application/ocsp-request"})


def b64(der: bytes) -> str:
    return base64.b64encode(der).decode()


def parsed(response: httpx.Response) -> x509_ocsp.OCSPResponse:
    assert response.status_code == 200
    assert response.headers["content-type"] == OCSP_TYPE
    return x509_ocsp.load_der_ocsp_response(response.content)


def assert_error(response: httpx.Response, status: OcspResponseStatus) -> None:
    """Errors: HTTP 200, bare OCSPResponse, never cacheable (OCSP-RESP-1, OCSP-HTTP-6/8)."""
    assert response.status_code == 200
    assert response.headers["content-type"] == OCSP_TYPE
    assert response.content == ERROR_RESPONSES[status]
    assert response.headers["cache-control"] == NO_CACHE
    assert "etag" not in response.headers


def lint(der: bytes, directory: Path) -> None:
    """pkilint's OCSP linter must find nothing at WARNING or above (exit code = findings)."""
    tool = shutil.which("lint_ocsp_response") or str(
        Path(sys.executable).parent / "lint_ocsp_response")
    path = directory / f"resp-{hashlib.sha256(der).hexdigest()[:12]}.der"
    path.write_bytes(der)
    result = subprocess.run([tool, "lint", "--document-format", "DER", "-s", "WARNING",
                             str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
