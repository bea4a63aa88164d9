"""Issue 13 points 1-3: every change reaches the full CRL (and the delta) at once with
`revoc publish --once`, within a bounded, coalescing delay continuously; BR issuers publish no
deltas. CLI runs in-process (revoc.cli.main in a thread) against a real PostgreSQL; OpenSSL
`verify -crl_check` is the oracle for "the full CRL lists it" (CONFORMANCE BR-2, DELTA-3, CRL-9).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from crl_publisher.publisher import publish_round
from revoc.model import Profile, Reason
from tests.crl_fixtures import (
    START,
    add_leaves,
    clock,
    crl_of,
    register_pki,
    revoke,
    settings_for,
)
from tests.pki import Party, make_ca, make_leaf

PUBLIC = "http://crl.change.example"
_names = itertools.count(1)
_REVOC = str(Path(sys.executable).with_name("revoc"))


def _number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


async def _cli(*argv: str) -> int:
    """The installed console script, as a user runs it (publish installs signal handlers)."""
    done = await asyncio.to_thread(subprocess.run, [_REVOC, *argv], capture_output=True,
                                   text=True, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode


def _verify(root: Party, ca: Party, crl: Path, leaf: Party, directory: Path) -> str:
    """`openssl verify -crl_check` of `leaf` against the full CRL file `crl` (DER)."""
    chain = directory / "chain.pem"
    chain.write_bytes(root.cert_pem + ca.cert_pem)
    pem = directory / "full.crl.pem"
    pem.write_bytes(crl_of(crl).public_bytes(serialization.Encoding.PEM))
    leaf_path = directory / "leaf.pem"
    leaf_path.write_bytes(leaf.cert_pem)
    done = subprocess.run(["openssl", "verify", "-crl_check", "-CAfile", str(chain),
                           "-CRLfile", str(pem), str(leaf_path)],
                          capture_output=True, text=True, check=False)
    return done.stdout + done.stderr


@pytest.fixture()
def cli_env(clean_db: asyncpg.Pool, database_url: str, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("REVOC_DATABASE_URL", database_url)
    monkeypatch.setenv("REVOC_PUBLIC_URL", PUBLIC)
    out = tmp_path / "out"
    monkeypatch.setenv("REVOC_CRL_OUT", str(out))
    return out


async def test_revoke_then_publish_once_lists_it_on_full_and_delta(
        cli_env: Path, tmp_path: Path) -> None:
    """What was seen: `revoc cert revoke` then `revoc publish --once` published no new full CRL.
    Now the full CRL (what OpenSSL without -use_deltas, mbedTLS, CRLite read) lists it at once,
    and so does a delta with the same number (RFC 5280 §5.2.3)."""
    name = f"chg{os.getpid()}x{next(_names)}"
    root = make_ca(f"{name} root")
    ca = make_ca(f"{name} CA", issuer=root, serial=2)
    cert, key = ca.write(tmp_path)
    assert await _cli("issuer", "add", "--name", name, "--cert", str(cert), "--key",
                      str(key)) == 0
    leaf = make_leaf(ca, 0x51, crl_url=f"{PUBLIC}/crl/{name}.crl",
                     not_before=datetime.now(UTC) - timedelta(days=1))
    (tmp_path / "leaf51.pem").write_bytes(leaf.cert_pem)
    assert await _cli("cert", "add", "--issuer", name, str(tmp_path / "leaf51.pem")) == 0
    assert await _cli("publish", "--once") == 0
    full_path, delta_path = cli_env / f"{name}.crl", cli_env / f"{name}-delta.crl"
    before = _number(crl_of(full_path))
    assert "OK" in _verify(root, ca, full_path, leaf, tmp_path)

    assert await _cli("cert", "revoke", "--issuer", name, "--serial", "51", "--reason",
                      "keyCompromise") == 0
    assert await _cli("publish", "--once") == 0
    full, delta = crl_of(full_path), crl_of(delta_path)
    assert _number(full) > before
    assert [r.serial_number for r in full] == [0x51]
    assert [r.serial_number for r in delta] == [0x51]
    assert _number(delta) == _number(full)
    assert "certificate revoked" in _verify(root, ca, full_path, leaf, tmp_path)
    # Nothing changed since: another --once publishes nothing new (nothing is due).
    assert await _cli("publish", "--once") == 0
    assert _number(crl_of(full_path)) == _number(full)


async def test_unhold_then_publish_once_gives_remove_from_crl(
        cli_env: Path, tmp_path: Path) -> None:
    """What was seen: after `revoc cert unhold`, no delta with removeFromCRL (DELTA-3)."""
    name = f"hold{os.getpid()}x{next(_names)}"
    root = make_ca(f"{name} root")
    ca = make_ca(f"{name} CA", issuer=root, serial=2)
    cert, key = ca.write(tmp_path)
    assert await _cli("issuer", "add", "--name", name, "--cert", str(cert), "--key",
                      str(key)) == 0
    leaf = make_leaf(ca, 0x77, crl_url=f"{PUBLIC}/crl/{name}.crl",
                     not_before=datetime.now(UTC) - timedelta(days=1))
    (tmp_path / "leaf77.pem").write_bytes(leaf.cert_pem)
    assert await _cli("cert", "add", "--issuer", name, str(tmp_path / "leaf77.pem")) == 0
    assert await _cli("publish", "--once") == 0
    assert await _cli("cert", "revoke", "--issuer", name, "--serial", "77", "--reason",
                      "certificateHold") == 0
    assert await _cli("publish", "--once") == 0
    full_path, delta_path = cli_env / f"{name}.crl", cli_env / f"{name}-delta.crl"
    held = crl_of(full_path)
    assert [r.serial_number for r in held] == [0x77]
    assert await _cli("cert", "unhold", "--issuer", name, "--serial", "77") == 0
    assert await _cli("publish", "--once") == 0
    full, delta = crl_of(full_path), crl_of(delta_path)
    assert _number(full) > _number(held) and list(full) == []
    assert "OK" in _verify(root, ca, full_path, leaf, tmp_path)
    entries = list(delta)
    assert [r.serial_number for r in entries] == [0x77]
    reason = entries[0].extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.remove_from_crl
    base = delta.extensions.get_extension_for_class(x509.DeltaCRLIndicator).value.crl_number
    assert base == _number(held)


async def test_full_crl_on_change_coalesces_within_the_delay(clean_db: asyncpg.Pool,
                                                             tmp_path: Path) -> None:
    """Point 1, continuous mode (publish_changes without --once): a change gets a delta at once
    and a full CRL once `crl_full_on_change_delay` has passed since the previous full CRL, so a
    burst of revocations becomes one full CRL; next_due says when, so the loop wakes for it."""
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "burst")
        await add_leaves(conn, pki, range(1, 6))
    settings = settings_for(tmp_path, crl_full_on_change_delay=60)
    fixed = clock()
    assert (await publish_round(clean_db, settings, clock=fixed)).ok
    first = crl_of(settings.crl_out / "burst.crl")
    fixed.advance(timedelta(seconds=10))
    async with clean_db.acquire() as conn:
        await revoke(conn, pki, 2, Reason.keyCompromise, fixed.now() - timedelta(seconds=2))
    report = await publish_round(clean_db, settings, clock=fixed)
    assert [p.kind for p in report.publications] == ["delta"]
    assert report.next_due == START + timedelta(seconds=60)
    fixed.advance(timedelta(seconds=20))
    async with clean_db.acquire() as conn:
        await revoke(conn, pki, 3, Reason.superseded, fixed.now() - timedelta(seconds=2))
    report = await publish_round(clean_db, settings, clock=fixed)
    assert [p.kind for p in report.publications] == ["delta"]
    assert sorted(r.serial_number for r in crl_of(settings.crl_out / "burst-delta.crl")) == [2, 3]
    assert _number(crl_of(settings.crl_out / "burst.crl")) == _number(first)
    fixed.advance(timedelta(seconds=30))  # 60 s after the previous full CRL
    report = await publish_round(clean_db, settings, clock=fixed)
    assert [p.kind for p in report.publications] == ["full", "delta"]
    full = crl_of(settings.crl_out / "burst.crl")
    assert sorted(r.serial_number for r in full) == [2, 3] and _number(full) > _number(first)
    # Reflected now: the next full CRL is the scheduled one.
    fixed.advance(timedelta(seconds=90))
    assert (await publish_round(clean_db, settings, clock=fixed)
            ).publications == []


async def test_full_only_when_deltas_are_off_or_br(clean_db: asyncpg.Pool,
                                                   tmp_path: Path) -> None:
    """Point 3: a br issuer publishes no delta and no freshestCRL by default (TLS BR §7.2.2);
    a change still reaches its full CRL at once with --once; the private one keeps deltas."""
    async with clean_db.acquire() as conn:
        br = await register_pki(conn, tmp_path / "br", "brx", profile=Profile.BR)
        await add_leaves(conn, br, range(1, 4))
        priv = await register_pki(conn, tmp_path / "pv", "pvx")
        await add_leaves(conn, priv, range(1, 4))
    settings = settings_for(tmp_path)
    fixed = clock()
    report = await publish_round(clean_db, settings, clock=fixed)
    assert sorted(p.name for p in report.publications) == ["brx.crl", "pvx-delta.crl",
                                                           "pvx.crl"]
    brfull = crl_of(settings.crl_out / "brx.crl")
    assert [e.oid.dotted_string for e in brfull.extensions] == ["2.5.29.35", "2.5.29.20"]
    fixed.advance(timedelta(seconds=5))
    async with clean_db.acquire() as conn:
        await revoke(conn, br, 1, Reason.keyCompromise, fixed.now() - timedelta(seconds=1))
    report = await publish_round(clean_db, settings, clock=fixed, full_on_change_delay=0)
    assert [p.name for p in report.publications] == ["brx.crl"]
    assert [r.serial_number for r in crl_of(settings.crl_out / "brx.crl")] == [1]
    assert not (settings.crl_out / "brx-delta.crl").exists()
