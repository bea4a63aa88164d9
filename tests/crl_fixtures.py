"""Helpers shared by the CRL publisher tests (no tests here): a two-level PKI registered as an
issuer, leaves recorded with `revoc.admin`, settings and a fixed clock."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from revoc import admin
from revoc.clock import FixedClock
from revoc.model import Profile, Reason
from revoc.settings import Settings
from tests.pki import KeyType, Party, make_ca, make_leaf

PUBLIC_URL = "http://crl.test.example"
START = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@dataclass
class CrlPki:
    name: str
    root: Party
    ca: Party
    directory: Path
    shards: int

    def chain_pem(self) -> Path:
        path = self.directory / "chain.pem"
        path.write_bytes(self.root.cert_pem + self.ca.cert_pem)
        return path

    def leaf_url(self, serial: int) -> str | None:
        if not self.shards:
            return f"{PUBLIC_URL}/crl/{self.name}.crl"
        return f"{PUBLIC_URL}/crl/{self.name}/{serial % self.shards}.crl"


def settings_for(tmp_path: Path, **changes: object) -> Settings:
    values: dict[str, object] = {"public_url": PUBLIC_URL, "crl_out": tmp_path / "out",
                                 "crl_full_interval": 86400, "crl_full_validity": 7 * 86400,
                                 "crl_delta_interval": 300, "crl_delta_validity": 86400}
    values.update(changes)
    return Settings(**values)  # type: ignore[arg-type]


def clock() -> FixedClock:
    return FixedClock(START)


async def register_pki(conn: asyncpg.Connection, directory: Path, name: str, *,
                       shards: int = 0, profile: Profile = Profile.PRIVATE,
                       key_type: KeyType = "p256", with_key: bool = True) -> CrlPki:
    directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - test setup
    root = make_ca(f"{name} root", key_type)
    ca = make_ca(f"{name} issuing CA", key_type, issuer=root, serial=2)
    cert_path, key_path = ca.write(directory)
    root.write(directory)
    if with_key:
        request = admin.IssuerRequest(name=name, cert_path=str(cert_path),
                                      key_path=str(key_path), crl_shards=shards,
                                      profile=profile)
    else:
        from tests.pki import make_ocsp_responder

        responder = make_ocsp_responder(ca)
        r_cert, r_key = responder.write(directory)
        request = admin.IssuerRequest(name=name, cert_path=str(cert_path),
                                      ocsp_cert_path=str(r_cert), ocsp_key_path=str(r_key),
                                      crl_shards=shards, profile=profile)
    await admin.add_issuer(conn, request)
    return CrlPki(name, root, ca, directory, shards)


async def add_leaves(conn: asyncpg.Connection, pki: CrlPki, serials: Iterable[int], *,
                     not_after: datetime | None = None) -> dict[int, Party]:
    """Issue leaves with the given serials (CDP = the scope's URL) and record them as good."""
    leaves: dict[int, Party] = {}
    for serial in serials:
        kwargs = {"not_after": not_after} if not_after else {}
        leaves[serial] = make_leaf(pki.ca, serial, crl_url=pki.leaf_url(serial),
                                   not_before=datetime(2025, 1, 1, tzinfo=UTC), **kwargs)
    bundle = pki.directory / f"leaves-{min(leaves)}-{len(leaves)}.pem"
    bundle.write_bytes(b"".join(p.cert_pem for p in leaves.values()))
    await admin.add_certificates(conn, pki.name, [str(bundle)])
    return leaves


async def revoke(conn: asyncpg.Connection, pki: CrlPki, serial: int, reason: Reason,
                 at: datetime) -> None:
    await admin.revoke(conn, admin.RevokeRequest(pki.name, serial, reason, revoked_at=at),
                       clock=FixedClock(at + timedelta(seconds=1)))


def crl_of(path: Path) -> x509.CertificateRevocationList:
    return x509.load_der_x509_crl(path.read_bytes())


def to_pem(der_path: Path) -> Path:
    pem = der_path.with_suffix(der_path.suffix + ".pem")
    pem.write_bytes(x509.load_der_x509_crl(der_path.read_bytes()).public_bytes(
        serialization.Encoding.PEM))
    return pem


def openssl_verify(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "verify", *map(str, args)], capture_output=True,
                          text=True, check=False)
