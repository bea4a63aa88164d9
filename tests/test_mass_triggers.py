"""Issue 13 point 6 with issue 10's guarantee (migration 0008): the statement-level queue triggers
stamp and queue every changed certificate row exactly once, in the changing transaction, for
every writer and every kind of statement: the bulk path of `revoc cert revoke --serials-file`,
plain UPDATEs (also ones that forge the stamp), INSERTs of revoked rows, INSERT ... ON CONFLICT,
two changes in one transaction, a key change, and the publisher's crl_entry repair (which is no
change). Deleting certificates dequeues them; a queued row left without its certificate is
dequeued by the presigner instead of ageing forever."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest_asyncio

from responder.presign_queue import presign_once
from revoc import admin
from revoc.der.asn1 import integer_content
from revoc.mass_revoke import revoke_serials
from revoc.model import Reason
from revoc.settings import Settings
from tests.pki import cached_key, make_ca

NOT_AFTER = datetime.now(UTC) + timedelta(days=90)
COUNT = 600


def _as_user(dsn: str, user: str, password: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.netloc.rpartition('@')[2]}"))


@pytest_asyncio.fixture(loop_scope="session")
async def issuer(clean_db: asyncpg.Pool, tmp_path: Path) -> int:
    ca = make_ca("Trigger CA", key=cached_key("p256", 11))
    cert, key = ca.write(tmp_path)
    async with clean_db.acquire() as conn:
        issuer_id = await admin.add_issuer(conn, admin.IssuerRequest("trig", str(cert),
                                                                     key_path=str(key)))
        await conn.copy_records_to_table(
            "certificates", columns=["issuer_id", "serial", "not_after"],
            records=[(issuer_id, integer_content(0x5000 + i), NOT_AFTER)
                     for i in range(COUNT)])
    return issuer_id


@pytest_asyncio.fixture(loop_scope="session")
async def writers(database_url: str) -> AsyncIterator[dict[str, str]]:
    """DSNs of the superuser and of login roles in revoc_admin and revoc_publisher."""
    password, tag = secrets.token_hex(12), secrets.token_hex(4)
    users = {role: f"revoc_m{tag}_{role}" for role in ("admin", "publisher")}
    conn = await asyncpg.connect(database_url)
    try:
        for role, user in users.items():
            await conn.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{password}' "
                               f"IN ROLE revoc_{role}")
        yield {"owner": database_url,
               **{role: _as_user(database_url, user, password) for role, user in users.items()}}
    finally:
        for user in users.values():
            await conn.execute(f"DROP ROLE IF EXISTS {user}")
        await conn.close()


async def _state(pool: asyncpg.Pool, issuer_id: int) -> dict[bytes, asyncpg.Record]:
    rows = await pool.fetch(
        "SELECT c.serial, c.status, c.change_seq, c.changed_at, c.change_xid,"
        " p.change_seq AS queued_seq, p.changed_at AS queued_at"
        " FROM certificates c LEFT JOIN ocsp_pending p"
        " USING (issuer_id, serial) WHERE c.issuer_id = $1", issuer_id)
    return {bytes(r["serial"]): r for r in rows}


def _assert_changed_once(before: dict[bytes, asyncpg.Record], after: dict[bytes, asyncpg.Record],
                         xid: int, now: datetime) -> set[bytes]:
    """Every row whose change_seq moved carries this transaction's stamp and exactly its own
    queue row; nothing else was stamped. Returns the changed serials."""
    changed = {s for s, r in after.items()
               if (before[s]["change_seq"] != r["change_seq"] if s in before
                   else r["status"] == "revoked")}  # inserted good: no change
    for serial in changed:
        row = after[serial]
        assert int(row["change_xid"]) == xid and row["changed_at"] == now, serial.hex()
        assert row["queued_seq"] == row["change_seq"], serial.hex()
        assert row["queued_at"] == now, serial.hex()
    for serial in set(after) - changed:
        old = before.get(serial)
        assert after[serial]["change_xid"] == (old["change_xid"] if old else None), serial.hex()
        assert after[serial]["queued_seq"] == (old["queued_seq"] if old else None), serial.hex()
    return changed


async def _in_transaction(dsn: str, *statements: str) -> tuple[int, datetime]:
    """Run statements in one transaction as the DSN's role; (xid, now()) of that transaction."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            for statement in statements:
                await conn.execute(statement)
            xid, now = await conn.fetchrow("SELECT pg_current_xact_id()::text::bigint, now()")
    finally:
        await conn.close()
    return int(xid), now


