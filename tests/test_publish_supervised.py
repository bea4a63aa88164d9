"""Issue 10, publisher: `revoc publish` keeps going when its connections die or PostgreSQL
restarts, and two publishers publish each change once.

No fixed sleeps: every wait polls a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cryptography import x509

from crl_publisher import scheduler
from crl_publisher.scheduler import run_forever
from revoc.db import create_pool
from revoc.model import Reason
from revoc.workers import Heartbeat
from tests.crl_fixtures import PUBLIC_URL, add_leaves, register_pki, revoke, settings_for
from tests.pgcluster import PgCluster

DEADLINE = 60.0  # generous: the machine may be busy; not a speed check


async def _until(condition: Callable[[], Awaitable[bool] | bool], what: str,
                 seconds: float = DEADLINE) -> None:
    deadline = time.monotonic() + seconds
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _serials_in(path: Path) -> set[int]:
    try:
        return {r.serial_number for r in x509.load_der_x509_crl(path.read_bytes())}
    except (FileNotFoundError, ValueError):
        return set()


async def _revoke_now(dsn: str, pki: Any, serial: int) -> None:
    """On a connection of its own: the pools around may hold connections just terminated."""
    conn = await asyncpg.connect(dsn)
    try:
        await revoke(conn, pki, serial, Reason.keyCompromise,
                     datetime.now(UTC) - timedelta(seconds=5))
    finally:
        await conn.close()


def _start_publisher(env: dict[str, str], stderr: Path | None = None) -> subprocess.Popen[str]:
    if stderr is None:
        return subprocess.Popen([sys.executable, "-m", "revoc.cli", "publish"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with stderr.open("w") as log:
        return subprocess.Popen([sys.executable, "-m", "revoc.cli", "publish"], env=env,
                                stdout=subprocess.DEVNULL, stderr=log, text=True)


async def test_publish_process_survives_terminated_backends(
        clean_db: asyncpg.Pool, database_url: str, tmp_path: Path) -> None:
    """Seen: after a lost connection `revoc publish` exited within a minute with InterfaceError
    (is_closed() on a connection asyncpg had handed back to the pool)."""
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "sup")
        await add_leaves(conn, pki, range(1, 4))
    out = tmp_path / "out"
    env = dict(os.environ, REVOC_DATABASE_URL=database_url, REVOC_PUBLIC_URL=PUBLIC_URL,
               REVOC_CRL_OUT=str(out), REVOC_LOG_LEVEL="WARNING", REVOC_CRL_DELTA_INTERVAL="1h")
    process = _start_publisher(env)
    try:
        delta = out / "sup-delta.crl"
        await _until(lambda: delta.exists() or process.poll() is not None, "the first round")
        assert process.poll() is None
        fulls = await clean_db.fetchval("SELECT count(*) FROM crls WHERE kind = 'full'")
        admin = await asyncpg.connect(database_url)
        try:
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        finally:
            await admin.close()
        assert killed >= 2  # at least the publisher's LISTEN connection and its pool's
        await _revoke_now(database_url, pki, 2)
        await _until(lambda: 2 in _serials_in(delta) or process.poll() is not None,
                     "the revocation on a delta CRL")
        assert process.poll() is None, process.communicate()[1]
        # Caught up by asking which scopes changed: a delta, not a flush of full CRLs.
        assert await clean_db.fetchval("SELECT count(*) FROM crls WHERE kind = 'full'") == fulls

        async def lag_recorded() -> bool:
            # The heartbeat follows the round that wrote the file.
            row = await clean_db.fetchrow("SELECT * FROM workers WHERE kind = 'publish' "
                                          "AND pid = $1", process.pid)
            if row is None:
                return False
            assert row["last_ok"] is not None and row["stopped_at"] is None
            lag = json.loads(row["stats"])["histograms"].get("crl_lag_seconds")
            return lag is not None and sum(lag["counts"]) >= 1

        await _until(lag_recorded, "the commit-to-CRL lag in the heartbeat")
        process.send_signal(signal.SIGTERM)
        _out, err = process.communicate(timeout=30)
        assert process.returncode == 128 + signal.SIGTERM, err  # INTERFACE: 143
        assert "Traceback" not in err
        async with clean_db.acquire() as conn:
            stopped = await conn.fetchval("SELECT stopped_at FROM workers WHERE kind = 'publish' "
                                          "AND pid = $1", process.pid)
        assert stopped is not None
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)


async def test_publisher_keeps_going_across_a_postgres_restart(
        own_cluster: PgCluster, tmp_path: Path) -> None:
    pool = await create_pool(own_cluster.dsn, min_size=1, max_size=6)
    stop = asyncio.Event()
    heartbeat = Heartbeat("publish")
    task: asyncio.Task[None] | None = None
    try:
        async with pool.acquire() as conn:
            pki = await register_pki(conn, tmp_path / "pki", "restart")
            await add_leaves(conn, pki, range(1, 4))
        settings = settings_for(tmp_path, crl_delta_interval=3600, crl_delta_on_change=True)
        task = asyncio.create_task(run_forever(pool, settings, stop=stop, heartbeat=heartbeat))
        delta = settings.crl_out / "restart-delta.crl"
        await _until(lambda: delta.exists() or task.done(), "the first round")
        await asyncio.to_thread(own_cluster.stop)
        await _until(lambda: heartbeat.counters.get("rounds_failed", 0) >= 1 or task.done(),
                     "a round failing while PostgreSQL is down")
        assert not task.done()
        await asyncio.to_thread(own_cluster.start)
        await _revoke_now(own_cluster.dsn, pki, 3)
        await _until(lambda: 3 in _serials_in(delta) or task.done(),
                     "the revocation on a delta CRL after the restart")
        assert not task.done()
        stop.set()
        await asyncio.wait_for(task, timeout=30)
        row = await pool.fetchrow("SELECT * FROM workers WHERE kind = 'publish' AND pid = $1",
                                  heartbeat.pid)
        assert row["stopped_at"] is not None and row["last_ok"] is not None
        assert row["last_error"]  # the outage was recorded
    finally:
        stop.set()
        if task is not None and not task.done():
            task.cancel()
        await pool.close()


async def test_publish_waits_for_a_database_that_is_not_up_yet(
        own_cluster: PgCluster, tmp_path: Path) -> None:
    conn = await asyncpg.connect(own_cluster.dsn)
    try:
        pki = await register_pki(conn, tmp_path / "pki", "late")
        await add_leaves(conn, pki, [1])
    finally:
        await conn.close()
    await asyncio.to_thread(own_cluster.stop)
    out, errors = tmp_path / "out", tmp_path / "stderr.txt"
    env = dict(os.environ, REVOC_DATABASE_URL=own_cluster.dsn, REVOC_PUBLIC_URL=PUBLIC_URL,
               REVOC_CRL_OUT=str(out), REVOC_LOG_LEVEL="WARNING")
    process = _start_publisher(env, errors)
    try:
        await _until(lambda: "database unreachable" in errors.read_text()
                     or process.poll() is not None, "the publisher to find no database")
        assert process.poll() is None, errors.read_text()
        await asyncio.to_thread(own_cluster.start)
        await _until(lambda: (out / "late.crl").exists() or process.poll() is not None,
                     "the first CRL once PostgreSQL is up")
        assert process.poll() is None, errors.read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 128 + signal.SIGTERM  # INTERFACE: 143
        assert "Traceback" not in errors.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


class _Beats(Heartbeat):
    """A heartbeat that remembers when each round ended (beat() follows every round)."""

    def __init__(self, pid: int) -> None:
        super().__init__("publish", pid=pid)
        self.times: list[float] = []

    async def beat(self, target: asyncpg.Pool | asyncpg.Connection, *, ok: bool = False,
                   error: str | None = None) -> bool:
        self.times.append(time.monotonic())
        return await super().beat(target, ok=ok, error=error)

    def rounds_started_after(self, moment: float) -> int:
        """Rounds that began after `moment`: those ending after a round that ended after it."""
        return max(0, sum(1 for t in self.times if t > moment) - 1)


async def test_two_publishers_publish_each_change_once(
        clean_db: asyncpg.Pool, database_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler, "HEARTBEAT_SECONDS", 1.0)  # idle rounds: quick to observe
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "race")
        await add_leaves(conn, pki, range(1, 41))
    settings = settings_for(tmp_path, crl_delta_interval=3600, crl_delta_on_change=True)
    pools = [await create_pool(database_url, min_size=1, max_size=6) for _ in range(2)]
    beats = [_Beats(900_001), _Beats(900_002)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run_forever(p, settings, stop=stop, heartbeat=b))
             for p, b in zip(pools, beats, strict=True)]
    delta = settings.crl_out / "race-delta.crl"

    async def settled(serials: set[int], since: float) -> None:
        await _until(lambda: (serials <= _serials_in(delta)
                              and all(b.rounds_started_after(since) >= 1 for b in beats))
                     or any(t.done() for t in tasks), f"serials {sorted(serials)} published")
        assert not any(t.done() for t in tasks)

    async def deltas() -> int:
        return int(await clean_db.fetchval("SELECT count(*) FROM crls WHERE kind = 'delta'"))

    try:
        await _until(lambda: all(b.times for b in beats), "both first rounds")
        # One change, both publishers notified: one delta.
        before = await deltas()
        await _revoke_now(database_url, pki, 1)
        await settled({1}, time.monotonic())
        assert await deltas() == before + 1
        # A burst from three writers at once, interleaved with both publishers' rounds.
        async def writer(serials: range) -> None:
            for serial in serials:
                await _revoke_now(database_url, pki, serial)

        await asyncio.gather(writer(range(2, 15)), writer(range(15, 28)), writer(range(28, 41)))
        await settled(set(range(1, 41)), time.monotonic())
    finally:
        stop.set()
        await asyncio.wait(tasks, timeout=30)
        for pool in pools:
            await pool.close()
    assert all(b.gauges.get("crl_selfcheck_findings") == 0 for b in beats)
    rows = await clean_db.fetch("SELECT kind, number, max_change_seq, der FROM crls ORDER BY id")
    seen: set[tuple[str, int, frozenset[int]]] = set()
    for row in rows:
        content = frozenset(r.serial_number for r in x509.load_der_x509_crl(bytes(row["der"])))
        key = (row["kind"], row["max_change_seq"], content)
        assert key not in seen, f"published twice: {row['kind']} at {row['max_change_seq']}"
        seen.add(key)
    # In commit order numbers only go up; a delta repeats only its full CRL's number (§5.2.3).
    for previous, current in itertools.pairwise(rows):
        if (previous["kind"], current["kind"]) == ("full", "delta") \
                and current["number"] == previous["number"]:
            continue
        assert current["number"] > previous["number"]


async def test_an_unexpected_exception_ends_a_round_not_the_loop(
        clean_db: asyncpg.Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in a round (an exception no handler expects) cannot be caused from outside: it is
    injected once; the loop logs it, records it in the heartbeat, backs off and goes on."""
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "bug")
        await add_leaves(conn, pki, [1])
    real = scheduler.publish_round
    calls = 0

    async def flaky(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")
        return await real(*args, **kwargs)

    monkeypatch.setattr(scheduler, "publish_round", flaky)
    settings = settings_for(tmp_path, crl_delta_interval=3600)
    heartbeat = Heartbeat("publish", pid=900_003)
    stop = asyncio.Event()
    task = asyncio.create_task(run_forever(clean_db, settings, stop=stop, heartbeat=heartbeat))
    try:
        await _until(lambda: (settings.crl_out / "bug.crl").exists() or task.done(),
                     "a round after the failed one")
        assert not task.done() and heartbeat.counters["rounds_failed"] == 1
        row = await clean_db.fetchrow("SELECT last_ok, last_error FROM workers "
                                      "WHERE kind = 'publish' AND pid = 900003")
        assert row["last_error"] == "RuntimeError: boom"
        await _until(lambda: heartbeat.counters.get("rounds", 0) >= 1, "the round's heartbeat")
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=30)
    assert await clean_db.fetchval("SELECT stopped_at IS NOT NULL AND last_ok IS NOT NULL "
                                   "FROM workers WHERE pid = 900003")


async def test_heartbeat_write_on_a_connection_in_a_bad_state_is_no_crash() -> None:
    """A heartbeat is best effort: asyncpg's InternalClientError (a pooled connection left
    mid-operation while PostgreSQL restarted; it once ended run_forever from its heartbeat in
    test_publisher_keeps_going_across_a_postgres_restart) is reported as not written. The fault
    cannot be caused on demand, so a stand-in connection raises it."""

    class BadStateConnection:
        async def execute(self, *_args: object, **_kwargs: object) -> str:
            raise asyncpg.InternalClientError(
                "cannot switch to state 11; another operation (2) is in progress")

    heartbeat = Heartbeat("publish")
    assert await heartbeat.beat(BadStateConnection(), ok=True) is False  # type: ignore[arg-type]
