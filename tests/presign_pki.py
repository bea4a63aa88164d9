"""The presigner's test PKI: two issuers (one whose CA key signs OCSP, one with a delegated
responder) with good and revoked leaves registered, the `pki` fixture, and an OpenSSL check of a
stored response. Shared by tests/test_presigner.py and tests/test_presign_never_lose.py; not a
test module.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from revoc import admin
from revoc.clock import FixedClock
from revoc.model import HashAlgorithm, Reason
from tests.pki import (
    NOT_AFTER,
    Party,
    cached_key,
    make_ca,
    make_leaf,
    make_ocsp_responder,
    write_pem_certs,
)

REVOKED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
# serial -> reason (None: good). Reason.unspecified must not appear in the response (OCSP-RESP-12).
STATUSES: dict[int, Reason | None] = {
    0x1001: None, 0x1002: Reason.keyCompromise, 0x1003: Reason.unspecified,
}
CA_SIGNED, DELEGATED = "ca-signed", "delegated"


@dataclass
class Pki:
    directory: Path
    cas: dict[str, Party]
    responder: Party
    leaves: dict[tuple[str, int], Party]
    ids: dict[str, int]


def leaf_serial(issuer: str, base: int) -> int:
    return base + (0x1000 if issuer == DELEGATED else 0)


async def register_pki(conn: asyncpg.Connection, tmp: Path, *, responder_not_after: datetime | None
                    = None, clock: FixedClock | None = None) -> Pki:
    """Two issuers: one whose CA key signs OCSP, one with a delegated responder (RSA CA)."""
    ca_signed = make_ca("Presign CA", key=cached_key("p256", 7))
    delegated = make_ca("Presign Delegating CA", key=cached_key("rsa2048", 7))
    responder = make_ocsp_responder(
        delegated, name="Presign OCSP", key=cached_key("p256", 8),
        not_after=responder_not_after or NOT_AFTER)
    ca_cert, ca_key = ca_signed.write(tmp)
    dl_cert, dl_key = delegated.write(tmp)
    rs_cert, rs_key = responder.write(tmp)
    ids = {
        CA_SIGNED: await admin.add_issuer(conn, admin.IssuerRequest(
            CA_SIGNED, str(ca_cert), key_path=str(ca_key))),
        DELEGATED: await admin.add_issuer(conn, admin.IssuerRequest(
            DELEGATED, str(dl_cert), key_path=str(dl_key), ocsp_cert_path=str(rs_cert),
            ocsp_key_path=str(rs_key))),
    }
    leaves: dict[tuple[str, int], Party] = {}
    for name, ca in ((CA_SIGNED, ca_signed), (DELEGATED, delegated)):
        paths = []
        for base in STATUSES:
            serial = leaf_serial(name, base)
            leaf = make_leaf(ca, serial, name=f"{name}-{serial:x}.example")
            leaves[name, serial] = leaf
            paths.append(str(leaf.write(tmp)[0]))
        await admin.add_certificates(conn, name, paths)
        for base, reason in STATUSES.items():
            if reason is not None:
                await admin.revoke(conn, admin.RevokeRequest(
                    name, leaf_serial(name, base), reason, revoked_at=REVOKED_AT), clock)
    return Pki(tmp, {CA_SIGNED: ca_signed, DELEGATED: delegated}, responder, leaves, ids)


@pytest.fixture
async def pki(clean_db: asyncpg.Pool, tmp_path: Path) -> Pki:
    async with clean_db.acquire() as conn:
        return await register_pki(conn, tmp_path)


def openssl_check(pki: Pki, der: bytes, issuer: str, serial: int, algorithm: HashAlgorithm,
                   tag: str) -> str:
    resp_path = pki.directory / f"{tag}.der"
    resp_path.write_bytes(der)
    ca_path = pki.directory / f"{issuer}-ca.pem"
    write_pem_certs(ca_path, pki.cas[issuer])
    leaf_path = pki.directory / f"{tag}-leaf.pem"
    leaf_path.write_bytes(pki.leaves[issuer, serial].cert_pem)
    digest = ["-sha256"] if algorithm is HashAlgorithm.SHA256 else []  # must precede -cert
    command = ["openssl", "ocsp", "-respin", str(resp_path), "-issuer", str(ca_path), *digest,
               "-cert", str(leaf_path), "-CAfile", str(ca_path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Response verify OK" in output, output
    assert "Status times invalid" not in output, output
    return output
