"""Issue 15 point 3: the primary requires a synchronous standby that is gone, so every commit
waits forever (PostgreSQL's SyncRep wait), as on an old primary that comes back after a failover
(bench/failover/run). Nothing may hang the daemons or stop the responder's warm answers:

- `revoc presign` and `revoc publish` stop on SIGTERM even with a commit stuck in that wait
  (they closed their pool gracefully, which waits for every connection forever);
- `revoc serve` keeps answering from its cache while commits hang, and stops on SIGTERM.

The stuck commits stay unacknowledged: the revocation made with synchronous_commit=local (as a
crashed primary's last local commit) is the only thing written, and nothing claims more.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import asyncpg
import httpx
import pytest

from revoc import admin
from revoc.db import create_pool
from revoc.model import Reason
from tests.daemons import Daemon
from tests.live_serve import revoc_serve
from tests.pgcluster import PgCluster
from tests.world import GOOD, LATER, setup_world

DEADLINE = 60.0  # generous: the machine is shared; not a speed check
STOP_DEADLINE = 30.0  # a daemon that does not stop within this on SIGTERM hangs


async def _sync_rep_waiters(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'")
        return count
    finally:
        await conn.close()


async def test_daemons_stop_and_serve_answers_while_commits_wait_for_a_lost_standby(
        own_cluster: PgCluster, tmp_path: Path) -> None:
    pool = await create_pool(own_cluster.dsn, min_size=0, max_size=4)
    try:
        world = await setup_world(pool, own_cluster.dsn, tmp_path / "pki")
    finally:
        await pool.close()
    env = {**os.environ, "REVOC_DATABASE_URL": own_cluster.dsn, "REVOC_LOG_LEVEL": "INFO",
           "REVOC_PRESIGN_PROCESSES": "1", "REVOC_CRL_OUT": str(tmp_path / "crl")}
    daemons = {name: Daemon([name], env) for name in ("presign", "publish")}
    try:
        daemons["publish"].wait_for(r"published full CRL")
        daemons["presign"].wait_for(r"presign round")
        async with contextlib.AsyncExitStack() as stack:
            url = stack.enter_context(revoc_serve(world))
            client = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=5))
            request = world.request(GOOD)
            headers = {"content-type": "application/ocsp-request"}
            warm = await client.post("/ocsp", content=request, headers=headers)
            assert warm.status_code == 200 and len(warm.content) > 100

            conn = await asyncpg.connect(own_cluster.dsn)
            try:
                await conn.execute(
                    "ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (gone_standby)'")
                await conn.execute("SELECT pg_reload_conf()")
                # The change itself commits locally; the daemons' commits that follow from it
                # (a new response, a new CRL) wait for the standby forever.
                await conn.execute("SET synchronous_commit = local")
                await admin.revoke(conn, admin.RevokeRequest(
                    issuer="ca", serial=LATER, reason=Reason.keyCompromise))
            finally:
                await conn.close()
            deadline = time.monotonic() + DEADLINE
            while await _sync_rep_waiters(own_cluster.dsn) < 2:
                assert time.monotonic() < deadline, "no daemon commit waited for the standby"
                await asyncio.sleep(0.1)

            for _ in range(20):  # the warm answer, unchanged, while commits hang
                again = await client.post("/ocsp", content=request, headers=headers)
                assert again.status_code == 200 and again.content == warm.content
            assert (await client.get("/readyz")).status_code == 200

            for name, daemon in daemons.items():
                code = await asyncio.to_thread(daemon.stop, signal.SIGTERM, STOP_DEADLINE)
                assert code == 128 + signal.SIGTERM, (name, daemon.output)
    finally:
        for daemon in daemons.values():
            daemon.kill()
        conn = await asyncpg.connect(own_cluster.dsn)
        try:
            await conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()


@pytest.mark.parametrize("form", ["serial", "serials-file"])
async def test_revoke_whose_standby_wait_is_cancelled_is_not_acknowledged(
        own_cluster: PgCluster, tmp_path: Path, form: str) -> None:
    """PostgreSQL reports a commit whose wait for the synchronous standby was cancelled as done
    (with a WARNING): `revoc cert revoke` must not acknowledge it (exit 1, not 0), and prints no
    success line first (one serial, and the mass form with --serials-file)."""
    if form == "serial":
        which = ["--serial", f"{LATER:X}"]
    else:
        (tmp_path / "serials.txt").write_text(f"{LATER:X}\n")
        which = ["--serials-file", str(tmp_path / "serials.txt")]
    pool = await create_pool(own_cluster.dsn, min_size=0, max_size=4)
    try:
        await setup_world(pool, own_cluster.dsn, tmp_path / "pki")
    finally:
        await pool.close()
    admin_conn = await asyncpg.connect(own_cluster.dsn)
    try:
        await admin_conn.execute(
            "ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 (gone_standby)'")
        await admin_conn.execute("SELECT pg_reload_conf()")
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "revoc.cli", "cert", "revoke", "--issuer", "ca", *which,
            "--reason", "keyCompromise",
            env={**os.environ, "REVOC_DATABASE_URL": own_cluster.dsn},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        deadline = time.monotonic() + DEADLINE
        while not await admin_conn.fetchval(
                "SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity "
                "WHERE wait_event = 'SyncRep'"):
            assert time.monotonic() < deadline, "the revocation never waited for the standby"
            await asyncio.sleep(0.1)
        out, err = await asyncio.wait_for(process.communicate(), DEADLINE)
        assert process.returncode == 1, (out, err)
        assert b"not acknowledged" in err, err
        assert b"revoked" not in out, out
    finally:
        await admin_conn.execute("ALTER SYSTEM RESET synchronous_standby_names")
        await admin_conn.execute("SELECT pg_reload_conf()")
        await admin_conn.close()
