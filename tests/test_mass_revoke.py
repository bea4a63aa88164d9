"""Issue 13 point 6: `revoc cert revoke --issuer N --serials-file F --reason R` revokes many
certificates in one transaction, all or nothing (CONFORMANCE ROOT-5), and every one reaches the
presigner's queue and the next full CRL (checked with `openssl crl`)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from cryptography import x509

from revoc.der.asn1 import integer_content
from tests.pki import make_ca

_REVOC = str(Path(sys.executable).with_name("revoc"))
COUNT = 2000


async def _revoc(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [_REVOC, *argv], capture_output=True,
                                   text=True, check=False, env={**os.environ, **env})


async def test_serials_file_revokes_all_in_one_transaction(
        clean_db: asyncpg.Pool, database_url: str, tmp_path: Path) -> None:
    ca = make_ca("Mass CA")
    cert, key = ca.write(tmp_path)
    env = {"REVOC_DATABASE_URL": database_url, "REVOC_CRL_OUT": str(tmp_path / "out"),
           "REVOC_PUBLIC_URL": "http://crl.mass.example"}
    added = await _revoc(env, "issuer", "add", "--name", "mass", "--cert", str(cert), "--key",
                         str(key))
    assert added.returncode == 0, added.stderr
    not_after = datetime.now(UTC) + timedelta(days=90)
    async with clean_db.acquire() as conn:
        issuer_id = await conn.fetchval("SELECT id FROM issuers WHERE name = 'mass'")
        await conn.copy_records_to_table(
            "certificates", columns=["issuer_id", "serial", "not_after"],
            records=[(issuer_id, integer_content(0x10000 + i), not_after)
                     for i in range(COUNT + 10)])
    first = await _revoc(env, "cert", "revoke", "--issuer", "mass", "--serial", "10000",
                         "--reason", "superseded")
    assert first.returncode == 0, first.stderr
    serials = [f"{0x10000 + i:X}" for i in range(COUNT)]
    good = tmp_path / "serials.txt"
    good.write_text("# to revoke\n" + "\n".join(serials) + "\n\n" + serials[5] + "\n")

    # A malformed line, or a serial never recorded: nothing revoked, one line, exit 2 / 1.
    bad = tmp_path / "bad.txt"
    bad.write_text("\n".join(serials[:10]) + "\n-1F\n")
    refused = await _revoc(env, "cert", "revoke", "--issuer", "mass", "--serials-file",
                           str(bad), "--reason", "keyCompromise")
    assert refused.returncode == 2 and "line 11" in refused.stderr, refused.stderr
    assert refused.stderr.count("\n") == 1
    unknown = tmp_path / "unknown.txt"
    unknown.write_text("\n".join(serials[:10]) + "\nABCDEF99\n")
    refused = await _revoc(env, "cert", "revoke", "--issuer", "mass", "--serials-file",
                           str(unknown), "--reason", "keyCompromise")
    assert refused.returncode == 1 and "ABCDEF99" in refused.stderr, refused.stderr
    async with clean_db.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM certificates "
                                   "WHERE status = 'revoked'") == 1

    done = await _revoc(env, "cert", "revoke", "--issuer", "mass", "--serials-file", str(good),
                        "--reason", "keyCompromise", "--revoked-at", "2026-01-02T03:04:05Z")
    assert done.returncode == 0, done.stderr
    assert f"revoked {COUNT - 1} certificate(s)" in done.stdout
    assert "1 already revoked" in done.stdout, done.stdout
    async with clean_db.acquire() as conn:
        rows = await conn.fetch("SELECT serial, status, reason, change_seq FROM certificates "
                                "WHERE issuer_id = $1 ORDER BY serial", issuer_id)
        pending = await conn.fetchval("SELECT count(*) FROM ocsp_pending")
    revoked = [r for r in rows if r["status"] == "revoked"]
    assert len(revoked) == COUNT and sum(r["status"] == "good" for r in rows) == 10
    assert len({r["change_seq"] for r in revoked}) == COUNT  # each its own change
    assert pending >= COUNT - 1  # every newly revoked one queued for re-signing
    published = await _revoc(env, "publish", "--once")
    assert published.returncode == 0, published.stderr
    full = tmp_path / "out" / "mass.crl"
    crl = x509.load_der_x509_crl(full.read_bytes())
    assert len(crl) == COUNT
    text = await asyncio.to_thread(subprocess.run, ["openssl", "crl", "-inform", "DER", "-in",
                                                    str(full), "-noout", "-text"],
                                   capture_output=True, text=True, check=True)
    assert text.stdout.count("Serial Number:") == COUNT
    assert text.stdout.count("Key Compromise") == COUNT - 1
