"""ARCHITECTURE invariant 1 at the responder: once a revocation commits, no answer says `good`,
whatever else is broken (issue 10 points 1, 6 and 8).

The store never returns a response signed before the certificate's latest change; cached answers
are dropped on NOTIFY and, when notifications are lost, by the catch-up every probe; a timeout
or a reconnect never flushes the cache; /readyz stays 200 on a warm cache in a shared outage.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import httpx
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp as x509_ocsp

from responder.app import Responder
from revoc import admin
from revoc.db import create_pool
from revoc.model import OcspResponseStatus, Reason
from tests.pgcluster import PgCluster
from tests.responder_world import (
    GOOD,
    LATER,
    REVOKED,
    World,
    assert_error,
    parsed,
    post,
    serve_asgi,
    setup_world,
)

GOOD_STATUS = x509_ocsp.OCSPCertStatus.GOOD
TRY_LATER = b"0\x03\n\x01\x03"


async def _status(client: httpx.AsyncClient, world: World, serial: int) -> str:
    response = await post(client, world.request(serial))
    if response.content == TRY_LATER:
        return "tryLater"
    return parsed(response).certificate_status.name.lower()


async def _poll_until(client: httpx.AsyncClient, world: World, serial: int, wanted: str,
                      seconds: float = 5.0) -> list[str]:
    """Ask until the answer is `wanted`; returns every answer seen on the way."""
    seen: list[str] = []
    deadline = time.monotonic() + seconds
    while True:
        seen.append(await _status(client, world, serial))
        if seen[-1] == wanted:
            return seen
        assert time.monotonic() < deadline, f"never {wanted}: {seen[-5:]}"
        await asyncio.sleep(0.02)


async def test_revoke_without_presigner_is_never_good_again(world: World) -> None:
    """Issue 10 point 1: no presigner runs; the cached `good` goes and `tryLater` comes (the old
    response is still in ocsp_responses, but it is unservable from the revocation's commit)."""
    async with serve_asgi(world) as (_app, client):
        assert await _status(client, world, GOOD) == "good"
        get_path = "/ocsp/" + __import__("base64").b64encode(world.request(GOOD)).decode()
        assert parsed(await client.get(get_path)).certificate_status == GOOD_STATUS  # memo too
        async with world.pool.acquire() as conn:
            await admin.revoke(conn, admin.RevokeRequest(issuer="ca", serial=GOOD,
                                                         reason=Reason.keyCompromise))
        seen = await _poll_until(client, world, GOOD, "tryLater")
        # Once not good, never good again (no presigner: it stays tryLater).
        for _ in range(20):
            assert await _status(client, world, GOOD) == "tryLater"
            assert_error(await client.get(get_path), OcspResponseStatus.tryLater)
        assert seen.count("good") <= 1, seen  # at most the answer racing the NOTIFY
        # A fresh responder (cold cache, store only) says tryLater at once.
        async with serve_asgi(world) as (_app2, cold):
            assert await _status(cold, world, GOOD) == "tryLater"


async def test_change_without_notification_is_caught_up(world: World) -> None:
    """A writer that sends no NOTIFY (or a notification lost on the way): the catch-up on the
    next probe drops the cached answer; nothing else tells the responder."""
    async with serve_asgi(world) as (app, client):
        responder: Responder = app.state.responder
        assert await _status(client, world, LATER) == "good"
        assert len(responder.cache) >= 1
        async with world.pool.acquire() as conn:
            # What admin.revoke does, minus the NOTIFY: the trigger stamps the change anyway.
            await conn.execute(
                "UPDATE certificates SET status = 'revoked', revoked_at = now(), reason = 1, "
                "crl_entry = '\\x30'::bytea, change_seq = nextval('cert_change_seq') "
                "WHERE serial = $1", LATER.to_bytes(2, "big"))
        await _poll_until(client, world, LATER, "tryLater", seconds=5.0)
        # GOOD's cached answer was not touched by it.
        assert await _status(client, world, GOOD) == "good"


async def test_probe_timeout_keeps_connection_and_cache(world: World) -> None:
    """Issue 10 "seen": a probe that timed out dropped the LISTEN connection and cleared the whole
    cache. Now a slow database leaves both as they are."""
    async with serve_asgi(world) as (app, client):
        responder: Responder = app.state.responder
        assert await _status(client, world, GOOD) == "good"
        entries = len(responder.cache)
        # The LISTEN connection itself (matching pg_stat_activity by last query text matched
        # this very query, and missed the listener once its last query was an issuer reload).
        assert responder._conn is not None
        listener_pid = responder._conn.get_server_pid()
        # Block the catch-up query behind a table lock for longer than STORE_TIMEOUT.
        async with world.pool.acquire() as locker, locker.transaction():
            await locker.execute("LOCK TABLE certificates IN ACCESS EXCLUSIVE MODE")
            deadline = time.monotonic() + 10
            while responder.store_up():
                assert time.monotonic() < deadline, "the probe never noticed"
                assert await _status(client, world, GOOD) == "good"  # from memory
                await asyncio.sleep(0.05)
            assert len(responder.cache) == entries
            assert (await client.get("/readyz")).status_code == 200  # warm cache: degraded
            assert "degraded" in (await client.get("/readyz")).text
            assert "revoc_store_up 0.0" in (await client.get("/metrics")).text
        deadline = time.monotonic() + 10
        while not responder.store_up():
            assert time.monotonic() < deadline, "the probe never recovered"
            await asyncio.sleep(0.05)
        assert len(responder.cache) == entries
        listener = responder._conn
        assert listener is not None and listener.get_server_pid() == listener_pid, \
            "the LISTEN connection was replaced"


async def test_reconnect_catches_up_instead_of_flushing(world: World) -> None:
    """Issue 10 point 6: after a lost connection the responder drops just what changed."""
    async with serve_asgi(world) as (app, client):
        responder: Responder = app.state.responder
        assert await _status(client, world, GOOD) == "good"
        assert await _status(client, world, LATER) == "good"
        synced = responder.last_sync
        admin_conn = await asyncpg.connect(world.settings.database_url)
        try:
            await admin_conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()")
            # Revoke while the responder reconnects (its notifications are lost with it).
            await admin.revoke(admin_conn, admin.RevokeRequest(issuer="ca", serial=LATER,
                                                               reason=Reason.superseded))
        finally:
            await admin_conn.close()
        deadline = time.monotonic() + 10
        while responder.last_sync <= synced or not responder.store_up():
            assert time.monotonic() < deadline, "never reconnected"
            await asyncio.sleep(0.05)
        assert await _status(client, world, LATER) == "tryLater"
        # GOOD is still served from memory: the cache was not flushed.
        assert responder.cache.get((1, GOOD.to_bytes(2, "big"), 1)) is not None
        before = responder.metrics.sources[1]
        assert await _status(client, world, GOOD) == "good"
        assert responder.metrics.sources[1] + responder.metrics.sources[0] > before - 1


async def test_shared_outage_keeps_warm_responder_ready(tmp_path: Path,
                                                        own_cluster: PgCluster) -> None:
    """Issue 10 point 8: PostgreSQL stops. Cached answers keep flowing, misses get tryLater,
    /readyz stays 200 and says degraded, revoc_store_up is 0; when it returns, revocations made
    meanwhile are visible, and the cache was never flushed."""
    pool = await create_pool(own_cluster.dsn, min_size=0, max_size=4)
    try:
        world = await setup_world(pool, own_cluster.dsn, tmp_path / "pki")
        async with serve_asgi(world) as (app, client):
            responder: Responder = app.state.responder
            cached = parsed(await post(client, world.request(GOOD)))
            await asyncio.to_thread(own_cluster.stop)

            good = await post(client, world.request(GOOD))
            assert good.content == cached.public_bytes(Encoding.DER)
            assert_error(await post(client, world.request(REVOKED)), OcspResponseStatus.tryLater)
            deadline = time.monotonic() + 10
            while responder.store_up():
                assert time.monotonic() < deadline, "store never marked down"
                await asyncio.sleep(0.05)
            ready = await client.get("/readyz")
            assert ready.status_code == 200 and "degraded" in ready.text, ready.text
            assert "revoc_store_up 0.0" in (await client.get("/metrics")).text
            assert (await client.get("/healthz")).status_code == 200

            await asyncio.to_thread(own_cluster.start)
            async with pool.acquire() as conn:
                await admin.revoke(conn, admin.RevokeRequest(issuer="ca", serial=GOOD,
                                                             reason=Reason.keyCompromise))
            await _poll_until(client, world, GOOD, "tryLater", seconds=15)
            assert "revoc_store_up 1.0" in (await client.get("/metrics")).text
    finally:
        await pool.close()


async def test_cold_responder_in_outage_is_not_ready(world: World) -> None:
    """Nothing cached and no database: 503 with the reason."""
    async with serve_asgi(world) as (app, client):
        responder: Responder = app.state.responder
        responder.cache.clear()
        responder.last_store_ok = -1e9
        ready = await client.get("/readyz")
        assert ready.status_code == 503 and "nothing cached" in ready.text


async def test_fleet_metrics(world: World) -> None:
    """One scrape shows a dead publisher, quarantined rows and unreflected changes."""
    async with serve_asgi(world) as (app, client):
        responder: Responder = app.state.responder
        async with world.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO workers (kind, host, pid, beat_at, stats) VALUES "
                "('publish', 'old-host', 4242, now() - interval '1 hour', "
                "'{\"histograms\": {\"crl_lag_seconds\": {\"counts\": [0,0,0,1], "
                "\"sum\": 0.9}}}')")
            await conn.execute(
                "INSERT INTO quarantine (kind, issuer_id, serial, change_seq, error) "
                "VALUES ('presign', 1, '\\x01', 1, 'test')")
            await admin.revoke(conn, admin.RevokeRequest(issuer="ca", serial=LATER,
                                                         reason=Reason.superseded))
        await responder.fleet.refresh(world.pool, 5.0)
        text = (await client.get("/metrics")).text
        assert 'revoc_worker_newest_heartbeat_age_seconds{kind="publish"} 36' in text, text
        assert 'revoc_worker_newest_heartbeat_age_seconds{kind="presign"} +Inf' in text
        assert 'revoc_quarantined_rows{kind="presign"} 1.0' in text
        assert 'revoc_revocation_lag_seconds_bucket{le="1.0",path="crl"} 1.0' in text
        line = next(line for line in text.splitlines()
                    if line.startswith('revoc_oldest_unreflected_change_seconds{path="ocsp"}'))
        assert float(line.split()[-1]) >= 0.0
        assert "revoc_changes_unsynced_seconds" in text


