"""Issue 10, publisher: scopes from what certificates carry, changes published once and decided in
the round, bad rows rebuilt or quarantined, lag and unreflected age.

Each test runs `publish_round` on a real PostgreSQL; CRLs are read back with cryptography and, at
least once per kind of scope, with `openssl crl`.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from cryptography import x509

from crl_publisher.publisher import publish_round
from crl_publisher.scheduler import run_once
from crl_publisher.selfcheck import CrlSelfCheck
from revoc import admin
from revoc.der.asn1 import integer_content
from revoc.der.crl import encode_crl_entry
from revoc.model import Reason
from tests.crl_fixtures import (
    START,
    CrlPki,
    add_leaves,
    clock,
    crl_of,
    register_pki,
    revoke,
    settings_for,
)
from tests.databases import create_migrated, drop


def _serials(crl: x509.CertificateRevocationList) -> list[int]:
    return sorted(r.serial_number for r in crl)


def _openssl_serials(path: Path) -> list[int]:
    """The serials `openssl crl` lists (an oracle we did not write)."""
    out = subprocess.run(["openssl", "crl", "-inform", "DER", "-noout", "-text", "-in",
                          str(path)], capture_output=True, text=True, check=True).stdout
    return sorted(int(s, 16) for s in re.findall(r"Serial Number: ([0-9A-Fa-f]+)", out))


async def _replace_shards(conn: asyncpg.Connection, pki: CrlPki, shards: int) -> None:
    """`revoc issuer add --replace --crl-shards N` for the pki's CA."""
    await admin.add_issuer(conn, admin.IssuerRequest(
        name=pki.name, cert_path=str(pki.directory / f"{pki.ca.name}.pem"),
        key_path=str(pki.directory / f"{pki.ca.name}.key"), crl_shards=shards, replace=True))


# ---------------------------------------------------------------- scopes (point 5)


