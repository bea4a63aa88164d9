"""`revoc audit` (issue 10, point 9) against real states: a real presigner and publisher make
them, then each invariant is broken directly in SQL and the exact finding must appear (exit 1);
the clean state exits 0. OpenSSL cross-checks the CRL bytes the audit reads.

Invariants: ARCHITECTURE.md 1, 2 and 4; CONFORMANCE CRL-15 (retention), DELTA-3 (delta
contents, removeFromCRL), OCSP-RESP-12 (unspecified is omitted).
"""

from __future__ import annotations

import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from cryptography import x509

from revoc import admin
from revoc.audit import AuditReport, audit, read_crl
from revoc.model import Reason
from revoc.quarantine import quarantine_row
from revoc.workers import Heartbeat
from tests.audit_fixtures import (
    State,
    finding_heads,
    make_state,
    run_cli,
    serial_bytes,
)
from tests.test_crl_fixtures import PUBLIC_URL, add_leaves, register_pki


@pytest.fixture
async def state(clean_db: asyncpg.Pool, tmp_path: Path, database_url: str) -> State:
    return await make_state(clean_db, tmp_path, database_url)


async def _audit(state: State, **options: float) -> AuditReport:
    async with state.pool.acquire() as conn:
        return await audit(conn, now=datetime.now(UTC), **options)


def _heads(report: AuditReport) -> list[tuple[str, str]]:
    return finding_heads("\n".join(map(str, report.findings)))


async def _latest_der(state: State, kind: str, shard: int = -1) -> bytes:
    der: bytes = await state.pool.fetchval(
        "SELECT der FROM crls WHERE issuer_id = $1 AND shard = $2 AND kind = $3"
        " ORDER BY number DESC LIMIT 1", state.issuer_id, shard, kind)
    return der


def _ca_key(state: State) -> x509.Certificate:
    return state.pki.ca.cert


async def test_clean_state_exits_0_and_openssl_agrees(state: State, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await run_cli(capsys, "audit", "--database-url", state.dsn)
    assert code == 0, out + err
    assert out.startswith("audit: no findings; checked 3 revoked certificate listing(s) in 1 "
                          "CRL scope(s) (1 CRL(s) parsed), 12 OCSP response(s), 6 certificate")
    assert len(out.splitlines()) == 1
    # OpenSSL reads the same CRL bytes: same serials, and the signature verifies.
    der = await _latest_der(state, "full")
    path = tmp_path / "latest.crl"
    path.write_bytes(der)
    text = subprocess.run(
        ["openssl", "crl", "-inform", "DER", "-in", str(path), "-noout", "-text",
         "-CAfile", str(state.pki.chain_pem())],
        capture_output=True, text=True, check=True)
    assert "verify OK" in text.stderr + text.stdout
    openssl_serials = {int(s, 16) for s in re.findall(r"Serial Number: ([0-9A-F]+)", text.stdout)}
    ours = read_crl(der, state.pki.ca.cert.public_key(), delta=False)  # type: ignore[arg-type]
    assert ours.listed == openssl_serials == {2, 3, 4}
