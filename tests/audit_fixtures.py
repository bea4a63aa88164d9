"""Helpers shared by the audit and status tests (no tests here): a real state made with the admin
functions, the presigner and the publisher, and the `revoc` CLI run in-process."""

from __future__ import annotations

import asyncio
import inspect
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from crl_publisher.publisher import publish_round
from responder.presign_queue import presign_once
from revoc.cli import main
from revoc.der.asn1 import integer_content
from revoc.model import Reason
from revoc.settings import Settings
from tests.crl_fixtures import CrlPki, add_leaves, register_pki, revoke, settings_for

# The state every audit test starts from: issuer "aud", leaves 1..6, three of them revoked.
REVOKED = {2: Reason.keyCompromise, 3: Reason.certificateHold, 4: Reason.unspecified}


@dataclass
class State:
    pool: asyncpg.Pool
    pki: CrlPki
    settings: Settings
    dsn: str
    issuer_id: int

    async def revoke(self, serial: int, reason: Reason = Reason.superseded) -> None:
        async with self.pool.acquire() as conn:
            await revoke(conn, self.pki, serial, reason, datetime.now(UTC) - timedelta(hours=1))

    async def presign(self) -> None:
        report = await presign_once(self.pool, self.settings)
        assert report.ok, report

    async def publish(self, *, changes: bool = False) -> None:
        """One publishing round; `changes`: also publish the changes since the last CRLs now
        (a delta), not only what is due by the intervals."""
        # The issue 10 publisher decides that itself (`publish_changes`); before it, the
        # caller forced deltas.
        option = ("publish_changes" if "publish_changes" in
                  inspect.signature(publish_round).parameters else "force_delta")
        report = await publish_round(self.pool, self.settings, **{option: changes})
        assert report.ok, report.failures

    async def settle(self) -> None:
        """Every change so far happened an hour ago: beyond any grace period."""
        await self.pool.execute(
            "UPDATE certificates SET changed_at = changed_at - interval '1 hour'"
            " WHERE changed_at IS NOT NULL")

    async def execute(self, sql: str, *args: object) -> str:
        result: str = await self.pool.execute(sql, *args)
        return result

    async def execute_without_triggers(self, sql: str, *args: object) -> str:
        """A writer that gets past the stamping triggers (a superuser with
        session_replication_role = replica): what only an audit can still catch."""
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SET LOCAL session_replication_role = replica")
            result: str = await conn.execute(sql, *args)
        return result


def serial_bytes(serial: int) -> bytes:
    return integer_content(serial)


async def make_state(pool: asyncpg.Pool, tmp_path: Path, database_url: str, *,
                     name: str = "aud", shards: int = 0) -> State:
    """Issuer `name`, leaves 1..6, REVOKED revoked an hour ago, presigned and published."""
    async with pool.acquire() as conn:
        pki = await register_pki(conn, tmp_path / name, name, shards=shards)
        await add_leaves(conn, pki, range(1, 7))
        for serial, reason in REVOKED.items():
            await revoke(conn, pki, serial, reason, datetime.now(UTC) - timedelta(hours=1))
        issuer_id = await conn.fetchval("SELECT id FROM issuers WHERE name = $1", name)
    state = State(pool, pki, settings_for(tmp_path, presign_processes=1), database_url,
                  issuer_id)
    await state.presign()
    await state.publish()
    await state.settle()
    return state


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`revoc ARGV` in a thread (it runs its own event loop): exit status, stdout, stderr."""
    capsys.readouterr()

    def call() -> int:
        try:
            return main(list(argv))
        except SystemExit as exc:
            return int(exc.code or 0)

    code = await asyncio.to_thread(call)
    out, err = capsys.readouterr()
    return code, out, err


def finding_heads(out: str) -> list[tuple[str, str]]:
    """(kind, subject) of each finding line: the stable part before the details."""
    heads = []
    for line in out.splitlines():
        kind, subject, _detail = line.split(": ", 2)
        heads.append((kind, subject))
    return heads