async def test_sharding_an_issuer_keeps_its_revocations_on_the_issuer_wide_crl(
        clean_db: asyncpg.Pool, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Seen: `issuer add --replace --crl-shards 4` left 2 revoked certificates on no CRL."""
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "grow")
        await add_leaves(conn, pki, range(1, 5))  # unsharded: no shard stored
        await revoke(conn, pki, 1, Reason.keyCompromise, START - timedelta(hours=2))
        await revoke(conn, pki, 2, Reason.superseded, START - timedelta(hours=2))
    settings = settings_for(tmp_path)
    fixed = clock()
    assert (await publish_round(clean_db, settings, clock=fixed)).ok
    async with clean_db.acquire() as conn:
        await _replace_shards(conn, pki, 4)
    fixed.advance(timedelta(days=1))
    caplog.set_level(logging.WARNING, logger="revoc.publish")
    report = await publish_round(clean_db, settings, clock=fixed)
    assert report.ok, report.failures
    assert "on no CRL" not in caplog.text
    names = sorted(p.name for p in report.publications)
    assert names == sorted(["grow.crl", "grow-delta.crl"]
                           + [f"grow/{k}{s}" for k in range(4) for s in (".crl", "-delta.crl")])
    wide = settings.crl_out / "grow.crl"
    assert _serials(crl_of(wide)) == [1, 2] == _openssl_serials(wide)
    assert all(e.oid != x509.IssuingDistributionPoint.oid for e in crl_of(wide).extensions)
    # A certificate added now (shard 3 from its CDP) and revoked: on its shard's CRL and on the
    # issuer-wide CRL, which stays complete (it has no IDP).
    async with clean_db.acquire() as conn:
        sharded = CrlPki(pki.name, pki.root, pki.ca, pki.directory, 4)
        await add_leaves(conn, sharded, [7])
        await revoke(conn, sharded, 7, Reason.keyCompromise, START + timedelta(days=1))
    fixed.advance(timedelta(days=1))
    assert (await publish_round(clean_db, settings, clock=fixed)).ok
    assert _serials(crl_of(wide)) == [1, 2, 7] == _openssl_serials(wide)
    shard3 = settings.crl_out / "grow" / "3.crl"
    assert _serials(crl_of(shard3)) == [7] == _openssl_serials(shard3)


async def test_certificates_without_a_shard_keep_the_issuer_wide_crl_until_they_expire(
        clean_db: asyncpg.Pool, tmp_path: Path) -> None:
    """Good certificates name `{issuer}.crl` too: it must stay fresh until they expire."""
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "keep")
        await add_leaves(conn, pki, [1], not_after=START + timedelta(days=2))
        await _replace_shards(conn, pki, 2)
    settings = settings_for(tmp_path, crl_delta_interval=0)
    fixed = clock()
    report = await publish_round(clean_db, settings, clock=fixed)
    assert sorted(p.shard for p in report.publications) == [-1, 0, 1]
    fixed.advance(timedelta(days=3))  # expired: one more full CRL after expiry, as for entries
    report = await publish_round(clean_db, settings, clock=fixed)
    assert sorted(p.shard for p in report.publications) == [-1, 0, 1]
    fixed.advance(timedelta(days=1))
    report = await publish_round(clean_db, settings, clock=fixed)
    assert sorted(p.shard for p in report.publications) == [0, 1]


async def test_lowering_the_shard_count_keeps_the_shards_certificates_carry(
        clean_db: asyncpg.Pool, tmp_path: Path) -> None:
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "shrink", shards=4)
        await add_leaves(conn, pki, [3, 4, 7])  # shards 3, 0, 3
        await revoke(conn, pki, 7, Reason.keyCompromise, START - timedelta(hours=1))
    settings = settings_for(tmp_path)
    fixed = clock()
    assert (await publish_round(clean_db, settings, clock=fixed)).ok
    async with clean_db.acquire() as conn:
        await _replace_shards(conn, pki, 2)
        await revoke(conn, pki, 3, Reason.superseded, START + timedelta(minutes=1))
    fixed.advance(timedelta(days=1))
    report = await publish_round(clean_db, settings, clock=fixed)
    assert report.ok, report.failures
    assert sorted({p.shard for p in report.publications}) == [0, 1, 3]  # no issuer-wide needed
    shard3 = settings.crl_out / "shrink" / "3.crl"
    assert _serials(crl_of(shard3)) == [3, 7] == _openssl_serials(shard3)
    idp = crl_of(shard3).extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert [n.value for n in idp.value.full_name] == [pki.leaf_url(3)]


# ---------------------------------------------------------------- once per change (point 7)


async def test_a_change_is_published_once_and_only_when_the_database_says_so(
        clean_db: asyncpg.Pool, tmp_path: Path) -> None:
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "once")
        await add_leaves(conn, pki, range(1, 4))
    settings = settings_for(tmp_path, crl_delta_interval=3600)
    fixed = clock()
    assert (await publish_round(clean_db, settings, clock=fixed)).ok
    async with clean_db.acquire() as conn:
        await revoke(conn, pki, 2, Reason.keyCompromise, START + timedelta(seconds=5))
    fixed.advance(timedelta(seconds=10))
    report = await publish_round(clean_db, settings, clock=fixed)
    assert [(p.kind, p.entries) for p in report.publications] == [("delta", 1)]
    assert _serials(crl_of(settings.crl_out / "once-delta.crl")) == [2]
    # A second publisher woken by the same NOTIFY finds it published: nothing to do.
    fixed.advance(timedelta(seconds=10))
    assert (await publish_round(clean_db, settings, clock=fixed)).publications == []


async def test_once_publishes_a_changed_scope_with_or_without_deltas(
        clean_db: asyncpg.Pool, tmp_path: Path) -> None:
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "br1")
        await add_leaves(conn, pki, range(1, 4))
    settings = settings_for(tmp_path, crl_delta_interval=0, crl_delta_on_change=False)
    fixed = clock()
    assert (await run_once(clean_db, settings, clock=fixed)).ok
    first = crl_of(settings.crl_out / "br1.crl")
    async with clean_db.acquire() as conn:
        await revoke(conn, pki, 3, Reason.keyCompromise, START + timedelta(seconds=5))
    fixed.advance(timedelta(minutes=1))
    report = await run_once(clean_db, settings, clock=fixed)
    assert [p.kind for p in report.publications] == ["full"]  # deltas off: a new full CRL
    again = settings.crl_out / "br1.crl"
    assert _serials(crl_of(again)) == [3] == _openssl_serials(again)
    number = crl_of(again).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number > first.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    fixed.advance(timedelta(minutes=1))
    assert (await run_once(clean_db, settings, clock=fixed)).publications == []


# ---------------------------------------------------------------- bad rows (point 2)


async def test_corrupt_stored_entry_is_reencoded_from_its_columns(
        clean_db: asyncpg.Pool, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "rot")
        await add_leaves(conn, pki, range(1, 5))
        await revoke(conn, pki, 1, Reason.keyCompromise, START - timedelta(hours=1))
        await revoke(conn, pki, 3, Reason.superseded, START - timedelta(hours=1))
        # Cached entry bytes gone bad (a bit flip, a bad migration): one is truncated garbage.
        await conn.execute("UPDATE certificates SET crl_entry = '\\x3005020103ff'::bytea "
                           "WHERE serial = '\\x03'::bytea")
    settings = settings_for(tmp_path)
    caplog.set_level(logging.WARNING, logger="revoc.publish")
    report = await publish_round(clean_db, settings, clock=clock())
    assert report.ok, report.failures
    assert report.rows_reencoded == 1 and report.rows_skipped == 0
    full = settings.crl_out / "rot.crl"
    assert _serials(crl_of(full)) == [1, 3] == _openssl_serials(full)
    entry = crl_of(full).get_revoked_certificate_by_serial_number(3)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason \
        == x509.ReasonFlags.superseded
    assert "rot.crl" in caplog.text and "re-encoded" in caplog.text and "03" in caplog.text
    # The stored entry was repaired from the columns: the next full CRL is built fast, silently.
    async with clean_db.acquire() as conn:
        row = await conn.fetchrow("SELECT revoked_at, crl_entry FROM certificates "
                                  "WHERE serial = '\\x03'::bytea")
    assert bytes(row["crl_entry"]) == encode_crl_entry(3, row["revoked_at"], Reason.superseded)
    caplog.clear()
    repaired = clock()
    repaired.advance(timedelta(days=1))
    report = await publish_round(clean_db, settings, clock=repaired)
    assert report.ok and report.rows_reencoded == 0 and "re-encoded" not in caplog.text
    assert _serials(crl_of(full)) == [1, 3]
    # In a delta too.
    async with clean_db.acquire() as conn:
        await revoke(conn, pki, 4, Reason.keyCompromise, START + timedelta(minutes=1))
        await conn.execute("UPDATE certificates SET crl_entry = '\\x00'::bytea "
                           "WHERE serial = '\\x04'::bytea")
    repaired.advance(timedelta(minutes=2))
    # The full CRL on change waits for its delay here, so this round is the delta alone.
    report = await publish_round(clean_db, settings, clock=repaired, full_on_change_delay=3600)
    assert report.ok and report.rows_reencoded == 1
    assert [p.kind for p in report.publications] == ["delta"]
    assert _serials(crl_of(settings.crl_out / "rot-delta.crl")) == [4]


@pytest_asyncio.fixture(loop_scope="session")
async def own_db(server_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A database of this test's own, whose constraints it may drop."""
    dsn = await create_migrated(server_url, "revoc_test_pub")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=6)
    try:
        yield pool
    finally:
        await pool.close()
        await drop(server_url, dsn)


