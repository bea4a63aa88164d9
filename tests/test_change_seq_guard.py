"""The one rule against hand-written SQL (migration 0010): a status change that does not move
change_seq forward (an operator's `UPDATE certificates SET status = 'revoked', ...` without
`change_seq = nextval(...)`, or one that sets an older value) still takes a fresh change_seq, is
stamped and queued, and the `good` signed before it is never served again (ARCHITECTURE
invariant 1; OCSP-STATUS-1). The publisher's crl_entry repair is still no change."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from responder.sources import PENDING, ResponseStore
from revoc.der.asn1 import integer_content
from revoc.model import HashAlgorithm
from tests.world import GOOD, LATER, REVOKED, World, presign, setup_world

ENTRY = "'\\x3003020101'"  # any DER: the publisher re-encodes entries from the columns


@pytest.fixture
async def world(clean_db: asyncpg.Pool, database_url: str, tmp_path: Path) -> World:
    built = await setup_world(clean_db, database_url, tmp_path)
    await presign(built)
    return built


async def _row(pool: asyncpg.Pool, serial: int) -> asyncpg.Record:
    row = await pool.fetchrow(
        "SELECT c.status, c.change_seq, c.change_xid::text::bigint AS xid, c.changed_at,"
        " p.change_seq AS queued FROM certificates c LEFT JOIN ocsp_pending p"
        " USING (issuer_id, serial) WHERE c.serial = $1", integer_content(serial))
    assert row is not None
    return row


async def _served(pool: asyncpg.Pool, serial: int) -> object:
    store = ResponseStore(pool, 10.0)
    try:
        issuer_id = await pool.fetchval("SELECT issuer_id FROM certificates WHERE serial = $1",
                                        integer_content(serial))
        return await store.response(issuer_id, integer_content(serial),
                                    HashAlgorithm.SHA1.value)
    finally:
        await store.close()


async def _run(pool: asyncpg.Pool, sql: str) -> tuple[int, object]:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(sql)
        xid, now = await conn.fetchrow("SELECT pg_current_xact_id()::text::bigint, now()")
    return int(xid), now


@pytest.mark.parametrize("change", [
    # revoke, forgetting change_seq
    f"status = 'revoked', revoked_at = now(), reason = 1, crl_entry = {ENTRY}",
    # revoke, setting an older change_seq
    f"status = 'revoked', revoked_at = now(), reason = 1, crl_entry = {ENTRY},"
    " change_seq = change_seq - 1",
])
async def test_hand_written_revocation_is_never_answered_good(world: World, change: str) -> None:
    before = await _row(world.pool, GOOD)
    served = await _served(world.pool, GOOD)
    assert served is not None and served is not PENDING  # a good response is stored
    xid, now = await _run(world.pool, f"UPDATE certificates SET {change}"
                                      f" WHERE serial = '\\x{GOOD:04x}'")
    after = await _row(world.pool, GOOD)
    assert after["status"] == "revoked"
    assert after["change_seq"] > before["change_seq"]
    assert (after["xid"], after["changed_at"]) == (xid, now)
    assert after["queued"] == after["change_seq"]
    assert await _served(world.pool, GOOD) is PENDING  # the old `good` is unservable
    await presign(world)
    answer = await _served(world.pool, GOOD)
    assert answer is not None and answer is not PENDING
    assert b"\xa1" in answer[0]  # revokedInfo [1] now (checked by openssl elsewhere)


@pytest.mark.parametrize("serial, change", [
    (REVOKED, "reason = 4"),  # a reason change (keyCompromise -> superseded)
    (REVOKED, "invalidity_date = now() - interval '2 days'"),
    (LATER, "change_seq = change_seq - 5"),  # only change_seq, moved backwards
])
async def test_other_changes_without_a_new_change_seq_take_one(world: World, serial: int,
                                                               change: str) -> None:
    before = await _row(world.pool, serial)
    xid, now = await _run(world.pool, f"UPDATE certificates SET {change}"
                                      f" WHERE serial = '\\x{serial:04x}'")
    after = await _row(world.pool, serial)
    assert after["change_seq"] > before["change_seq"]
    assert (after["xid"], after["changed_at"]) == (xid, now)
    assert after["queued"] == after["change_seq"]
    assert await _served(world.pool, serial) is PENDING


async def test_crl_entry_repair_and_untouched_rows_are_no_change(world: World) -> None:
    before = await _row(world.pool, REVOKED)
    await _run(world.pool, f"UPDATE certificates SET crl_entry = {ENTRY}"
                           f" WHERE serial = '\\x{REVOKED:04x}'")
    await _run(world.pool, "UPDATE certificates SET crl_url = crl_url")
    after = await _row(world.pool, REVOKED)
    assert after["change_seq"] == before["change_seq"]
    assert after["queued"] is None
    assert await _served(world.pool, REVOKED) is not PENDING
