"""A throwaway responder world for bench/edge_bench.py and bench/fuzz: a database with one issuer,
a few certificates (one revoked) and their pre-signed OCSP responses.

    with bench_world(directory) as world: ... world.request(GOOD) ...

Needs a PostgreSQL server (REVOC_DATABASE_URL, as the tests); each run makes its own
`revoc_bench_<hex>` database and drops it afterwards, never touching another one.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from responder.presign_queue import presign_once  # noqa: E402
from revoc import admin  # noqa: E402
from revoc.db import create_pool, upgrade  # noqa: E402
from revoc.der.ocsp import cert_id_der, encode_ocsp_request  # noqa: E402
from revoc.model import HashAlgorithm, Reason  # noqa: E402
from revoc.settings import Settings  # noqa: E402
from revoc.signing import subject_public_key_bits  # noqa: E402
from tests.pki import make_ca, make_leaf  # noqa: E402

GOOD, REVOKED = 0x1001, 0x1002


@dataclass(frozen=True)
class World:
    dsn: str
    issuer_name_der: bytes
    issuer_key_bits: bytes
    issuer_public_key: Any

    def request(self, serial: int, algorithm: HashAlgorithm = HashAlgorithm.SHA1,
                nonce: bytes | None = None) -> bytes:
        cert_id = cert_id_der(algorithm, self.issuer_name_der, self.issuer_key_bits, serial)
        return encode_ocsp_request([cert_id], nonce=nonce)


async def _create(server_dsn: str) -> str:
    name = f"revoc_bench_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return urlunsplit(urlsplit(server_dsn)._replace(path="/" + name))


async def _drop(server_dsn: str, dsn: str) -> None:
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{urlsplit(dsn).path[1:]}" WITH (FORCE)')
    finally:
        await conn.close()


async def fill_world(dsn: str, directory: Path) -> World:
    """Migrate `dsn`'s (empty) database and fill it: one issuer, GOOD and REVOKED, pre-signed."""
    conn = await asyncpg.connect(dsn)
    try:
        await upgrade(conn)
    finally:
        await conn.close()
    ca = make_ca("Edge Bench CA")
    leaves = [make_leaf(ca, serial) for serial in (GOOD, REVOKED)]
    directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - setup, before serving
    ca_path, key_path = ca.write(directory)
    leaf_paths = [str(leaf.write(directory)[0]) for leaf in leaves]
    pool = await create_pool(dsn, min_size=1, max_size=4)
    try:
        async with pool.acquire() as conn:
            await admin.add_issuer(conn, admin.IssuerRequest(
                name="ca", cert_path=str(ca_path), key_path=str(key_path)))
            await admin.add_certificates(conn, "ca", leaf_paths)
            await admin.revoke(conn, admin.RevokeRequest(
                issuer="ca", serial=REVOKED, reason=Reason.keyCompromise,
                revoked_at=datetime(2025, 6, 1, tzinfo=UTC)))
        settings = replace(Settings(database_url=dsn), presign_processes=1)
        report = await presign_once(pool, settings)
        assert not report.failed_issuers
    finally:
        await pool.close()
    return World(dsn, ca.cert.subject.public_bytes(), subject_public_key_bits(ca.cert),
                 ca.cert.public_key())


@contextmanager
def bench_world(directory: Path) -> Iterator[World]:
    """A filled database on REVOC_DATABASE_URL's server for the length of the block."""
    server_dsn = os.environ.get("REVOC_DATABASE_URL")
    if not server_dsn:
        raise SystemExit("set REVOC_DATABASE_URL to a PostgreSQL server (a fresh database is "
                         "created on it and dropped afterwards)")
    dsn = asyncio.run(_create(server_dsn))
    try:
        yield asyncio.run(fill_world(dsn, directory))
    finally:
        asyncio.run(_drop(server_dsn, dsn))
