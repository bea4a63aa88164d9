"""Bulk warm-up of the responder's cache (issue 15 point 4; responder/cache_warm.py).

A new responder fills its cache from PostgreSQL in the background, up to its caps, longest-valid
first, without holding up requests; off with `cache_warm=false`. The race it must never lose
(ARCHITECTURE invariant 1): its snapshot is read, a revocation commits and its invalidation (NOTIFY
or catch-up) runs, and only then does the warm-up reach that certificate: the old `good` must not
enter the cache. The tests below hold the warm-up between reading a batch and filling it, and
cause exactly that.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg
import httpx
import pytest

from responder.app import Responder
from responder.cache import CacheKey
from responder.cache_warm import WarmState
from revoc import admin
from revoc.model import HashAlgorithm, Reason
from tests.responder_world import (
    GOOD,
    LATER,
    REVOKED,
    World,
    parsed,
    post,
    serve_asgi,
    wait_until,
)

TRY_LATER = b"0\x03\n\x01\x03"
SERIALS = (GOOD, REVOKED, LATER)
HASHES = (HashAlgorithm.SHA1, HashAlgorithm.SHA256)


def _key(serial: int, algorithm: HashAlgorithm = HashAlgorithm.SHA1) -> CacheKey:
    return CacheKey(1, serial.to_bytes(2, "big"), algorithm.value)


async def _status(client: httpx.AsyncClient, world: World, serial: int) -> str:
    response = await post(client, world.request(serial))
    if response.content == TRY_LATER:
        return "tryLater"
    return parsed(response).certificate_status.name.lower()


async def _warmed(responder: Responder) -> None:
    await wait_until(lambda: responder.warmer.state in (WarmState.DONE, WarmState.FAILED), 10)
    assert responder.warmer.state is WarmState.DONE, responder.warmer.how_it_ended


async def test_warm_fills_the_cache_before_any_request(world: World,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="revoc.responder")
    async with serve_asgi(world, cache_warm=True) as (app, client):
        responder: Responder = app.state.responder
        await _warmed(responder)
        # All six, unless a catch-up meanwhile dropped REVOKED's (changed shortly before, and
        # the catch-up is conservative while others' transactions hold the server's xmin back).
        warmer = responder.warmer
        assert warmer.entries + warmer.skipped == len(SERIALS) * len(HASHES)
        assert warmer.entries >= 4
        for serial in (GOOD, LATER):  # never changed: cached for good
            assert all(responder.cache.get(_key(serial, h)) is not None for h in HASHES)
        store = responder.state.store
        assert store is not None
        assert [await _status(client, world, s) for s in (GOOD, LATER)] == ["good", "good"]
        assert store.misses.keys_read == 0  # answered from memory
        assert await _status(client, world, REVOKED) == "revoked"
        metrics = (await client.get("/metrics")).text
        assert 'revoc_cache_warm_state{state="done"} 1.0' in metrics
        assert f"revoc_cache_warm_responses {warmer.entries}.0" in metrics
        assert f"cache warm-up done: {warmer.entries} response(s)" in (
            await client.get("/readyz")).text
    assert any(f"cache warm: {warmer.entries} responses in" in r.getMessage()
               for r in caplog.records)


async def test_warm_off_leaves_the_cache_to_misses(world: World) -> None:
    async with serve_asgi(world, cache_warm=False) as (app, client):
        responder: Responder = app.state.responder
        assert responder.warmer.state is WarmState.OFF
        assert len(responder.cache) == 0
        assert await _status(client, world, GOOD) == "good"
        assert len(responder.cache) == 1
        assert 'revoc_cache_warm_state{state="off"} 1.0' in (await client.get("/metrics")).text


async def test_warm_stops_at_the_cap_with_the_longest_valid_first(world: World) -> None:
    """Two entries fit: the two responses valid longest go in, nothing is evicted for more."""
    async with world.pool.acquire() as conn:
        await conn.execute("UPDATE ocsp_responses SET next_update = next_update + interval "
                           "'1 hour' WHERE serial = $1", LATER.to_bytes(2, "big"))
    async with serve_asgi(world, cache_warm=True, cache_max_entries=2) as (app, _client):
        responder: Responder = app.state.responder
        await _warmed(responder)
        assert len(responder.cache) == 2
        assert all(responder.cache.get(_key(LATER, h)) is not None for h in HASHES)


async def test_warm_respects_the_byte_cap(world: World) -> None:
    one = 3000  # more than one entry (DER + ENTRY_OVERHEAD_BYTES), less than two
    async with serve_asgi(world, cache_warm=True, cache_max_bytes=one) as (app, _client):
        responder: Responder = app.state.responder
        await _warmed(responder)
        assert len(responder.cache) == 1 and responder.cache.size_bytes <= one


class HeldWarm:
    """Holds the warm-up after it read its first batch, until released."""

    def __init__(self) -> None:
        self.reached = asyncio.Event()
        self.release = asyncio.Event()
        self.serials: set[bytes] = set()

    async def __call__(self, rows: Sequence[asyncpg.Record]) -> None:
        self.serials.update(bytes(row["serial"]) for row in rows)
        self.reached.set()
        await self.release.wait()


async def _revoke_during_warm(world: World, revoke: object) -> None:
    held = HeldWarm()
    serving = serve_asgi(world, cache_warm=True)
    responder: Responder = serving.app.state.responder
    responder.warmer.before_fill = held
    async with serving as (_app, client):
        await asyncio.wait_for(held.reached.wait(), 10)
        # The snapshot is taken and holds GOOD's `good` response.
        assert GOOD.to_bytes(2, "big") in held.serials
        assert len(responder.cache) == 0
        await revoke(responder)  # type: ignore[operator]
        # Serving goes on meanwhile: a miss is read from the store.
        assert await _status(client, world, LATER) == "good"
        held.release.set()
        await _warmed(responder)
        # No presigner runs: the revocation is not signed yet, so tryLater, never `good`.
        for _ in range(5):
            assert await _status(client, world, GOOD) == "tryLater"
        assert all(responder.cache.get(_key(GOOD, h)) is None for h in HASHES)
        # Both CertID hashes of GOOD; maybe more: a catch-up also drops certificates changed
        # shortly before (by transaction id, conservatively, while others' transactions hold
        # the server's xmin back), REVOKED here.
        assert responder.warmer.skipped >= 2
        assert responder.cache.get(_key(LATER, HashAlgorithm.SHA256)) is not None  # the rest


async def test_revocation_notified_during_warm_never_leaves_a_stale_good(world: World) -> None:
    """The race: snapshot read, revocation committed and its NOTIFY handled (dropping nothing,
    since nothing is cached yet), then the fill reaches the certificate."""

    async def revoke(responder: Responder) -> None:
        generation = responder.cache.generation
        async with world.pool.acquire() as conn:
            await admin.revoke(conn, admin.RevokeRequest(issuer="ca", serial=GOOD,
                                                         reason=Reason.keyCompromise))
        await wait_until(lambda: responder.cache.generation > generation)  # NOTIFY handled

    await _revoke_during_warm(world, revoke)


async def test_revocation_caught_up_during_warm_never_leaves_a_stale_good(world: World) -> None:
    """The same race when no NOTIFY comes (a writer without it, or one lost): the catch-up
    handles the change while the warm-up is held, then the fill reaches the certificate."""

    async def revoke(responder: Responder) -> None:
        key = (1, GOOD.to_bytes(2, "big"))
        async with world.pool.acquire() as conn:
            await conn.execute(
                "UPDATE certificates SET status = 'revoked', revoked_at = now(), reason = 1, "
                "crl_entry = '\\x30'::bytea, change_seq = nextval('cert_change_seq') "
                "WHERE serial = $1", key[1])
        await wait_until(lambda: key in responder._recent, 10)  # the catch-up saw it

    await _revoke_during_warm(world, revoke)