async def _insert_raw(conn: asyncpg.Connection, issuer_id: int, serial: int, revoked_at: str,
                      entry: bytes | None) -> None:
    await conn.execute(
        "INSERT INTO certificates (issuer_id, serial, not_after, status, revoked_at, reason, "
        "crl_entry) VALUES ($1, $2, '2034-01-01Z', 'revoked', $3::text::timestamptz, 1, $4)",
        issuer_id, integer_content(serial), revoked_at, entry)


async def test_unencodable_rows_are_quarantined_and_the_rest_published(
        own_db: asyncpg.Pool, tmp_path: Path) -> None:
    async with own_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "odd")
        await add_leaves(conn, pki, range(1, 4))
        await revoke(conn, pki, 1, Reason.keyCompromise, START - timedelta(hours=1))
        issuer_id = await conn.fetchval("SELECT id FROM issuers WHERE name = 'odd'")
        # What the schema now refuses, as rows written before it (or by a bug) may be.
        await conn.execute("ALTER TABLE certificates DROP CONSTRAINT certificates_dates_valid")
        await conn.execute("ALTER TABLE certificates DROP CONSTRAINT certificates_check1")
        await _insert_raw(conn, issuer_id, 0x41, "-infinity", b"\x30\x03garbage")
        await _insert_raw(conn, issuer_id, 0x42, "12000-01-01Z", None)
        # Columns unusable but the stored entry is sound: it stays listed.
        when = datetime(2020, 1, 1, tzinfo=UTC)
        await _insert_raw(conn, issuer_id, 0x43, "infinity",
                          encode_crl_entry(0x43, when, Reason.keyCompromise))
    settings = settings_for(tmp_path)
    fixed = clock()
    report = await publish_round(own_db, settings, clock=fixed)
    assert report.ok, report.failures
    assert report.rows_skipped == 2
    full = settings.crl_out / "odd.crl"
    assert _serials(crl_of(full)) == [1, 0x43] == _openssl_serials(full)
    async with own_db.acquire() as conn:
        rows = await conn.fetch("SELECT serial, error FROM quarantine WHERE kind = 'publish' "
                                "ORDER BY serial")
        assert [bytes(r["serial"]) for r in rows] == [b"\x41", b"\x42"]
        assert "-infinity" in rows[0]["error"] and "12000" in rows[1]["error"]
        # Fixed by a new status change: it encodes again and leaves the quarantine.
        await conn.execute("UPDATE certificates SET revoked_at = '2021-01-01Z', "
                           "change_seq = nextval('cert_change_seq') WHERE serial = '\\x41'")
    fixed.advance(timedelta(days=1))
    report = await publish_round(own_db, settings, clock=fixed)
    assert report.ok and report.rows_skipped == 1
    assert _serials(crl_of(full)) == [1, 0x41, 0x43]
    async with own_db.acquire() as conn:
        left = await conn.fetch("SELECT serial FROM quarantine WHERE kind = 'publish'")
        assert [bytes(r["serial"]) for r in left] == [b"\x42"]


