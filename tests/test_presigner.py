"""The presigner against real PostgreSQL, with OpenSSL and pkilint as outside oracles.

CONFORMANCE items checked: OCSP-RESP-5/6/7/8/9/12/16/17, OCSP-SIGNER-6/8, BR-4, BR-5, BR-6.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.x509 import ReasonFlags, ocsp

from responder.presign_loop import run_presigner
from responder.presign_queue import presign_once
from responder.presigner import Presigner, make_executor
from revoc import admin
from revoc.clock import FixedClock, utc_seconds
from revoc.der.asn1 import integer_content
from revoc.der.ocsp import ResponseTemplate, SingleResponse, cert_id_der, cert_id_prefix
from revoc.der.ocsp_batch import PresignTemplate, ResponseTimes
from revoc.model import CertStatus, HashAlgorithm, Reason
from revoc.notify import encode_serial_change
from revoc.settings import Settings
from revoc.signing import FileKeySigner
from tests.bounds import DEADLINE, within
from tests.pki import (
    cached_key,
    make_ca,
    make_leaf,
)
from tests.presign_pki import (
    CA_SIGNED,
    DELEGATED,
    REVOKED_AT,
    STATUSES,
    Pki,
    openssl_check,
    register_pki,
)

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
SETTINGS = Settings(presign_processes=2)
HASHES = {HashAlgorithm.SHA1: hashes.SHA1, HashAlgorithm.SHA256: hashes.SHA256}
def _now() -> FixedClock:
    # Close to real time, so OpenSSL sees valid status times.
    return FixedClock(utc_seconds(datetime.now(UTC)))


def _verify(key: PublicKeyTypes, signature: bytes, data: bytes) -> None:
    if isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    elif isinstance(key, rsa.RSAPublicKey):
        key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
    else:
        raise AssertionError(f"unexpected key {key!r}")


async def _responses(pool: asyncpg.Pool) -> dict[tuple[int, int, int], asyncpg.Record]:
    rows = await pool.fetch("SELECT * FROM ocsp_responses_served")
    return {(r["issuer_id"], int.from_bytes(r["serial"], "big"), r["hash_alg"]): r for r in rows}


async def test_presign_once_signs_every_certificate_and_hash(pki: Pki, pool: asyncpg.Pool) -> None:
    clock = _now()
    now = clock.now()
    report = await presign_once(pool, SETTINGS, clock=clock)
    assert report.ok and report.issuers == 2
    assert (report.certificates, report.responses) == (6, 12)
    stored = await _responses(pool)
    assert len(stored) == 12  # one row per (certificate, hash algorithm)
    for (issuer_id, serial, hash_code), row in stored.items():
        name = CA_SIGNED if issuer_id == pki.ids[CA_SIGNED] else DELEGATED
        algorithm = HashAlgorithm(hash_code)
        resp = ocsp.load_der_ocsp_response(bytes(row["der"]))
        assert resp.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
        assert resp.serial_number == serial
        assert isinstance(resp.hash_algorithm, HASHES[algorithm])  # CertID echo (OCSP-RESP-9)
        # OCSP-RESP-6/7/8 and BR-4: producedAt now, thisUpdate backdated, fixed validity.
        assert resp.produced_at_utc == now == row["produced_at"]
        assert resp.this_update_utc == now - timedelta(seconds=SETTINGS.ocsp_backdate)
        assert resp.next_update_utc is not None
        assert resp.next_update_utc - resp.this_update_utc == timedelta(
            seconds=SETTINGS.ocsp_validity)
        assert (row["this_update"], row["next_update"]) == (resp.this_update_utc,
                                                            resp.next_update_utc)
        reason = STATUSES[serial & 0xFFF | 0x1000]
        if reason is None:
            assert resp.certificate_status is ocsp.OCSPCertStatus.GOOD
        else:
            assert resp.certificate_status is ocsp.OCSPCertStatus.REVOKED
            assert resp.revocation_time_utc == REVOKED_AT
            # OCSP-RESP-12: unspecified is omitted, others match the CRL's reason.
            expected = None if reason is Reason.unspecified else ReasonFlags(reason.name)
            assert resp.revocation_reason == expected
        # OCSP-SIGNER-8: CA-signed -> no certs; delegated -> exactly the responder's certificate.
        if name == CA_SIGNED:
            assert resp.certificates == []
            signer_key = pki.cas[CA_SIGNED].cert.public_key()
        else:
            assert resp.certificates == [pki.responder.cert]
            signer_key = pki.responder.cert.public_key()
        _verify(signer_key, resp.signature, resp.tbs_response_bytes)  # OCSP-RESP-16
        assert resp.signature_hash_algorithm is not None
        assert resp.signature_hash_algorithm.name == "sha256"  # OCSP-RESP-17: never SHA-1


async def test_openssl_verifies_presigned_responses(pki: Pki, pool: asyncpg.Pool) -> None:
    """[ocsp] -respin: signature, responder authorization, CertID match, status (SHA-1, SHA-256)."""
    await presign_once(pool, SETTINGS, clock=_now())
    stored = await _responses(pool)
    cases = [
        (CA_SIGNED, 0x1001, HashAlgorithm.SHA1, "good"),
        (CA_SIGNED, 0x1002, HashAlgorithm.SHA256, "revoked"),
        (DELEGATED, 0x2001, HashAlgorithm.SHA256, "good"),
        (DELEGATED, 0x2002, HashAlgorithm.SHA1, "revoked"),
        (DELEGATED, 0x2003, HashAlgorithm.SHA256, "revoked"),
    ]
    for issuer, serial, algorithm, status in cases:
        der = bytes(stored[pki.ids[issuer], serial, algorithm.value]["der"])
        tag = f"{issuer}-{serial:x}-{algorithm.name}"
        output = await asyncio.to_thread(openssl_check, pki, der, issuer, serial, algorithm, tag)
        assert f"{tag}-leaf.pem: {status}" in output, output
        if serial & 0xFFF == 2:
            assert "Reason: keyCompromise" in output, output
        if serial & 0xFFF == 3:
            assert "Reason:" not in output, output


async def test_pkilint_finds_nothing(pki: Pki, pool: asyncpg.Pool) -> None:
    """[lint-o] on a good, a revoked and a CA-signed response (OCSP-RESP-3/4/6, BR-15)."""
    await presign_once(pool, SETTINGS, clock=_now())
    stored = await _responses(pool)
    for issuer, serial in ((DELEGATED, 0x2001), (DELEGATED, 0x2002), (CA_SIGNED, 0x1002)):
        path = pki.directory / f"lint-{serial:x}.der"
        path.write_bytes(bytes(stored[pki.ids[issuer], serial, HashAlgorithm.SHA256.value]["der"]))
        done = await asyncio.to_thread(
            subprocess.run, [str(VENV_BIN / "lint_ocsp_response"), "lint", "--document-format",
                             "DER", "-s", "WARNING", str(path)],
            capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


async def test_nothing_is_due_until_refresh_after(pki: Pki, pool: asyncpg.Pool) -> None:
    """BR-5: a second round signs nothing; past refresh_after every response is re-signed."""
    clock = _now()
    first = await presign_once(pool, SETTINGS, clock=clock)
    assert first.responses == 12
    # refresh_after counts from thisUpdate, which lies ocsp_backdate before the first round; the
    # presigner brings refreshes forward by a lead of at most 300 s.
    clock.advance(timedelta(seconds=SETTINGS.refresh_after - SETTINGS.ocsp_backdate - 600))
    assert (await presign_once(pool, SETTINGS, clock=clock)).responses == 0
    clock.advance(timedelta(seconds=600))
    again = await presign_once(pool, SETTINGS, clock=clock)
    assert again.responses == 12
    stored = await _responses(pool)
    assert {r["produced_at"] for r in stored.values()} == {clock.now()}


async def test_certificates_past_retention_are_dropped(pki: Pki, pool: asyncpg.Pool) -> None:
    """OCSP-RESP-18: answers stay available after expiry (revoked ones included) for
    ocsp_keep_expired, then are no longer signed and their responses go (the responder then
    finds none and answers unauthorized)."""
    clock = _now()
    assert (await presign_once(pool, SETTINGS, clock=clock)).responses == 12
    issuer = pki.ids[CA_SIGNED]
    long_ago, lately = 0x1001, 0x1002  # good, and revoked (keyCompromise)
    for serial, days in ((long_ago, 31), (lately, 27)):  # lately: 29 days after the advance
        await pool.execute(
            "UPDATE certificates SET not_after = $3 WHERE issuer_id = $1 AND serial = $2",
            issuer, integer_content(serial), clock.now() - timedelta(days=days))
    keep_forever = Settings(presign_processes=2, ocsp_keep_expired=0)
    assert (await presign_once(pool, keep_forever, clock=clock)).responses == 0
    assert len(await _responses(pool)) == 12  # 0 keeps everything

    assert SETTINGS.ocsp_keep_expired == 30 * 86400
    await presign_once(pool, SETTINGS, clock=clock)
    stored = await _responses(pool)
    assert {k[1] for k in stored if k[0] == issuer} == {lately, 0x1003}
    assert len(stored) == 10
    # Past retention it is not signed again, neither by a sweep (even a forced one after a
    # change of its row) nor on a notification.
    await pool.execute("UPDATE certificates SET change_seq = nextval('cert_change_seq') "
                       "WHERE issuer_id = $1 AND serial = $2", issuer, integer_content(long_ago))
    clock.advance(timedelta(seconds=SETTINGS.refresh_after))
    report = await presign_once(pool, SETTINGS, clock=clock)
    assert report.certificates == 5
    assert {k[1] for k in await _responses(pool) if k[0] == issuer} == {lately, 0x1003}
    # Still within retention, the revoked one is re-signed with its revocation.
    der = (await _responses(pool))[issuer, lately, HashAlgorithm.SHA256.value]["der"]
    assert ocsp.load_der_ocsp_response(bytes(der)).certificate_status == (
        ocsp.OCSPCertStatus.REVOKED)


async def test_one_sweep_per_issuer_across_presigners(pki: Pki, pool: asyncpg.Pool,
                                                      database_url: str) -> None:
    """While another presigner sweeps an issuer (its advisory lock is held), the continuous
    mode leaves that issuer alone and `presign --once` waits, then signs."""
    other = await asyncpg.connect(database_url)
    try:
        busy = pki.ids[DELEGATED]
        assert await other.fetchval("SELECT pg_try_advisory_lock(1919252067, $1)", busy)
        executor = make_executor(1)
        try:
            presigner = Presigner(pool, SETTINGS, executor, _now(), wait_for_busy=False)
            report = await presigner.sweep()
        finally:
            executor.shutdown()
        assert report.ok and report.busy_issuers == (DELEGATED,)
        assert {k[0] for k in await _responses(pool)} == {pki.ids[CA_SIGNED]}
        waiting = asyncio.create_task(presign_once(pool, SETTINGS, clock=_now()))

        async def blocked_on_the_lock() -> bool:
            assert not waiting.done()
            return bool(await other.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                "AND classid = 1919252067 AND objid = $1", busy))

        await _wait_for(blocked_on_the_lock, time.monotonic() + DEADLINE)
        assert not waiting.done()
        await other.execute("SELECT pg_advisory_unlock(1919252067, $1)", busy)
        report = await asyncio.wait_for(waiting, 30)
        # The four revoked certificates are queued changes: the sweep leaves them to the queue,
        # which `presign --once` drains first without waiting for the sweep lock; then the
        # waiting sweep signs the delegated issuer's good certificate.
        assert report.ok and not report.busy_issuers and report.changes == 4
        assert report.certificates == 5
        assert len(await _responses(pool)) == 12
        # The locks were released: nobody holds one for these issuers any more.
        assert await other.fetchval("SELECT pg_try_advisory_lock(1919252067, $1)", busy)
    finally:
        await other.close()


async def test_unloadable_key_skips_issuer(pki: Pki, pool: asyncpg.Pool,
                                           caplog: pytest.LogCaptureFixture) -> None:
    """Policy: an issuer whose key cannot be loaded is skipped with one error; others signed."""
    (pki.directory / "Presign_OCSP.key").chmod(0o644)  # FileKeySigner refuses a readable key
    with caplog.at_level(logging.ERROR, logger="revoc.presign"):
        report = await presign_once(pool, SETTINGS, clock=_now())
    assert report.failed_issuers == (DELEGATED,) and not report.ok
    assert report.responses == 6
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and DELEGATED in errors[0].getMessage()
    assert {k[0] for k in await _responses(pool)} == {pki.ids[CA_SIGNED]}


def test_cli_once_exits_1_when_an_issuer_fails(pki: Pki, database_url: str) -> None:
    env = {**os.environ, "REVOC_DATABASE_URL": database_url, "REVOC_PRESIGN_PROCESSES": "1"}
    command = [sys.executable, "-m", "revoc.cli", "presign", "--once"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "12 response(s) for 6 certificate(s)" in done.stderr
    (pki.directory / "Presign_OCSP.key").unlink()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert f"issuer {DELEGATED} skipped" in done.stderr


async def test_responder_expiry_clamps_next_update(clean_db: asyncpg.Pool, tmp_path: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """OCSP-SIGNER-6: nextUpdate never lies beyond the delegated responder's notAfter."""
    clock = _now()
    not_after = clock.now() + timedelta(days=1)
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path, responder_not_after=not_after, clock=clock)
    with caplog.at_level(logging.WARNING, logger="revoc.presign"):
        report = await presign_once(clean_db, SETTINGS, clock=clock)
    assert report.ok
    assert any("clamped" in r.getMessage() for r in caplog.records)
    for (issuer_id, _serial, _alg), row in (await _responses(clean_db)).items():
        resp = ocsp.load_der_ocsp_response(bytes(row["der"]))
        if issuer_id == pki.ids[DELEGATED]:
            assert resp.next_update_utc == not_after == row["next_update"]
        else:
            assert resp.next_update_utc == resp.this_update_utc + timedelta(
                seconds=SETTINGS.ocsp_validity)


