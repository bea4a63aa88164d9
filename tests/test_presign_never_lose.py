"""Issue 10 from the presigner's side: changes are signed from the durable queue `ocsp_pending`,
exactly once across presigners; a row that cannot be encoded is quarantined and everything else
is signed; the continuous presigner survives terminated backends and a PostgreSQL restart.

CONFORMANCE items checked: OCSP-RESP-5/12/16 (through OpenSSL), BR-6 (queue drained at start).
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from cryptography.x509 import ReasonFlags, ocsp

from responder.presign_loop import run_presigner
from responder.presign_queue import presign_once
from revoc import admin
from revoc.der.asn1 import integer_content
from revoc.model import HashAlgorithm, Reason
from revoc.settings import Settings
from revoc.workers import Heartbeat
from tests.pgcluster import PgCluster
from tests.presign_pki import CA_SIGNED, DELEGATED, Pki, openssl_check, register_pki

REPO = Path(__file__).resolve().parent.parent
SETTINGS = Settings(presign_processes=1)
DEADLINE = 20.0  # seconds; generous on a shared 2-core machine, never a speed assertion


async def _until(predicate: Callable[[], Awaitable[bool]], seconds: float = DEADLINE,
                 what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@dataclass
class Running:
    task: asyncio.Task[None]
    stop: asyncio.Event
    heartbeat: Heartbeat


_next_pid = [4_000_000]


@asynccontextmanager
async def _presigner(pool: asyncpg.Pool, **kwargs: float) -> AsyncIterator[Running]:
    """A continuous presigner with a heartbeat row of its own (a made-up pid per presigner)."""
    _next_pid[0] += 1
    heartbeat = Heartbeat("presign", host="test", pid=_next_pid[0])
    stop = asyncio.Event()
    task = asyncio.create_task(run_presigner(pool, SETTINGS, stop=stop, heartbeat=heartbeat,
                                             issuer_poll_interval=0.5, **kwargs))
    try:
        yield Running(task, stop, heartbeat)
        assert not task.done(), "the presigner exited on its own"
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)  # returns normally: an exception here fails the test


async def _own_pool(dsn: str, name: str) -> asyncpg.Pool:
    """A pool whose backends the test can find (application_name) and terminate."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=6, server_settings={"application_name": name})
    return pool


async def _statuses(conn: asyncpg.Pool | asyncpg.Connection, issuer_id: int,
                    serial: int) -> list[tuple[ocsp.OCSPCertStatus, bool]]:
    """(status, signed from the current certificate row) of each stored response."""
    rows = await conn.fetch(
        "SELECT o.der, o.cert_change_seq = c.change_seq AS current FROM ocsp_responses_served o"
        " JOIN certificates c USING (issuer_id, serial)"
        " WHERE o.issuer_id = $1 AND o.serial = $2 ORDER BY o.hash_alg",
        issuer_id, integer_content(serial))
    return [(ocsp.load_der_ocsp_response(bytes(r["der"])).certificate_status, r["current"])
            for r in rows]


def _revoked_now(statuses: list[tuple[ocsp.OCSPCertStatus, bool]]) -> bool:
    return len(statuses) == 2 and all(s is ocsp.OCSPCertStatus.REVOKED and current
                                      for s, current in statuses)


async def _pending(conn: asyncpg.Pool | asyncpg.Connection, issuer_id: int, serial: int) -> bool:
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM ocsp_pending WHERE issuer_id = $1 AND serial = $2)",
        issuer_id, integer_content(serial)))


async def _worker_row(conn: asyncpg.Pool | asyncpg.Connection,
                      heartbeat: Heartbeat) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await conn.fetchrow(
        "SELECT * FROM workers WHERE kind = 'presign' AND host = $1 AND pid = $2",
        heartbeat.host, heartbeat.pid)
    return row


@pytest.fixture
async def pki(clean_db: asyncpg.Pool, tmp_path: Path) -> Pki:
    async with clean_db.acquire() as conn:
        return await register_pki(conn, tmp_path)


# ---------------------------------------------------------------- point 1/4: catch up by queue