async def test_an_unwritable_out_directory_does_not_stop_publication(
        clean_db: asyncpg.Pool, tmp_path: Path) -> None:
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "nodir")
        await add_leaves(conn, pki, [1])
        await revoke(conn, pki, 1, Reason.keyCompromise, START - timedelta(hours=1))
    settings = settings_for(tmp_path)
    settings.crl_out.parent.mkdir(parents=True, exist_ok=True)
    settings.crl_out.write_bytes(b"a file where the directory should be")
    report = await publish_round(clean_db, settings, clock=clock())
    assert not report.ok and report.failures == {}
    assert any("nodir.crl" in e for e in report.file_errors)
    assert [p.name for p in report.publications] == ["nodir.crl", "nodir-delta.crl"]
    async with clean_db.acquire() as conn:  # stored, so responders serve it
        der = await conn.fetchval("SELECT der FROM crls WHERE kind = 'full'")
    assert _serials(x509.load_der_x509_crl(bytes(der))) == [1]


# ---------------------------------------------------------------- lag and age (point 9)


async def test_lag_of_published_changes_and_age_of_unreflected_ones(
        clean_db: asyncpg.Pool, tmp_path: Path) -> None:
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "lag", shards=2)
        await add_leaves(conn, pki, range(1, 5))
    settings = settings_for(tmp_path, crl_delta_interval=3600)
    fixed = clock()
    report = await publish_round(clean_db, settings, clock=fixed)
    assert report.lags == [] and report.oldest_unreflected_seconds == 0.0
    async with clean_db.acquire() as conn:
        await revoke(conn, pki, 1, Reason.keyCompromise, START)
        await revoke(conn, pki, 2, Reason.keyCompromise, START)
    fixed.advance(timedelta(seconds=30))
    # Not publishing changes (continuous mode without crl_delta_on_change): the age shows.
    report = await publish_round(clean_db, settings, clock=fixed, publish_changes=False)
    assert report.publications == [] and report.lags == []
    age = report.oldest_unreflected_seconds
    assert age > 0
    report = await publish_round(clean_db, settings, clock=fixed)
    assert sorted(p.name for p in report.publications) == ["lag/0-delta.crl", "lag/1-delta.crl"]
    assert sum(n for _, n in report.lags) == 2  # one per change, in its own shard's scope
    # The oldest change's lag, measured later (at publication), is at least its age before; a
    # later change's lag may be smaller (`all` failed whenever this round took less time than
    # separated the two revocations).
    assert max(seconds for seconds, _ in report.lags) >= age
    assert report.oldest_unreflected_seconds == 0.0


# ---------------------------------------------------------------- self-check (point 9)


async def test_self_check_finds_changes_missing_from_the_crls_that_claim_them(
        clean_db: asyncpg.Pool, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "audit", shards=2)
        await add_leaves(conn, pki, range(1, 7))
        for serial in (1, 2, 3):
            await revoke(conn, pki, serial, Reason.keyCompromise, START - timedelta(hours=1))
    settings = settings_for(tmp_path)
    fixed = clock()
    assert (await publish_round(clean_db, settings, clock=fixed)).ok
    async with clean_db.acquire() as conn:
        await revoke(conn, pki, 4, Reason.superseded, START + timedelta(minutes=1))
    fixed.advance(timedelta(minutes=1))
    assert (await publish_round(clean_db, settings, clock=fixed)).ok  # 4 is on the delta
    check = CrlSelfCheck()
    async with clean_db.acquire() as conn:
        assert await check.run(conn) == []
        # Writers that bypass the rules, past the triggers (through them each change would take
        # a new change_seq, migration 0010): a reason changed without a new change_seq, and a
        # revocation given a change_seq below what the CRLs already reflect.
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute("UPDATE certificates SET reason = 4 WHERE serial = '\\x02'")
        await revoke(conn, pki, 5, Reason.keyCompromise, START + timedelta(minutes=2))
        async with conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute("UPDATE certificates SET change_seq = 1 WHERE serial = '\\x05'")
        caplog.set_level(logging.ERROR, logger="revoc.publish")
        findings = await check.run(conn)
        assert len(findings) == 2, findings
        assert any("serial 02" in f and "reason keyCompromise, the database superseded" in f
                   for f in findings)
        assert any("serial 05 is revoked" in f and "not on audit/1.crl" in f for f in findings)
        assert caplog.text.count("CRL self-check") == 2
        caplog.clear()
        assert len(await check.run(conn)) == 2 and "CRL self-check" not in caplog.text  # once