def test_fast_path_matches_response_template_byte_for_byte() -> None:
    """PresignTemplate.build_chunk == ResponseTemplate.build (Ed25519 signs deterministically)."""
    signer = FileKeySigner(ed25519.Ed25519PrivateKey.generate())
    certs = [make_ca("Byte CA", key=cached_key("p256", 9)).cert_der]
    reference = ResponseTemplate(signer=signer, responder_key_hash=b"\x07" * 20, certs=certs)
    fast = PresignTemplate(signer=signer, responder_key_hash=b"\x07" * 20, certs=certs)
    now = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    times = ResponseTimes(now, now - timedelta(hours=1), now + timedelta(days=4))
    name, key_bits = b"\x30\x03\x31\x01\x00", b"key bits"
    algorithms = (HashAlgorithm.SHA1, HashAlgorithm.SHA256, HashAlgorithm.SHA512)
    rows: list[tuple[bytes, datetime | None, int | None, datetime | None]] = [
        (integer_content(v), None, None, None)
        for v in (0, 1, 127, 128, 255, 2**64, 2**159 - 1, -3)]
    rows += [(integer_content(0x77), REVOKED_AT, r, None) for r in (None, 0, 1, 6, 9)]
    invalid_since = REVOKED_AT - timedelta(days=2)
    rows += [(integer_content(0x78), REVOKED_AT, r, invalid_since) for r in (None, 1)]
    out = fast.build_chunk([cert_id_prefix(a, name, key_bits) for a in algorithms], rows, times)
    expected = []
    for serial, revoked_at, reason, invalidity in rows:
        for algorithm in algorithms:
            single = SingleResponse(
                cert_id_der(algorithm, name, key_bits, int.from_bytes(serial, "big", signed=True)),
                CertStatus.REVOKED if revoked_at else CertStatus.GOOD, times.this_update,
                times.next_update, revoked_at, None if reason is None else Reason(reason),
                invalidity)
            expected.append(reference.build(single, now))
    assert out == expected


