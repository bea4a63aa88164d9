"""`revoc audit` (issue 10, point 9) against real states: a real presigner and publisher make
them, then each invariant is broken directly in SQL and the exact finding must appear (exit 1);
the clean state exits 0. OpenSSL cross-checks the CRL bytes the audit reads.

Invariants: ARCHITECTURE.md 1, 2 and 4; CONFORMANCE CRL-15 (retention), DELTA-3 (delta
contents, removeFromCRL), OCSP-RESP-12 (unspecified is omitted).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes

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
from tests.crl_fixtures import PUBLIC_URL, add_leaves, register_pki


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


def _ca_key(state: State) -> CertificateIssuerPublicKeyTypes:
    return state.pki.ca.cert.public_key()  # type: ignore[return-value]


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
    text = await asyncio.to_thread(
        subprocess.run, ["openssl", "crl", "-inform", "DER", "-in", str(path), "-noout",
                         "-text", "-CAfile", str(state.pki.chain_pem())],
        capture_output=True, text=True, check=True)
    assert "verify OK" in text.stderr + text.stdout
    openssl_serials = {int(s, 16) for s in re.findall(r"Serial Number: ([0-9A-F]+)", text.stdout)}
    ours = read_crl(der, _ca_key(state))
    assert set(ours.listed) == openssl_serials == {2, 3, 4}


async def test_revocation_on_no_crl_is_pending_then_a_finding_until_a_delta_lists_it(
        state: State, capsys: pytest.CaptureFixture[str]) -> None:
    await state.revoke(5)
    await state.presign()
    report = await _audit(state)
    assert report.ok, report.findings
    assert report.pending["crl"] == 1  # younger than the grace period
    await state.settle()
    code, out, err = await run_cli(capsys, "audit", "--database-url", state.dsn)
    assert code == 1
    assert finding_heads(out) == [("crl-missing", "issuer aud serial 05")]
    assert "not on full CRL aud.crl number" in out and "nor on a delta CRL" in out
    assert "1 finding(s) (crl-missing 1)" in err
    # The next delta lists it: no finding, though the full CRL still does not.
    await state.publish(changes=True)
    assert 5 not in read_crl(await _latest_der(state, "full"), _ca_key(state)).listed
    assert 5 in read_crl(await _latest_der(state, "delta"), _ca_key(state)).listed
    code, out, _ = await run_cli(capsys, "audit", "--database-url", state.dsn)
    assert code == 0, out


async def test_a_crl_that_claims_a_change_must_list_it_even_within_grace(state: State) -> None:
    """Membership comes from the CRL bytes: bookkeeping that says "reflected" proves nothing."""
    await state.revoke(5)
    await state.presign()
    assert (await _audit(state)).ok
    await state.execute("UPDATE crls SET max_change_seq = max_change_seq + 1000"
                        " WHERE kind = 'delta'")
    report = await _audit(state)
    assert _heads(report) == [("crl-missing", "issuer aud serial 05")]
    assert "not on delta CRL aud-delta.crl number" in str(report.findings[0])
    assert "which reflects changes up to" in str(report.findings[0])
    await state.execute("UPDATE crls SET max_change_seq = max_change_seq + 2000"
                        " WHERE kind = 'full'")
    report = await _audit(state)
    assert _heads(report) == [("crl-missing", "issuer aud serial 05")]
    assert "not on full CRL aud.crl number" in str(report.findings[0])


async def test_a_reason_raised_to_key_compromise_must_reach_a_crl(
        state: State, capsys: pytest.CaptureFixture[str]) -> None:
    """The certificate stays listed (as unspecified) on the full CRL; the raised reason must
    still reach a CRL (DELTA-3: reason changes are delta entries; BR-10)."""
    async with state.pool.acquire() as conn:
        await admin.revoke(conn, admin.RevokeRequest("aud", 4, Reason.keyCompromise))
    await state.presign()
    report = await _audit(state)
    assert report.ok and report.pending["crl"] == 1
    await state.settle()
    code, out, _ = await run_cli(capsys, "audit", "--database-url", state.dsn)
    assert code == 1
    assert finding_heads(out) == [("crl-mismatch", "issuer aud serial 04")]
    assert "full CRL aud.crl number" in out
    assert "still says reason unspecified, recorded keyCompromise, and no delta CRL was built " \
           "after the change" in out
    await state.publish(changes=True)
    delta = read_crl(await _latest_der(state, "delta"), _ca_key(state))
    assert delta.listed[4] & 15 == Reason.keyCompromise
    code, out, _ = await run_cli(capsys, "audit", "--database-url", state.dsn)
    assert code == 0, out


async def test_released_hold_must_leave_the_crls(state: State,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    async with state.pool.acquire() as conn:
        await admin.unhold(conn, "aud", 3)
    await state.presign()
    report = await _audit(state)
    assert report.ok and report.pending["crl"] == 1
    await state.settle()
    code, out, _ = await run_cli(capsys, "audit", "--database-url", state.dsn)
    assert code == 1
    assert finding_heads(out) == [("crl-good-listed", "issuer aud serial 03")]
    assert "(hold released), still on full CRL aud.crl" in out
    await state.publish(changes=True)  # removeFromCRL (DELTA-3)
    assert (await _audit(state)).ok
    # A delta that says removeFromCRL for a certificate revoked when it was built.
    await state.execute_without_triggers(
        "UPDATE certificates SET status = 'revoked', revoked_at = now() - interval '2 hours',"
        " reason = 6, crl_entry = '\\x00'::bytea, hold_released = false"
        " WHERE issuer_id = $1 AND serial = $2", state.issuer_id, serial_bytes(3))
    report = await _audit(state, grace=0)
    assert ("crl-removed", "issuer aud serial 03") in _heads(report)
    assert "says removeFromCRL" in str(report.findings[0])


async def test_responses_must_say_what_the_database_says(state: State,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    good = {row["hash_alg"]: row["der"] for row in await state.pool.fetch(
        "SELECT hash_alg, der FROM ocsp_responses WHERE issuer_id = $1 AND serial = $2",
        state.issuer_id, serial_bytes(5))}
    await state.revoke(5, Reason.keyCompromise)
    await state.presign()
    await state.publish(changes=True)
    await state.settle()
    assert (await _audit(state)).ok
    # The revoked certificate's responses replaced by its older `good` ones (from its new
    # change, so they count as current): the one thing that must never happen.
    for hash_alg, der in good.items():
        await state.execute("UPDATE ocsp_responses SET der = $3 WHERE issuer_id = $1 AND"
                            " serial = $2 AND hash_alg = $4", state.issuer_id, serial_bytes(5),
                            der, hash_alg)
    # Recorded reason and time no longer match what the responses of 2 and 4 say (changed past
    # the triggers: through them, each change would take a new change_seq, migration 0010).
    await state.execute_without_triggers(
        "UPDATE certificates SET reason = 4 WHERE issuer_id = $1 AND serial = $2",
        state.issuer_id, serial_bytes(2))
    await state.execute_without_triggers(
        "UPDATE certificates SET revoked_at = revoked_at - interval '1 second'"
        " WHERE issuer_id = $1 AND serial = $2", state.issuer_id, serial_bytes(4))
    # A released hold whose old `revoked` responses are passed off as current.
    async with state.pool.acquire() as conn:
        await admin.unhold(conn, "aud", 3)
    await state.execute(
        "UPDATE ocsp_responses o SET cert_change_seq = c.change_seq FROM certificates c"
        " WHERE c.issuer_id = o.issuer_id AND c.serial = o.serial AND c.serial = $1",
        serial_bytes(3))
    await state.publish(changes=True)
    code, out, _ = await run_cli(capsys, "audit", "--database-url", state.dsn)
    assert code == 1
    assert finding_heads(out) == [
        # The CRLs disagree with the database too (OCSP-RESP-12).
        ("crl-mismatch", "issuer aud serial 02"),
        ("crl-mismatch", "issuer aud serial 04"),
        ("ocsp-good", "issuer aud serial 05"),
        ("ocsp-mismatch", "issuer aud serial 02"),
        ("ocsp-mismatch", "issuer aud serial 04"),
        ("ocsp-revoked", "issuer aud serial 03"),
    ]
    lines = out.splitlines()
    assert "full CRL aud.crl number" in lines[0]
    assert "says reason keyCompromise, recorded superseded" in lines[0]
    assert "says revocationDate" in lines[1] and "reason" not in lines[1].split("), ")[1]
    assert "says good, the certificate is revoked (keyCompromise)" in lines[2]
    assert lines[2].endswith("[SHA1, SHA256]")
    assert "reason keyCompromise, recorded superseded" in lines[3]
    assert "revocationTime" in lines[4] and "reason" not in lines[4]
    assert "says revoked, the certificate is good" in lines[5]


async def test_stale_and_missing_responses(state: State) -> None:
    await state.revoke(6)
    await state.publish(changes=True)
    report = await _audit(state)
    assert report.ok and report.pending["ocsp"] == 2  # two CertID hashes, not re-signed yet
    await state.settle()
    await state.execute("DELETE FROM ocsp_responses WHERE issuer_id = $1 AND serial = $2",
                        state.issuer_id, serial_bytes(2))
    report = await _audit(state)
    assert _heads(report) == [("ocsp-missing", "issuer aud serial 02"),
                              ("ocsp-stale", "issuer aud serial 06")]
    assert str(report.findings[1]).endswith("[SHA1, SHA256]")
    await state.presign()
    assert (await _audit(state)).ok


async def test_quarantined_rows_are_findings(state: State) -> None:
    await quarantine_row(state.pool, "presign", state.issuer_id, "aud", serial_bytes(5), 7,
                         ValueError("DER times need a timezone-aware datetime"))
    report = await _audit(state)
    assert _heads(report) == [("quarantined", "issuer aud serial 05")]
    assert "the presign worker skips it since" in str(report.findings[0])
    assert "ValueError: DER times need a timezone-aware datetime" in str(report.findings[0])
    # A worker loop may run a subset of the checks (the publisher: the CRL checks).
    async with state.pool.acquire() as conn:
        assert (await audit(conn, now=datetime.now(UTC), checks=("crl",))).ok
        with pytest.raises(ValueError, match="unknown audit checks: crls"):
            await audit(conn, now=datetime.now(UTC), checks=("crls",))


async def test_rows_older_than_the_plausibility_constraints(state: State) -> None:
    """What was seen: a revocation at 0001-01-01 stored as -infinity. Rows written before the
    NOT VALID constraints are reported, and the audit itself reads them without crashing."""
    async with state.pool.acquire() as conn, conn.transaction():
        definitions = {row["conname"]: row["def"] for row in await conn.fetch(
            "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint"
            " WHERE conname IN ('certificates_serial_valid', 'certificates_dates_valid')")}
        assert len(definitions) == 2 and all("NOT VALID" in d for d in definitions.values())
        for name in definitions:
            await conn.execute(f"ALTER TABLE certificates DROP CONSTRAINT {name}")
        await conn.execute(
            "INSERT INTO certificates (issuer_id, serial, not_after) VALUES"
            " ($1, '\\x0007'::bytea, now() + interval '1 year'),"
            " ($1, '\\x08'::bytea, 'infinity')", state.issuer_id)
        await conn.execute(
            "UPDATE certificates SET revoked_at = '-infinity', status = 'revoked', reason = 4,"
            " crl_entry = '\\x00'::bytea, change_seq = nextval('cert_change_seq')"
            " WHERE issuer_id = $1 AND serial = $2", state.issuer_id, serial_bytes(6))
        await conn.execute(  # the revocation happened an hour ago (beyond the grace period)
            "UPDATE certificates SET changed_at = changed_at - interval '1 hour'"
            " WHERE issuer_id = $1 AND serial = $2", state.issuer_id, serial_bytes(6))
        for name, definition in definitions.items():
            await conn.execute(f"ALTER TABLE certificates ADD CONSTRAINT {name} {definition}")
    report = await _audit(state)
    assert _heads(report) == [("crl-missing", "issuer aud serial 06"),
                              ("implausible", "issuer aud serial 06"),
                              ("implausible", "issuer aud serial 08"),
                              ("implausible", "issuer aud serial 0007"),
                              ("ocsp-stale", "issuer aud serial 06")]
    text = [str(f) for f in report.findings]
    assert "revoked an unrepresentable time (superseded" in text[0]
    assert "revoked_at -infinity is not between 1950 and 9999" in text[1]
    assert "not_after infinity is not between 1950 and 9999" in text[2]
    assert "serial octets 0007 are not a positive minimal DER INTEGER" in text[3]


async def test_dead_and_failing_workers(state: State, capsys: pytest.CaptureFixture[str]) -> None:
    await state.execute("DELETE FROM workers")  # only the heartbeats of this test
    assert (await _audit(state)).ok  # a kind that never ran here is no finding
    publisher = Heartbeat("publish", host="crl-1", pid=111)
    presigner = Heartbeat("presign", host="ocsp-1", pid=222)
    assert await publisher.beat(state.pool, ok=True)
    assert await presigner.beat(state.pool, ok=True)
    assert (await _audit(state)).ok
    await state.execute("UPDATE workers SET beat_at = now() - interval '10 minutes'"
                        " WHERE pid = 111")
    assert await presigner.beat(state.pool, error="OSError: connection refused")
    await state.execute("UPDATE workers SET last_ok = now() - interval '10 minutes',"
                        " started_at = now() - interval '1 hour' WHERE pid = 222")
    code, out, _ = await run_cli(capsys, "audit", "--database-url", state.dsn)
    assert code == 1
    assert finding_heads(out) == [("worker-dead", "publish workers"),
                                  ("worker-failing", "presign workers")]
    assert "no publisher alive since" in out and "last heartbeat: crl-1 pid 111" in out
    assert "ocsp-1 pid 222" in out and "OSError: connection refused" in out
    # A longer threshold accepts both.
    code, out, _ = await run_cli(capsys, "audit", "--database-url", state.dsn,
                                 "--worker-threshold", "20m")
    assert code == 0, out
    # A publisher that stopped in order (a `publish --once` from cron) is alive until its last
    # heartbeat is older than the threshold.
    await publisher.stopped(state.pool)
    assert (await _audit(state, worker_threshold=1200)).ok
    await state.execute("UPDATE workers SET beat_at = now() - interval '30 minutes'"
                        " WHERE pid = 111")
    code, out, _ = await run_cli(capsys, "audit", "--database-url", state.dsn,
                                 "--worker-threshold", "20m")
    assert finding_heads(out) == [("worker-dead", "publish workers")]
    assert "stopped: crl-1 pid 111" in out


async def test_issuer_without_ca_key_is_skipped_for_crls(
        clean_db: asyncpg.Pool, tmp_path: Path, database_url: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    state = await make_state(clean_db, tmp_path, database_url)
    async with clean_db.acquire() as conn:
        elsewhere = await register_pki(conn, tmp_path / "ext", "ext", with_key=False)
        await add_leaves(conn, elsewhere, [1, 2])
        await admin.revoke(conn, admin.RevokeRequest("ext", 2, Reason.keyCompromise))
    await state.presign()
    await state.settle()
    code, out, err = await run_cli(capsys, "audit", "--database-url", database_url)
    assert code == 0, out
    assert "revoc: note: issuer ext: no CA key registered, its CRLs are signed elsewhere; CRL " \
           "checks skipped" in err
    assert "16 OCSP response(s)" in out


async def test_scopes_follow_the_certificates(clean_db: asyncpg.Pool, tmp_path: Path,
                                              database_url: str) -> None:
    """A sharded certificate belongs on its shard's CRL, and on the issuer-wide CRL while one
    exists (an issuer that was unsharded when it published, then got shards)."""
    state = await make_state(clean_db, tmp_path, database_url, name="wide")
    await state.execute("UPDATE issuers SET crl_shards = 2 WHERE id = $1", state.issuer_id)
    pki = state.pki
    pki.shards = 2  # new leaves name /crl/wide/<serial mod 2>.crl
    async with clean_db.acquire() as conn:
        await add_leaves(conn, pki, [7, 9])
    assert pki.leaf_url(7) == f"{PUBLIC_URL}/crl/wide/1.crl"
    await state.revoke(7)
    await state.presign()
    await state.settle()
    report = await _audit(state)
    assert _heads(report) == [("crl-missing", "issuer wide serial 07")] * 2
    details = sorted(f.detail for f in report.findings)
    assert "not on any full CRL (wide/1.crl was never published)" in details[0]
    assert "not on full CRL wide.crl number" in details[1]


async def test_the_crl_bytes_themselves(state: State) -> None:
    # A serial the CRL lists but the issuer never recorded (a row deleted behind our back).
    await state.execute("DELETE FROM certificates WHERE issuer_id = $1 AND serial = $2",
                        state.issuer_id, serial_bytes(2))
    report = await _audit(state)
    assert _heads(report) == [("crl-unknown", "issuer aud serial 02")]
    # Past nextUpdate: the latest full CRL, and the delta that goes with it.
    await state.execute("UPDATE crls SET next_update = now() - interval '1 minute'")
    report = await _audit(state)
    assert _heads(report) == [("crl-expired", "issuer aud")] * 2 + [
        ("crl-unknown", "issuer aud serial 02")]
    assert {f.detail.split(" number ")[0] for f in report.findings[:2]} == {
        "full CRL aud.crl", "delta CRL aud-delta.crl"}
    # A signature that does not verify (one octet of its s value changed): the full CRL counts
    # for nothing.
    await state.execute(
        "UPDATE crls SET next_update = now() + interval '1 day', der = CASE WHEN kind = 'full'"
        " THEN set_byte(der, octet_length(der) - 4,"
        " (get_byte(der, octet_length(der) - 4) + 1) % 256) ELSE der END")
    report = await _audit(state)
    assert _heads(report) == [("crl-invalid", "issuer aud"),
                              ("crl-missing", "issuer aud serial 03"),
                              ("crl-missing", "issuer aud serial 04")]
    assert "signature does not verify with the CA certificate's key" in report.findings[0].detail
    assert "not on any valid full CRL (aud.crl number" in report.findings[1].detail
