"""`revoc publish` as real OS processes: concurrent --once runs, and kill -9 mid-round."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from cryptography import x509

from revoc.der.asn1 import integer_content
from revoc.der.crl import encode_crl_entry
from revoc.model import Reason
from tests.crl_fixtures import PUBLIC_URL, add_leaves, register_pki, revoke


def _env(database_url: str, out: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"REVOC_DATABASE_URL": database_url, "REVOC_PUBLIC_URL": PUBLIC_URL,
                "REVOC_CRL_OUT": str(out), "REVOC_LOG_LEVEL": "WARNING"})
    return env


def _publish(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "revoc.cli", "publish", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def test_two_publishers_at_once_never_share_or_reverse_numbers(
        clean_db: asyncpg.Pool, database_url: str, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    async with clean_db.acquire() as conn:
        plain = await register_pki(conn, tmp_path / "a", "conc")
        sharded = await register_pki(conn, tmp_path / "b", "concs", shards=2)
        await add_leaves(conn, plain, range(1, 4))
        await add_leaves(conn, sharded, range(1, 4))
        await revoke(conn, plain, 1, Reason.keyCompromise, now - timedelta(minutes=5))
        await revoke(conn, sharded, 2, Reason.keyCompromise, now - timedelta(minutes=5))
    env = _env(database_url, tmp_path / "out")
    for _ in range(3):
        processes = [_publish(env, "--once", "--force-full") for _ in range(2)]
        for process in processes:
            _out, err = process.communicate(timeout=120)
            assert process.returncode == 0, err
    async with clean_db.acquire() as conn:
        rows = await conn.fetch("SELECT issuer_id, shard, kind, number, base_number FROM crls "
                                "ORDER BY id")
    assert len(rows) == 6 * 2 * 3  # 3 scopes x (full + delta) x 6 rounds
    by_scope: dict[tuple[int, int], list[asyncpg.Record]] = {}
    for row in rows:
        by_scope.setdefault((row["issuer_id"], row["shard"]), []).append(row)
    for scope_rows in by_scope.values():
        for kind in ("full", "delta"):
            numbers = [r["number"] for r in scope_rows if r["kind"] == kind]
            assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers), numbers
        # In commit order the sequence never goes back; a delta may only repeat the number of
        # the full CRL it was issued with (RFC 5280 §5.2.3).
        for previous, current in itertools.pairwise(scope_rows):
            if current["kind"] == "delta" and previous["kind"] == "full" \
                    and current["number"] == previous["number"]:
                continue
            assert current["number"] > previous["number"]


async def _bulk_revoked(conn: asyncpg.Connection, issuer_id: int, count: int) -> None:
    when = datetime(2026, 1, 1, tzinfo=UTC)
    records = []
    for i in range(count):
        serial = 0x7000_0000 + i
        entry = encode_crl_entry(serial, when, Reason.superseded)
        records.append((issuer_id, integer_content(serial), datetime(2030, 1, 1, tzinfo=UTC),
                        "revoked", when, int(Reason.superseded), entry))
    await conn.copy_records_to_table(
        "certificates", records=records,
        columns=["issuer_id", "serial", "not_after", "status", "revoked_at", "reason",
                 "crl_entry"])


def _published(rows: list[asyncpg.Record]) -> set[bytes]:
    return {bytes(r["sha256"]) for r in rows}


@pytest.mark.slow
async def test_kill_9_mid_round_leaves_last_good_crls(clean_db: asyncpg.Pool, database_url: str,
                                                      tmp_path: Path) -> None:
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "kill", shards=2)
        issuer_id = await conn.fetchval("SELECT id FROM issuers WHERE name = 'kill'")
        await _bulk_revoked(conn, issuer_id, 150_000)
        await conn.execute("UPDATE certificates SET shard = get_byte(serial, length(serial) - 1)"
                           " % 2 WHERE issuer_id = $1", issuer_id)
    out = tmp_path / "out"
    env = _env(database_url, out)
    first = _publish(env, "--once")
    assert first.wait(timeout=120) == 0, first.stderr.read() if first.stderr else ""
    ca_key = pki.ca.cert.public_key()
    for delay in (0.6, 1.0, 1.4, 1.8, 2.4):
        process = _publish(env, "--force-full")
        await asyncio.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        async with clean_db.acquire() as conn:
            stored = _published(await conn.fetch("SELECT sha256 FROM crls"))
        files = sorted(out.rglob("*.crl"))
        assert len(files) == 4
        for path in files:
            data = path.read_bytes()
            crl = x509.load_der_x509_crl(data)  # parses: never a torn file
            assert crl.is_signature_valid(ca_key)  # type: ignore[arg-type]
            assert hashlib.sha256(data).digest() in stored  # one the database published
    repair = _publish(env, "--once")
    _out, err = repair.communicate(timeout=120)
    assert repair.returncode == 0, err
    async with clean_db.acquire() as conn:
        latest = await conn.fetch("SELECT DISTINCT ON (shard, kind) shard, kind, sha256 FROM crls "
                                  "ORDER BY shard, kind, number DESC")
    for row in latest:
        suffix = "-delta.crl" if row["kind"] == "delta" else ".crl"
        path = out / "kill" / f"{row['shard']}{suffix}"
        assert hashlib.sha256(path.read_bytes()).digest() == bytes(row["sha256"])
    assert not list(out.rglob(".*.tmp-*"))  # the killed writers' temp files are cleaned up


async def test_once_exit_status_and_reason(clean_db: asyncpg.Pool, database_url: str,
                                           tmp_path: Path) -> None:
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "gone")
    (pki.directory / f"{pki.ca.name}.key").unlink()
    process = _publish(_env(database_url, tmp_path / "out"), "--once")
    _out, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "issuer gone" in err and "cannot read key file" in err
