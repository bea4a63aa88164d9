"""The responder's world without pytest (bench/ imports it too): a CA with good, revoked and
later-revoked leaves, registered in the database and pre-signed by the presigner's own round.
The fixtures and HTTP helpers around it are in tests/responder_world.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from responder.presign_queue import presign_once
from revoc import admin
from revoc.der.ocsp import (
    cert_id_der,
    encode_ocsp_request,
)
from revoc.model import HashAlgorithm, Reason
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