async def _wait_for(predicate: object, deadline: float) -> None:
    assert callable(predicate)
    while not await predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.fixture
async def presigner_task(pki: Pki, pool: asyncpg.Pool) -> AsyncIterator[asyncio.Event]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_presigner(pool, SETTINGS, stop=stop, issuer_poll_interval=0.5))
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@pytest.mark.parametrize("bound", within(1.0))
async def test_continuous_mode_resigns_on_revocation(
    pki: Pki, pool: asyncpg.Pool, database_url: str, presigner_task: asyncio.Event, bound: float
) -> None:
    """Revocation -> revoked response in the DB + NOTIFY ocsp_changed, well under a second."""
    issuer_id = pki.ids[CA_SIGNED]

    async def all_signed() -> bool:
        return len(await _responses(pool)) == 12

    await _wait_for(all_signed, time.monotonic() + 20)  # the initial sweep
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(database_url)
    try:
        await listener.add_listener("ocsp_changed", lambda *args: heard.put_nowait(args[3]))

        async def revoked() -> bool:
            rows = await pool.fetch(
                "SELECT der FROM ocsp_responses_served WHERE issuer_id = $1 AND serial = $2",
                issuer_id, integer_content(0x1001))
            return len(rows) == 2 and all(
                ocsp.load_der_ocsp_response(bytes(r["der"])).certificate_status
                is ocsp.OCSPCertStatus.REVOKED for r in rows)

        started = time.monotonic()
        async with pool.acquire() as conn:
            await admin.revoke(conn, admin.RevokeRequest(CA_SIGNED, 0x1001, Reason.superseded))
        await _wait_for(revoked, started + bound)
        payload = await asyncio.wait_for(heard.get(), bound)
        elapsed = time.monotonic() - started
        assert payload == encode_serial_change(issuer_id, integer_content(0x1001))
        assert elapsed < bound, f"revocation took {elapsed:.3f} s to reach ocsp_responses"
        print(f"revocation -> revoked response + ocsp_changed in {elapsed * 1000:.0f} ms")

        # BR-6: a newly added certificate gets an authoritative response at once.
        leaf = make_leaf(pki.cas[DELEGATED], 0x2999, name="late.example")
        async with pool.acquire() as conn:
            await admin.add_certificates(conn, DELEGATED, [str(leaf.write(pki.directory)[0])])

        async def late_signed() -> bool:
            count: int = await pool.fetchval(
                "SELECT count(*) FROM ocsp_responses WHERE issuer_id = $1 AND serial = $2",
                pki.ids[DELEGATED], integer_content(0x2999))
            return count == 2

        await _wait_for(late_signed, time.monotonic() + 5)

        # A bulk import says "<id>:*": everything of the issuer without a fresh response is signed.
        issuer_id = pki.ids[DELEGATED]
        async with pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO certificates (issuer_id, serial, not_after)"
                " SELECT $1, substr(int8send(g), 6), now() + interval '1 day'"
                " FROM generate_series(100000, 100049) AS g", issuer_id)
            await conn.execute("SELECT pg_notify('cert_changed', $1)", f"{issuer_id}:*")

        async def bulk_signed() -> bool:
            count: int = await pool.fetchval(
                "SELECT count(*) FROM ocsp_responses WHERE issuer_id = $1", issuer_id)
            return count == (len(STATUSES) + 1 + 50) * 2

        await _wait_for(bulk_signed, time.monotonic() + 10)

        # BR-6 again: an issuer registered while the presigner runs is signed without a restart.
        late_ca = make_ca("Late CA", key=cached_key("p256", 10))
        late_cert, late_key = late_ca.write(pki.directory)
        late_leaf = make_leaf(late_ca, 0x3001, name="late-ca-leaf.example")
        async with pool.acquire() as conn:
            late_id = await admin.add_issuer(conn, admin.IssuerRequest(
                "late", str(late_cert), key_path=str(late_key)))
            await admin.add_certificates(conn, "late", [str(late_leaf.write(pki.directory)[0])])

        async def late_issuer_signed() -> bool:
            count: int = await pool.fetchval(
                "SELECT count(*) FROM ocsp_responses WHERE issuer_id = $1", late_id)
            return count == 2

        await _wait_for(late_issuer_signed, time.monotonic() + 5)
    finally:
        await listener.close()