async def test_bulk_revocation_stamps_and_queues_each_row_once(
        clean_db: asyncpg.Pool, issuer: int) -> None:
    before = await _state(clean_db, issuer)
    serials = [f"{0x5000 + i:X}" for i in range(COUNT - 100)]
    async with clean_db.acquire() as conn:
        result = await revoke_serials(conn, "trig", [*serials, serials[3]], Reason.keyCompromise)
    assert result.revoked == COUNT - 100
    after = await _state(clean_db, issuer)
    stamps = {(int(after[integer_content(int(s, 16))]["change_xid"]),
               after[integer_content(int(s, 16))]["changed_at"]) for s in serials}
    assert len(stamps) == 1  # one transaction
    ((xid, now),) = stamps
    changed = _assert_changed_once(before, after, xid, now)
    assert changed == {integer_content(int(s, 16)) for s in serials}
    assert await clean_db.fetchval("SELECT count(*) FROM ocsp_pending") == len(serials)


async def test_every_writer_and_statement_is_stamped_and_queued(
        clean_db: asyncpg.Pool, issuer: int, writers: dict[str, str]) -> None:
    entry = "'\\x3003020101'"
    revoke = (f"status = 'revoked', revoked_at = now(), reason = 1, crl_entry = {entry},"
              " change_seq = nextval('cert_change_seq')")
    cases = [
        # A plain UPDATE of many rows, by the admin role.
        ("admin", [f"UPDATE certificates SET {revoke} WHERE issuer_id = {issuer}"
                   " AND serial BETWEEN '\\x5000' AND '\\x5063'"]),
        # A writer forging the stamp (an old transaction, an old time): the trigger restamps.
        ("owner", [f"UPDATE certificates SET {revoke}, change_xid = '3', changed_at ="
                   f" '2001-01-01Z' WHERE issuer_id = {issuer}"
                   " AND serial BETWEEN '\\x5064' AND '\\x5070'"]),
        # Only the stamp's time right, not the transaction: restamped too.
        ("owner", [f"UPDATE certificates SET {revoke}, changed_at = now(), change_xid = '4'"
                   f" WHERE issuer_id = {issuer} AND serial = '\\x5071'"]),
        # New rows inserted revoked (an index.txt import), and one inserted good.
        ("admin", [f"INSERT INTO certificates (issuer_id, serial, not_after, status, revoked_at,"
                   f" crl_entry) SELECT {issuer}, decode(to_hex(x), 'hex'),"
                   f" now() + interval '9 days', 'revoked', now(), {entry}"
                   " FROM generate_series(1048576, 1048600) x",
                   f"INSERT INTO certificates (issuer_id, serial, not_after) VALUES ({issuer},"
                   " '\\x7f0001', now() + interval '9 days')"]),
        # INSERT ... ON CONFLICT DO UPDATE (a re-import that revokes), and two changes of one
        # row in one transaction (one queue row, the newer change_seq).
        ("admin", [f"INSERT INTO certificates (issuer_id, serial, not_after) SELECT {issuer},"
                   " decode(to_hex(x), 'hex'), now() FROM generate_series(20736, 20746) x"
                   f" ON CONFLICT (issuer_id, serial) DO UPDATE SET {revoke}",
                   f"UPDATE certificates SET reason = 4, change_seq = nextval('cert_change_seq')"
                   f" WHERE issuer_id = {issuer} AND serial = '\\x5105'"]),
        # A key change with a new change_seq: the new key is queued.
        ("owner", [f"UPDATE certificates SET serial = '\\x7f0002', {revoke}"
                   f" WHERE issuer_id = {issuer} AND serial = '\\x5080'"]),
        # The publisher's crl_entry repair is no change: nothing stamped, nothing queued (and
        # the statement trigger's INSERT is no privilege the publisher lacks).
        ("publisher", [f"UPDATE certificates SET crl_entry = {entry}"
                       f" WHERE issuer_id = {issuer} AND status = 'revoked'"]),
    ]
    for writer, statements in cases:
        before = await _state(clean_db, issuer)
        queued_before = await clean_db.fetchval("SELECT count(*) FROM ocsp_pending")
        xid, now = await _in_transaction(writers[writer], *statements)
        after = await _state(clean_db, issuer)
        changed = _assert_changed_once(before, after, xid, now)
        assert bool(changed) == (writer != "publisher"), statements
        assert await clean_db.fetchval("SELECT count(*) FROM ocsp_pending") == (
            queued_before + len(changed - {s for s, r in before.items()
                                           if r["queued_seq"] is not None})), statements
    # Deleting certificates dequeues them in the same statement.
    await clean_db.execute(f"DELETE FROM certificates WHERE issuer_id = {issuer}"
                           " AND serial BETWEEN '\\x5000' AND '\\x5009'")
    assert await clean_db.fetchval(
        "SELECT count(*) FROM ocsp_pending p WHERE NOT EXISTS (SELECT 1 FROM certificates c"
        " WHERE c.issuer_id = p.issuer_id AND c.serial = p.serial)") == 0


