"""Issue 15 point 3: a multi-host DSN (as for a failover pair) whose first host hangs.

A crashed or frozen machine does not refuse connections: its kernel may complete the TCP
handshake (or drop the SYN) and nobody ever answers. asyncpg spends its whole connect timeout
(60 s by default) on such a first host and never tries the next one, so every revoc process
would stall through a failover. revoc connects host by host, each with its own timeout
(`connect_timeout` in the DSN, seconds, as in libpq; 5 s by default with several hosts).

The hung host here is a socket that listens and never accepts: connections complete in the
kernel's backlog and then hear nothing, as from a SIGSTOPped postmaster.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest

from revoc import db
from revoc.workers import Heartbeat
from tests.pgcluster import PgCluster

DEADLINE = 30.0  # well under asyncpg's 60 s default; generous for a shared machine


@pytest.fixture
def hung_host() -> Iterator[str]:
    """host:port of a listener that never accepts nor answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def _with_hosts(dsn: str, *hosts: str, query: str = "") -> str:
    parts = urlsplit(dsn)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit((parts.scheme, f"{user}@{','.join(hosts)}", parts.path,
                       query or parts.query, ""))


def _host_of(dsn: str) -> str:
    return urlsplit(dsn).netloc.rpartition("@")[2]


async def test_connect_skips_a_hung_first_host(hung_host: str, database_url: str) -> None:
    dsn = _with_hosts(database_url, hung_host, _host_of(database_url),
                      query="target_session_attrs=read-write&connect_timeout=2")
    conn = await asyncio.wait_for(db.connect(dsn), DEADLINE)
    try:
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
    pool = await asyncio.wait_for(db.create_pool(dsn, min_size=1, max_size=2), DEADLINE)
    try:
        assert await asyncio.wait_for(pool.fetchval("SELECT 2"), DEADLINE) == 2
    finally:
        await pool.close()


async def test_connect_takes_the_writable_host(own_cluster: PgCluster) -> None:
    """target_session_attrs=read-write with a replica listed first: the primary is chosen."""
    replica = await asyncio.to_thread(PgCluster, replica_of=own_cluster)
    try:
        await asyncio.to_thread(replica.start)
        dsn = _with_hosts(own_cluster.dsn, _host_of(replica.dsn), _host_of(own_cluster.dsn),
                          query="target_session_attrs=read-write")
        conn = await asyncio.wait_for(db.connect(dsn), DEADLINE)
        try:
            assert not await conn.fetchval("SELECT pg_is_in_recovery()")
        finally:
            await conn.close()
        only_replica = _with_hosts(own_cluster.dsn, _host_of(replica.dsn),
                                   query="target_session_attrs=read-write")
        with pytest.raises(asyncpg.TargetServerAttributeNotMatched):
            await asyncio.wait_for(db.connect(only_replica), DEADLINE)
        # Mid-failover: one node down, the other not writable yet. A connection error that
        # every retry loop waits out, and a heartbeat that is simply not written (the
        # publisher once died on this from its error handler).
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            dead = f"127.0.0.1:{probe.getsockname()[1]}"
        failing_over = _with_hosts(own_cluster.dsn, dead, _host_of(replica.dsn),
                                   query="target_session_attrs=read-write")
        with pytest.raises(db.NoUsableHost) as caught:
            await asyncio.wait_for(db.connect(failing_over), DEADLINE)
        assert isinstance(caught.value, ConnectionError) and dead in str(caught.value)
        for dsn in (failing_over, only_replica):
            pool = await db.create_pool(dsn, min_size=0, max_size=1)
            try:
                assert await Heartbeat("publish").beat(pool) is False
            finally:
                await pool.close()
    finally:
        await asyncio.to_thread(replica.close)


def test_cli_revoke_through_a_hung_first_host(hung_host: str, database_url: str,
                                              tmp_path: object) -> None:
    """`revoc cert revoke`, as an operator runs it during a failover: the command reaches the
    live host (here it fails on the unknown issuer, which needs the database to say so)."""
    dsn = _with_hosts(database_url, hung_host, _host_of(database_url),
                      query="connect_timeout=2")
    result = subprocess.run(
        [sys.executable, "-m", "revoc.cli", "cert", "revoke", "--issuer", "nobody",
         "--serial", "01", "--reason", "superseded"],
        env={**os.environ, "REVOC_DATABASE_URL": dsn}, capture_output=True, text=True,
        timeout=DEADLINE, check=False)
    assert result.returncode == 1, result.stderr
    assert "nobody" in result.stderr, result.stderr


def test_serve_starts_while_no_host_is_reachable(tmp_path: object) -> None:
    """A responder (re)started in the middle of a failover comes up, says it is not ready and
    connects later, instead of exiting on the schema check."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]  # closed again: connections are refused
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dsn = f"postgresql://postgres@127.0.0.1:{dead},127.0.0.1:{dead}/postgres"
    process = subprocess.Popen(
        [sys.executable, "-m", "revoc.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={**os.environ, "REVOC_DATABASE_URL": dsn}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + DEADLINE
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "revoc serve never answered /healthz"
            time.sleep(0.1)
        ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert ready.status_code == 503, ready.text
    finally:
        process.terminate()
        process.wait(timeout=DEADLINE)
    assert process.returncode == 143