async def test_first_issuer_registered_while_running_is_signed_at_once(
    clean_db: asyncpg.Pool, tmp_path: Path
) -> None:
    """BR-6 on a fresh deployment (deploy/compose.yaml: the services start on an empty database,
    then `revoc issuer add` and `revoc cert add`): a presigner that started with no issuer signs
    the first issuer's certificates when their notifications arrive, not at the next poll or
    refresh sweep (both an hour away here). It used to take an empty first look for "not looked
    yet" and drop the unknown issuer from its sweep, so good certificates answered tryLater for
    up to 5 minutes (found by deploy/podman-check --compose)."""
    stop = asyncio.Event()
    task = asyncio.create_task(run_presigner(
        clean_db, SETTINGS, stop=stop, sweep_interval=3600, issuer_poll_interval=3600))
    try:
        async def started() -> bool:  # its first turn is done: the start-up sweep saw nothing
            return bool(await clean_db.fetchval(
                "SELECT count(*) FROM workers WHERE kind = 'presign' AND last_ok IS NOT NULL"))

        await _wait_for(started, time.monotonic() + DEADLINE)
        async with clean_db.acquire() as conn:
            await register_pki(conn, tmp_path)

        async def all_signed() -> bool:  # 6 certificates (good and revoked), 2 CertID hashes
            return len(await _responses(clean_db)) == 12

        await _wait_for(all_signed, time.monotonic() + DEADLINE)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