async def test_presigner_dequeues_a_row_whose_certificate_is_gone(
        clean_db: asyncpg.Pool, issuer: int) -> None:
    async with clean_db.acquire() as conn:
        await admin.revoke(conn, admin.RevokeRequest("trig", 0x5001, Reason.superseded))
        # No foreign key any more (0008): a hand-made row for a certificate never recorded.
        await conn.execute("INSERT INTO ocsp_pending VALUES ($1, '\\x7e', 1, now())", issuer)
    report = await presign_once(clean_db, Settings(presign_processes=1))
    assert report.ok and report.changes == 2
    assert await clean_db.fetchval("SELECT count(*) FROM ocsp_pending") == 0
    assert await clean_db.fetchval(
        "SELECT count(*) FROM ocsp_responses o JOIN certificates c USING (issuer_id, serial)"
        " WHERE c.serial = '\\x5001' AND o.cert_change_seq = c.change_seq") == 2


async def test_dequeue_probes_the_primary_key_whatever_the_statistics(
        clean_db: asyncpg.Pool, issuer: int) -> None:
    """presign_pending_done, as the drain runs it (after presign_pending_done_plan in the same
    transaction), finds the dequeued rows by probes of ocsp_pending's primary key. Left to the
    planner, a queue filled faster than autovacuum analyzes it (a mass revocation) was hashed in
    full for every batch: a seq scan of the whole queue per 2,000 dequeued changes."""
    from revoc.queries import queries

    q = queries()
    queued = 60_000
    async with clean_db.acquire() as conn:
        await conn.execute(
            "INSERT INTO ocsp_pending SELECT $1, int8send(n), n, now()"
            " FROM generate_series(1, $2::bigint) AS n", issuer, queued)
        keys = await conn.fetch("SELECT issuer_id, serial, change_seq FROM ocsp_pending"
                                " ORDER BY changed_at, serial LIMIT 2000")
        args = ([k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys])

        async def plan(set_plan: bool) -> str:
            async with conn.transaction():
                if set_plan:
                    await conn.execute(q.presign_pending_done_plan)
                lines = await conn.fetch("EXPLAIN " + q.presign_pending_done, *args)
                return "\n".join(line[0] for line in lines)

        unguided, guided = await plan(False), await plan(True)
        # The situation the guard is for: without it this queue is scanned whole.
        assert "Seq Scan on ocsp_pending" in unguided, unguided
        assert "Seq Scan on ocsp_pending" not in guided, guided
        assert "ocsp_pending_pkey" in guided, guided
        async with conn.transaction():
            await conn.execute(q.presign_pending_done_plan)
            deleted = await conn.fetch(q.presign_pending_done, *args)
        assert len(deleted) == 2000
        assert await conn.fetchval("SELECT count(*) FROM ocsp_pending") == queued - 2000
        await conn.execute("DELETE FROM ocsp_pending WHERE issuer_id = $1", issuer)
