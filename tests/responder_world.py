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
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest_asyncio
from cryptography.x509 import ocsp as x509_ocsp
from starlette.applications import Starlette

from responder.app import Responder, create_app
from responder.presign_queue import presign_once
from revoc import admin
from revoc.clock import FixedClock
from revoc.der.ocsp import (
    ERROR_RESPONSES,
    cert_id_der,
    encode_ocsp_request,
)
from revoc.model import HashAlgorithm, OcspResponseStatus, Reason
from revoc.settings import Settings
from revoc.signing import subject_public_key_bits
from tests.pki import Party, make_ca, make_leaf, write_pem_certs

GOOD, REVOKED, LATER, NEVER = 0x1001, 0x1002, 0x1003, 0xDEAD
OCSP_TYPE = "application/ocsp-response"
NO_CACHE = "no-cache, no-store, max-age=0"


@dataclass
class World:
    root: Party
    ca: Party
    leaves: dict[int, Party]
    directory: Path
    settings: Settings
    pool: asyncpg.Pool

    @property
    def root_pem(self) -> Path:
        return self.directory / "root.pem"

    @property
    def ca_pem(self) -> Path:
        return self.directory / f"{self.ca.name}.pem"

    def leaf_pem(self, serial: int) -> Path:
        return self.directory / f"{self.leaves[serial].name}.pem"

    def cert_id(self, serial: int, algorithm: HashAlgorithm = HashAlgorithm.SHA1, *,
                null_params: bool = True) -> bytes:
        return cert_id_der(algorithm, self.ca.cert.subject.public_bytes(),
                           subject_public_key_bits(self.ca.cert), serial,
                           null_params=null_params)

    def request(self, serial: int, algorithm: HashAlgorithm = HashAlgorithm.SHA1,
                nonce: bytes | None = None, *, null_params: bool = True) -> bytes:
        return encode_ocsp_request([self.cert_id(serial, algorithm, null_params=null_params)],
                                   nonce=nonce)


_PKI: dict[str, Party] = {}


def _pki() -> tuple[Party, Party, dict[int, Party]]:
    """One PKI per test session: key generation is the slow part."""
    if not _PKI:
        _PKI["root"] = make_ca("Responder Root")
        _PKI["ca"] = make_ca("Responder CA", issuer=_PKI["root"])
        for serial in (GOOD, REVOKED, LATER):
            _PKI[f"leaf{serial}"] = make_leaf(_PKI["ca"], serial)
    leaves = {serial: _PKI[f"leaf{serial}"] for serial in (GOOD, REVOKED, LATER)}
    return _PKI["root"], _PKI["ca"], leaves


async def presign(world: World) -> None:
    """Fill ocsp_responses with the presigner's own round (it NOTIFYs ocsp_changed for what
    changed, as `revoc presign` does)."""
    report = await presign_once(world.pool, replace(world.settings, presign_processes=1))
    assert not report.failed_issuers


async def setup_world(pool: asyncpg.Pool, database_url: str, directory: Path,
                      **settings: object) -> World:
    root, ca, leaves = _pki()
    directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - test setup
    _cert_path, key_path = ca.write(directory)
    write_pem_certs(directory / "root.pem", root)
    for leaf in leaves.values():
        leaf.write(directory)
    async with pool.acquire() as conn:
        await admin.add_issuer(conn, admin.IssuerRequest(
            name="ca", cert_path=str(directory / f"{ca.name}.pem"), key_path=str(key_path)))
        await admin.add_certificates(conn, "ca", [str(directory / f"{leaf.name}.pem")
                                                  for leaf in leaves.values()])
        await admin.revoke(conn, admin.RevokeRequest(
            issuer="ca", serial=REVOKED, reason=Reason.keyCompromise,
            revoked_at=datetime(2025, 6, 1, 12, 0, tzinfo=UTC)))
    base = Settings(database_url=database_url, ocsp_hashes=(HashAlgorithm.SHA1,
                                                             HashAlgorithm.SHA256))
    world = World(root, ca, leaves, directory, replace(base, **settings), pool)  # type: ignore[arg-type]
    await presign(world)
    return world


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
