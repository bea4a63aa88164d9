"""Our CRLs judged by tools we did not write: `openssl verify` and pkilint's `lint_crl`.

Each test publishes with `publish_round` on a real PostgreSQL, then runs the oracle on the files
under --out (converted to PEM for `openssl verify -CRLfile`).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from crl_publisher.publisher import publish_round
from revoc.model import Profile, Reason
from tests.crl_fixtures import (
    START,
    CrlPki,
    add_leaves,
    clock,
    openssl_verify,
    register_pki,
    revoke,
    settings_for,
    to_pem,
)
from tests.pki import Party


def _write_leaf(pki: CrlPki, leaf: Party) -> Path:
    path = pki.directory / f"leaf-{leaf.cert.serial_number}.pem"
    path.write_bytes(leaf.cert_pem)
    return path


def _root_crl(pki: CrlPki, directory: Path) -> Path:
    """The root's (empty) CRL, built with cryptography, for -crl_check_all."""
    crl = (x509.CertificateRevocationListBuilder()
           .issuer_name(pki.root.cert.subject)
           .last_update(START - timedelta(hours=1))
           .next_update(START + timedelta(days=30))
           .add_extension(x509.CRLNumber(1), critical=False)
           .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
               pki.root.key.public_key()), critical=False)  # type: ignore[arg-type]
           .sign(pki.root.key, hashes.SHA256()))  # type: ignore[arg-type]
    path = directory / "root.crl.pem"
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return path


def _attime() -> str:
    return str(int((START + timedelta(minutes=30)).timestamp()))


@pytest.fixture()
async def plain(clean_db: asyncpg.Pool, tmp_path: Path) -> tuple[CrlPki, dict[int, Party]]:
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "plain", profile=Profile.BR)
        leaves = await add_leaves(conn, pki, range(1, 5))
        await revoke(conn, pki, 2, Reason.keyCompromise, START - timedelta(hours=2))
    return pki, leaves


async def test_openssl_verify_full_crl(clean_db: asyncpg.Pool, tmp_path: Path,
                                       plain: tuple[CrlPki, dict[int, Party]]) -> None:
    pki, leaves = plain
    settings = settings_for(tmp_path)
    assert (await publish_round(clean_db, settings, clock=clock())).ok
    full = to_pem(settings.crl_out / "plain.crl")
    chain = pki.chain_pem()
    good = openssl_verify("-attime", _attime(), "-crl_check", "-CAfile", chain, "-CRLfile", full,
                          _write_leaf(pki, leaves[1]))
    assert good.returncode == 0, good.stdout + good.stderr
    bad = openssl_verify("-attime", _attime(), "-crl_check", "-CAfile", chain, "-CRLfile", full,
                         _write_leaf(pki, leaves[2]))
    assert bad.returncode == 2 and "error 23" in bad.stdout + bad.stderr, bad.stdout + bad.stderr
    # -crl_check_all: the intermediate needs the root's CRL too; ours carries no IDP, so no
    # "different CRL scope" (error 44) for the CA certificate either (CRL-13).
    root_crl = _root_crl(pki, tmp_path)
    every = openssl_verify("-attime", _attime(), "-crl_check_all", "-CAfile", chain,
                           "-CRLfile", full, "-CRLfile", root_crl, _write_leaf(pki, leaves[1]))
    assert every.returncode == 0, every.stdout + every.stderr
    every_bad = openssl_verify("-attime", _attime(), "-crl_check_all", "-CAfile", chain,
                               "-CRLfile", full, "-CRLfile", root_crl,
                               _write_leaf(pki, leaves[2]))
    assert "error 23" in every_bad.stdout + every_bad.stderr


async def test_openssl_uses_delta(clean_db: asyncpg.Pool, tmp_path: Path,
                                  plain: tuple[CrlPki, dict[int, Party]]) -> None:
    pki, leaves = plain
    # A br issuer publishes deltas only when asked to; the full CRL on change waits an hour.
    settings = settings_for(tmp_path, crl_br_deltas=True, crl_full_on_change_delay=3600)
    fixed = clock()
    assert (await publish_round(clean_db, settings, clock=fixed)).ok
    full = to_pem(settings.crl_out / "plain.crl")
    async with clean_db.acquire() as conn:
        await revoke(conn, pki, 3, Reason.superseded, START + timedelta(minutes=1))
    fixed.advance(timedelta(minutes=10))
    report = await publish_round(clean_db, settings, clock=fixed)
    assert [p.kind for p in report.publications] == ["delta"]
    delta = to_pem(settings.crl_out / "plain-delta.crl")
    chain, leaf = pki.chain_pem(), _write_leaf(pki, leaves[3])
    without = openssl_verify("-attime", _attime(), "-crl_check", "-use_deltas", "-extended_crl",
                             "-CAfile", chain, "-CRLfile", full, leaf)
    assert without.returncode == 0, without.stdout + without.stderr
    with_delta = openssl_verify("-attime", _attime(), "-crl_check", "-use_deltas",
                                "-extended_crl", "-CAfile", chain, "-CRLfile", full,
                                "-CRLfile", delta, leaf)
    assert "error 23" in with_delta.stdout + with_delta.stderr, with_delta.stdout
    # The certificate revoked in the base stays revoked with the delta applied.
    old = openssl_verify("-attime", _attime(), "-crl_check", "-use_deltas", "-extended_crl",
                         "-CAfile", chain, "-CRLfile", full, "-CRLfile", delta,
                         _write_leaf(pki, leaves[2]))
    assert "error 23" in old.stdout + old.stderr
    good = openssl_verify("-attime", _attime(), "-crl_check", "-use_deltas", "-extended_crl",
                          "-CAfile", chain, "-CRLfile", full, "-CRLfile", delta,
                          _write_leaf(pki, leaves[1]))
    assert good.returncode == 0, good.stdout + good.stderr