async def test_responder_on_a_streaming_replica(tmp_path: Path, own_cluster: PgCluster) -> None:
    """Issue 15 point 2: a responder reading a streaming replica (pg_basebackup -R) answers from
    it, and a revocation committed on the primary is visible through it within the replica's
    lag plus the catch-up interval: NOTIFY does not cross to replicas, the catch-up does."""
    primary_pool = await create_pool(own_cluster.dsn, min_size=0, max_size=4)
    replica = await asyncio.to_thread(PgCluster, replica_of=own_cluster)
    try:
        await asyncio.to_thread(replica.start)
        world = await setup_world(primary_pool, own_cluster.dsn, tmp_path / "pki")
        replica_pool = await create_pool(replica.dsn, min_size=0, max_size=4)
        try:
            # The responder reads only the replica; the primary gets its heartbeats.
            replica_world = World(world.root, world.ca, world.leaves, world.directory,
                                  world.settings, replica_pool)
            async with serve_asgi(replica_world, read_database_url=replica.dsn) as (app, client):
                assert await replica_pool.fetchval("SELECT pg_is_in_recovery()")
                deadline = time.monotonic() + 15
                while await _status(client, replica_world, GOOD) != "good":
                    assert time.monotonic() < deadline, "the replica never served"
                    await asyncio.sleep(0.05)
                async with primary_pool.acquire() as conn:
                    await admin.revoke(conn, admin.RevokeRequest(issuer="ca", serial=GOOD,
                                                                 reason=Reason.keyCompromise))
                started = time.monotonic()
                await _poll_until(client, replica_world, GOOD, "tryLater", seconds=10)
                hidden = time.monotonic() - started
                from tests.responder_world import presign
                await presign(world)  # signs on the primary
                await _poll_until(client, replica_world, GOOD, "revoked", seconds=10)
                assert hidden < 10
                responder: Responder = app.state.responder
                beats = await primary_pool.fetchval(
                    "SELECT count(*) FROM workers WHERE kind = 'serve'")
                assert responder.writer_pool is not None and beats >= 0
        finally:
            await replica_pool.close()
    finally:
        await primary_pool.close()
        await asyncio.to_thread(replica.close)