async def test_a_starting_presigner_signs_the_queued_revocation(pki: Pki, pool: asyncpg.Pool,
                                                                  database_url: str) -> None:
    """Issue 10 point 1 (presigner side): with no presigner running, a revocation waits in
    ocsp_pending and the stored `good` is stale; a presigner that starts signs it from the queue
    at once (no notification: it was sent while nobody listened), dequeues it, and OpenSSL reads
    `revoked` with the reason."""
    assert (await presign_once(pool, SETTINGS)).ok
    issuer_id = pki.ids[CA_SIGNED]
    async with pool.acquire() as conn:
        await admin.revoke(conn, admin.RevokeRequest(CA_SIGNED, 0x1001, Reason.superseded))
    assert await _pending(pool, issuer_id, 0x1001)
    assert await _statuses(pool, issuer_id, 0x1001) == [(ocsp.OCSPCertStatus.GOOD, False)] * 2

    started = time.monotonic()
    async with _presigner(pool) as running:
        async def reflected() -> bool:
            return (not await _pending(pool, issuer_id, 0x1001)
                    and _revoked_now(await _statuses(pool, issuer_id, 0x1001)))

        await _until(reflected, what="the queued revocation to be signed")
        elapsed = time.monotonic() - started
        print(f"start -> queued revocation signed in {elapsed * 1000:.0f} ms")

        async def lag_observed() -> bool:
            histogram = running.heartbeat.histograms.get("ocsp_lag_seconds")
            return histogram is not None and sum(histogram.counts) == 1

        await _until(lag_observed, what="ocsp_lag_seconds")
    rows = await pool.fetch("SELECT hash_alg, der FROM ocsp_responses_served"
                            " WHERE issuer_id = $1 AND serial = $2", issuer_id,
                            integer_content(0x1001))
    for row in rows:
        algorithm = HashAlgorithm(row["hash_alg"])
        tag = f"queued-{algorithm.name}"
        output = await asyncio.to_thread(openssl_check, pki, bytes(row["der"]), CA_SIGNED,
                                         0x1001, algorithm, tag)
        assert f"{tag}-leaf.pem: revoked" in output, output
        assert "Reason: superseded" in output, output
    beat = await _worker_row(pool, running.heartbeat)
    assert beat is not None and beat["last_ok"] is not None and beat["stopped_at"] is not None


# ---------------------------------------------------------------- point 7: exactly once