async def test_openssl_verify_shard(clean_db: asyncpg.Pool, tmp_path: Path) -> None:
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "sharded", shards=3)
        leaves = await add_leaves(conn, pki, range(10, 16))
        await revoke(conn, pki, 11, Reason.keyCompromise, START - timedelta(hours=1))
    settings = settings_for(tmp_path)
    assert (await publish_round(clean_db, settings, clock=clock())).ok
    chain = pki.chain_pem()
    for serial, leaf in leaves.items():
        shard = to_pem(settings.crl_out / "sharded" / f"{serial % 3}.crl")
        for extended in ([], ["-extended_crl"]):
            result = openssl_verify("-attime", _attime(), "-crl_check", *extended, "-CAfile",
                                    chain, "-CRLfile", shard, _write_leaf(pki, leaf))
            output = result.stdout + result.stderr
            assert "error 44" not in output, output
            if serial == 11:
                assert "error 23" in output, output
            else:
                assert result.returncode == 0, output


# pkilint's console script sits next to the interpreter running the tests (venv or not on PATH).
LINT_CRL = shutil.which("lint_crl", path=str(Path(sys.executable).parent)) or "lint_crl"


def _lint(path: Path, profile: str) -> str:
    result = subprocess.run([LINT_CRL, "lint", "-t", "CRL", "-p", profile, "-s", "WARNING",
                             "--document-format", "DER", str(path)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{path.name} ({profile}): {result.stdout}{result.stderr}"
    return result.stdout


@pytest.mark.parametrize("shards", [0, 2])
async def test_pkilint_clean(clean_db: asyncpg.Pool, tmp_path: Path, shards: int) -> None:
    """BR-3/BR-10/BR-13/CRL-17 (issue 13 point 3): every CRL of a br issuer, sharded or not,
    first and re-issued on change, passes pkilint's BR profile with no finding at WARNING
    level; by default no delta and no freshestCRL."""
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "lint", shards=shards,
                                 profile=Profile.BR)
        await add_leaves(conn, pki, range(1, 9))
        await revoke(conn, pki, 1, Reason.keyCompromise, START - timedelta(hours=3))
        await revoke(conn, pki, 2, Reason.unspecified, START - timedelta(hours=3))
    settings = settings_for(tmp_path)
    fixed = clock()
    assert (await publish_round(clean_db, settings, clock=fixed)).ok
    async with clean_db.acquire() as conn:
        await revoke(conn, pki, 5, Reason.superseded, START + timedelta(minutes=1))
        await revoke(conn, pki, 6, Reason.cessationOfOperation, START + timedelta(minutes=1))
    fixed.advance(timedelta(minutes=10))
    assert (await publish_round(clean_db, settings, clock=fixed)).ok
    files = sorted(settings.crl_out.rglob("*.crl"))
    assert len(files) == (shards if shards else 1)
    for path in files:
        crl = x509.load_der_x509_crl(path.read_bytes())
        assert all(e.oid != x509.FreshestCRL.oid for e in crl.extensions)
        assert crl.next_update_utc - crl.last_update_utc <= timedelta(days=10)
        assert crl.last_update_utc == fixed.now()  # re-issued on the change
        _lint(path, "BR")
        _lint(path, "PKIX")


async def test_pkilint_private_profile_holds(clean_db: asyncpg.Pool, tmp_path: Path) -> None:
    """A private issuer with a hold released: the delta carries removeFromCRL (PKIX lint)."""
    from revoc import admin

    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "priv")
        await add_leaves(conn, pki, range(1, 4))
        await revoke(conn, pki, 1, Reason.certificateHold, START - timedelta(hours=3))
    settings = settings_for(tmp_path)
    fixed = clock()
    assert (await publish_round(clean_db, settings, clock=fixed)).ok
    async with clean_db.acquire() as conn:
        await admin.unhold(conn, "priv", 1)
    fixed.advance(timedelta(minutes=10))
    assert (await publish_round(clean_db, settings, clock=fixed)).ok
    delta = x509.load_der_x509_crl((settings.crl_out / "priv-delta.crl").read_bytes())
    entry = delta.get_revoked_certificate_by_serial_number(1)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason \
        is x509.ReasonFlags.remove_from_crl
    for path in sorted(settings.crl_out.rglob("*.crl")):
        _lint(path, "PKIX")
