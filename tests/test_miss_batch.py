"""Cache misses read in batches (responder/miss_batch.py) against the real PostgreSQL.

A read is held in flight by a table lock taken on another connection, which is how a slow or
busy database looks to the responder; no part of the store is replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from responder.sources import ResponseStore, StoreUnavailable
from revoc.db import create_pool
from revoc.model import HashAlgorithm
from tests.bounds import DEADLINE
from tests.responder_world import GOOD, REVOKED, World

SHA1 = HashAlgorithm.SHA1.value
SHA256 = HashAlgorithm.SHA256.value


def serial(number: int) -> bytes:
    return number.to_bytes((number.bit_length() + 8) // 8, "big", signed=True)


async def stored(world: World) -> dict[tuple[int, bytes, int], bytes]:
    rows = await world.pool.fetch(
        "SELECT issuer_id, serial, hash_alg, der FROM ocsp_responses_served")
    return {(row["issuer_id"], bytes(row["serial"]), row["hash_alg"]): bytes(row["der"])
            for row in rows}


@contextlib.asynccontextmanager
async def table_locked(world: World) -> AsyncIterator[None]:
    """ocsp_responses locked against reads until the block ends."""
    conn: asyncpg.Connection = await asyncpg.connect(world.settings.database_url)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE ocsp_responses IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        await conn.close()


async def until(predicate: Callable[[], object], seconds: float = DEADLINE) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, f"condition not met in {seconds} s"
        await asyncio.sleep(0.01)


def waiting_on_a_future(task: asyncio.Task[Any]) -> bool:
    """The task has run up to an await on a future (for a store read: the read it joined or
    queued), as opposed to not having started yet: the innermost object its coroutines await
    is not a coroutine."""
    awaited = task.get_coro().cr_await  # type: ignore[union-attr]
    while hasattr(awaited, "cr_await"):
        awaited = awaited.cr_await
    return awaited is not None


async def test_concurrent_misses_are_merged_and_batched(world: World) -> None:
    expected = await stored(world)
    issuer_id = next(iter(expected))[0]
    keys = [*expected, *((issuer_id, serial(n), SHA1) for n in range(1, 95))]  # 94 never issued
    store = ResponseStore(world.pool, 5.0, max_inflight=2)
    async with table_locked(world):
        # Everything queues behind the lock: the first read holds one key, the rest wait.
        pending = [asyncio.ensure_future(store.response(*key)) for key in keys * 2]
        await until(lambda: store.misses.batches >= 1)
    answers = await asyncio.gather(*pending)
    for key, answer in zip(keys * 2, answers, strict=True):
        if key in expected:
            assert answer is not None and answer[0] == expected[key]
            assert answer[1] < answer[2]
        else:
            assert answer is None
    assert store.misses.keys_read == len(keys)  # every duplicate merged
    assert store.misses.batches <= 3  # one key, then at most two reads for the rest


async def test_no_merge_with_a_read_sent_before_an_invalidation(world: World) -> None:
    """A miss after NOTIFY ocsp_changed must not take an answer read before it."""
    key = next(iter(await stored(world)))
    generation = [0]
    store = ResponseStore(world.pool, 5.0, generation=lambda: generation[0])
    async with table_locked(world):
        first = asyncio.ensure_future(store.response(*key))
        await until(lambda: store.misses.batches == 1)
        same = asyncio.create_task(store.response(*key))  # same generation: merged
        await until(lambda: waiting_on_a_future(same))
        assert store.misses.keys_read == 1  # merged with the read in flight: no new one
        generation[0] += 1  # an invalidation
        after = asyncio.ensure_future(store.response(*key))
        await until(lambda: store.misses.batches == 2)
    results = await asyncio.gather(first, same, after)
    assert results[0] == results[1] == results[2] is not None
    assert store.misses.keys_read == 2  # `after` was read again


async def test_slow_database_is_store_unavailable(world: World) -> None:
    key = next(iter(await stored(world)))
    store = ResponseStore(world.pool, 0.3)
    async with table_locked(world):
        results = await asyncio.gather(*(store.response(*key) for _ in range(3)),
                                       return_exceptions=True)
    assert all(isinstance(result, StoreUnavailable) for result in results), results
    assert await store.response(*key) is not None  # and it recovers


async def test_unreachable_database_is_store_unavailable(world: World) -> None:
    pool = await create_pool("postgresql://postgres@127.0.0.1:1/nowhere", min_size=0,
                             max_size=2)
    try:
        store = ResponseStore(pool, 1.0)
        results = await asyncio.gather(
            *(store.response(1, serial(n), SHA256) for n in (GOOD, REVOKED, GOOD)),
            return_exceptions=True)
        assert all(isinstance(result, StoreUnavailable) for result in results), results
        assert results[0] is not results[2]  # one exception object per waiter
    finally:
        await pool.close()


@pytest.mark.parametrize("waiters", [1, 5])
async def test_a_waiter_giving_up_leaves_the_others_their_answer(world: World,
                                                                 waiters: int) -> None:
    key = next(iter(await stored(world)))
    store = ResponseStore(world.pool, 5.0)
    async with table_locked(world):
        tasks = [asyncio.ensure_future(store.response(*key)) for _ in range(waiters + 1)]
        await until(lambda: store.misses.batches == 1)
        tasks[0].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert all(isinstance(result, tuple) for result in results[1:]), results