async def test_two_presigners_sign_each_change_once(pki: Pki, pool: asyncpg.Pool,
                                                    database_url: str) -> None:
    """Issue 10 "seen": two presigners both re-signed every notification. Two presigners on
    separate pools race on 240 revocations (48 of them raised to keyCompromise afterwards, a
    second change): every stored response version (issuer, serial, hash, change) is written once,
    every change is dequeued once, and every certificate ends with a current `revoked`."""
    per_issuer = 120
    serials = list(range(0x100000, 0x100000 + per_issuer))
    for issuer_id in pki.ids.values():
        await pool.execute(
            "INSERT INTO certificates (issuer_id, serial, not_after) SELECT $1, substr(int8send(g),"
            " 6), now() + interval '30 days' FROM unnest($2::bigint[]) AS g", issuer_id, serials)
    assert (await presign_once(pool, SETTINGS)).ok
    baseline = await pool.fetchval("SELECT max(change_seq) FROM certificates")
    await pool.execute(
        "CREATE TABLE presign_writes (issuer_id integer, serial bytea, hash_alg smallint,"
        " cert_change_seq bigint);"
        "CREATE FUNCTION presign_writes_log() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " INSERT INTO presign_writes VALUES (NEW.issuer_id, NEW.serial, NEW.hash_alg,"
        " NEW.cert_change_seq); RETURN NULL; END $$;"
        "CREATE TRIGGER presign_writes AFTER INSERT OR UPDATE ON ocsp_responses FOR EACH ROW"
        " EXECUTE FUNCTION presign_writes_log();")
    pools = [await _own_pool(database_url, f"presign-race-{i}") for i in range(2)]
    try:
        async with _presigner(pools[0]) as one, _presigner(pools[1]) as two:
            async def revoke(name: str, serial: int, reason: Reason) -> None:
                async with pool.acquire() as conn:
                    await admin.revoke(conn, admin.RevokeRequest(name, serial, reason))

            # Four writers at a time, interleaving both issuers.
            work = [(name, s, Reason.superseded) for s in serials for name in pki.ids]
            work += [(name, s, Reason.keyCompromise) for s in serials[::5] for name in pki.ids]
            for start in range(0, len(work), 4):
                await asyncio.gather(*(revoke(*item) for item in work[start:start + 4]))

            async def all_reflected() -> bool:
                left = await pool.fetchval(
                    "SELECT count(*) FROM certificates c WHERE octet_length(c.serial) = 3"
                    " AND (EXISTS (SELECT 1 FROM ocsp_pending p WHERE p.issuer_id = c.issuer_id"
                    "              AND p.serial = c.serial)"
                    "   OR (SELECT count(*) FROM ocsp_responses o WHERE o.issuer_id = c.issuer_id"
                    "        AND o.serial = c.serial AND o.cert_change_seq = c.change_seq) < 2)")
                return bool(left == 0)

            await _until(all_reflected, 60, "every change to be signed")
        duplicates = await pool.fetch(
            "SELECT issuer_id, serial, hash_alg, cert_change_seq, count(*) FROM presign_writes"
            " WHERE cert_change_seq > $1 GROUP BY 1, 2, 3, 4 HAVING count(*) > 1", baseline)
        assert duplicates == [], duplicates
        writes = await pool.fetchval("SELECT count(*) FROM presign_writes")
        dequeued = [r.heartbeat.counters.get("changes_signed", 0) for r in (one, two)]
        print(f"responses written {writes}, changes dequeued per presigner {dequeued}")
        # Each change was dequeued by exactly one presigner (a second change made before the
        # first was signed is folded into one row by the trigger, so at most len(work)).
        assert len(serials) * 2 <= sum(dequeued) <= len(work)
        for name, issuer_id in pki.ids.items():
            rows = await pool.fetch(
                "SELECT c.serial, c.reason, o.der FROM certificates c JOIN ocsp_responses o"
                " USING (issuer_id, serial) WHERE c.issuer_id = $1"
                " AND octet_length(c.serial) = 3"
                " AND o.cert_change_seq = c.change_seq", issuer_id)
            assert len(rows) == 2 * per_issuer, name
            for row in rows:
                response = ocsp.load_der_ocsp_response(bytes(row["der"]))
                assert response.certificate_status is ocsp.OCSPCertStatus.REVOKED
                assert response.revocation_reason == ReasonFlags(Reason(row["reason"]).name)
    finally:
        for own in pools:
            await own.close()
        await pool.execute("DROP TABLE presign_writes; DROP FUNCTION presign_writes_log() CASCADE")


# ---------------------------------------------------------------- point 2: one bad row


@asynccontextmanager
async def _bad_rows(pool: asyncpg.Pool, rows: list[tuple[int, int, str]]) -> AsyncIterator[None]:
    """Rows the encoder cannot handle, "got in somehow": the plausibility constraint is dropped
    for the update and put back NOT VALID (as the migration has it); the rows go at the end."""
    async with pool.acquire() as conn, conn.transaction():
        definition = await conn.fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conname = 'certificates_dates_valid'")
        await conn.execute("ALTER TABLE certificates DROP CONSTRAINT certificates_dates_valid")
        for issuer_id, serial, revoked_at in rows:
            await conn.execute(
                "UPDATE certificates SET status = 'revoked', revoked_at = $3::text::timestamptz,"
                " reason = 4, crl_entry = '\\x00', change_seq = nextval('cert_change_seq')"
                " WHERE issuer_id = $1 AND serial = $2",
                issuer_id, integer_content(serial), revoked_at)
        await conn.execute(f"ALTER TABLE certificates ADD CONSTRAINT certificates_dates_valid "
                           f"{definition}")
    try:
        yield
    finally:
        for issuer_id, serial, _ in rows:
            await pool.execute("DELETE FROM certificates WHERE issuer_id = $1 AND serial = $2",
                               issuer_id, integer_content(serial))


async def test_a_row_that_cannot_be_encoded_stops_nothing(
    pki: Pki, pool: asyncpg.Pool, database_url: str, caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 10 "seen": a revocation time of -infinity made the DER encoder raise, both
    continuous presigners exited, `presign --once` failed with a traceback on every restart and
    every later revocation (of any issuer) stayed `good`. Now the row is quarantined (logged once
    with issuer and serial, counted, not retried on every wake-up), every later revocation of
    either issuer is signed `revoked`, and `presign --once` exits 1 with one line naming it."""
    assert (await presign_once(pool, SETTINGS)).ok
    ca, dl = pki.ids[CA_SIGNED], pki.ids[DELEGATED]
    with caplog.at_level(logging.INFO):
        async with _presigner(pool) as running, _bad_rows(pool, [(ca, 0x1001, "-infinity")]):
            async def quarantined() -> bool:
                return bool(await pool.fetchval(
                    "SELECT count(*) FROM quarantine WHERE kind = 'presign' AND issuer_id = $1"
                    " AND serial = $2", ca, integer_content(0x1001)))

            await _until(quarantined, what="the bad row to be quarantined")
            async with pool.acquire() as conn:
                # The other issuer's good certificate, and a second change of this issuer's
                # unspecified one (raised to keyCompromise).
                await admin.revoke(conn, admin.RevokeRequest(DELEGATED, 0x2001, Reason.superseded))
                await admin.revoke(conn, admin.RevokeRequest(CA_SIGNED, 0x1003,
                                                             Reason.keyCompromise))

            async def others_signed() -> bool:
                return (_revoked_now(await _statuses(pool, dl, 0x2001))
                        and _revoked_now(await _statuses(pool, ca, 0x1003)))

            await _until(others_signed, what="the other revocations to be signed")
            assert not running.task.done()
            # The bad row stays queued (its age is the alarm) and was tried once, not on
            # every wake-up since.
            assert await _pending(pool, ca, 0x1001)

            async def counted() -> bool:  # the heartbeat takes the counters after each turn
                return running.heartbeat.counters.get("changes_signed") == 2

            await _until(counted, what="the heartbeat's counters")
            assert running.heartbeat.counters.get("rows_quarantined") == 1
            logged = [r for r in caplog.records if r.levelno >= logging.ERROR
                      and "quarantined" in r.getMessage()]
            assert len(logged) == 1, [r.getMessage() for r in logged]
            assert CA_SIGNED in logged[0].getMessage() and "1001" in logged[0].getMessage()

            # `presign --once` (retrying quarantined rows) signs everything else, reports the
            # row, exits 1 and prints no traceback.
            env = {**os.environ, "REVOC_DATABASE_URL": database_url,
                   "REVOC_PRESIGN_PROCESSES": "1"}
            done = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "revoc.cli", "presign", "--once"],
                cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
            assert done.returncode == 1, done.stderr
            assert "Traceback" not in done.stderr, done.stderr
            assert "1 row(s) could not be signed and are quarantined" in done.stderr, done.stderr
            assert f"{CA_SIGNED} 1001" in done.stderr, done.stderr
            # The stale `good` of the bad row is never refreshed as if nothing happened.
            assert await _statuses(pool, ca, 0x1001) == [(ocsp.OCSPCertStatus.GOOD, False)] * 2

            # Its next change (the time corrected) is tried at once, signed, and released.
            await pool.execute(
                "UPDATE certificates SET revoked_at = '2026-01-01Z', change_seq ="
                " nextval('cert_change_seq') WHERE issuer_id = $1 AND serial = $2",
                ca, integer_content(0x1001))

            async def released() -> bool:
                return (_revoked_now(await _statuses(pool, ca, 0x1001))
                        and not await quarantined() and not await _pending(pool, ca, 0x1001))

            await _until(released, what="the corrected row to be signed and released")


async def test_sweep_quarantines_undecodable_rows_and_signs_the_rest(
    pki: Pki, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture,
) -> None:
    """The same in the refresh sweep, for rows not in the queue (written before migration 0004)
    and for a time PostgreSQL holds but Python cannot (year 20000): one read of an issuer's page
    must not fail for it. Everything else of both issuers is signed; the report names both rows."""
    ca, dl = pki.ids[CA_SIGNED], pki.ids[DELEGATED]
    async with _bad_rows(pool, [(ca, 0x1001, "-infinity"), (dl, 0x2001, "20000-01-01Z")]):
        await pool.execute("DELETE FROM ocsp_pending WHERE serial IN ($1, $2)",
                           integer_content(0x1001), integer_content(0x2001))
        with caplog.at_level(logging.ERROR):
            report = await presign_once(pool, SETTINGS)
        assert not report.ok and not report.failed_issuers
        assert set(report.quarantined) == {f"{CA_SIGNED} 1001", f"{DELEGATED} 2001"}
        assert report.certificates == 4 and report.changes == 4
        for issuer_id, serial in ((ca, 0x1002), (ca, 0x1003), (dl, 0x2002), (dl, 0x2003)):
            assert _revoked_now(await _statuses(pool, issuer_id, serial)), hex(serial)
        errors = {r.getMessage() for r in caplog.records if "quarantined" in r.getMessage()}
        assert any("1001" in e and "timezone" in e for e in errors), errors
        assert any("2001" in e and "outside the years" in e for e in errors), errors


# ---------------------------------------------------------------- point 3: supervised


async def test_presigner_survives_terminated_backends(pki: Pki, pool: asyncpg.Pool,
                                                      database_url: str) -> None:
    """Every backend of the presigner is terminated (pg_terminate_backend): it keeps going, and a
    revocation made afterwards is signed within seconds; the heartbeat records the error, then a
    newer success."""
    assert (await presign_once(pool, SETTINGS)).ok
    own = await _own_pool(database_url, "presign-terminate")
    try:
        async with _presigner(own) as running:
            async def beating() -> bool:
                row = await _worker_row(pool, running.heartbeat)
                return row is not None and row["last_ok"] is not None

            await _until(beating, what="a first heartbeat")
            killed = await pool.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = 'presign-terminate'")
            assert killed >= 1

            async def error_recorded() -> bool:
                row = await _worker_row(pool, running.heartbeat)
                return row is not None and row["last_error"] is not None

            await _until(error_recorded, what="the error in the heartbeat row")
            async with pool.acquire() as conn:
                await admin.revoke(conn, admin.RevokeRequest(DELEGATED, 0x2001,
                                                             Reason.cessationOfOperation))
            dl = pki.ids[DELEGATED]

            async def signed() -> bool:
                return _revoked_now(await _statuses(pool, dl, 0x2001))

            await _until(signed, what="the revocation after the terminations to be signed")

            async def recovered() -> bool:
                row = await _worker_row(pool, running.heartbeat)
                return row is not None and row["last_ok"] > row["last_error_at"]

            await _until(recovered, what="a last_ok newer than the error")
    finally:
        await own.close()


async def test_presigner_survives_a_postgres_restart(
    own_cluster: PgCluster, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """PostgreSQL is stopped under a running presigner and started again: the presigner logs,
    backs off, reconnects, and a revocation made after the restart is signed within seconds;
    its heartbeat row shows the error, then a newer success."""
    setup = await asyncpg.connect(own_cluster.dsn)
    try:
        pki = await register_pki(setup, tmp_path)
    finally:
        await setup.close()
    own = await _own_pool(own_cluster.dsn, "presign-restart")
    try:
        assert (await presign_once(own, SETTINGS)).ok
        with caplog.at_level(logging.ERROR, logger="revoc.presign"):
            async with _presigner(own) as running:
                async def beating() -> bool:
                    row = await _worker_row(own, running.heartbeat)
                    return row is not None and row["last_ok"] is not None

                await _until(beating, what="a first heartbeat")
                await asyncio.to_thread(own_cluster.stop)

                async def noticed() -> bool:
                    return any("retrying" in r.getMessage() for r in caplog.records)

                await _until(noticed, what="the presigner to notice the outage")
                await asyncio.to_thread(own_cluster.start)
                assert not running.task.done()
                conn = await asyncpg.connect(own_cluster.dsn)
                try:
                    await admin.revoke(conn, admin.RevokeRequest(CA_SIGNED, 0x1001,
                                                                 Reason.affiliationChanged))
                    ca = pki.ids[CA_SIGNED]

                    async def signed() -> bool:
                        return _revoked_now(await _statuses(conn, ca, 0x1001))

                    await _until(signed, what="the revocation after the restart to be signed")

                    async def recovered() -> bool:
                        row = await _worker_row(conn, running.heartbeat)
                        return (row is not None and row["last_error"] is not None
                                and row["last_ok"] > row["last_error_at"])

                    await _until(recovered, what="last_error, then a newer last_ok")
                finally:
                    await conn.close()
    finally:
        await own.close()
