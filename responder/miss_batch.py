"""Cache misses read from PostgreSQL in batches, with concurrent misses for one key merged.

A cold responder (after a start, or with more certificates than fit in memory) answers every
request with one PostgreSQL round trip. Done one by one, that caps the cold path at the rate of
round trips the pool sustains, and a burst of misses queues on the pool until some hit the store
timeout and get `tryLater`. `MissBatcher` works like a group commit instead:

- a miss for a key already waiting in the queue waits for the same answer (no second read);
- at most `max_inflight` reads run at once; each takes up to `max_batch` queued keys and reads
  them with one query (`responder_ocsp_response_batch`: unnest + primary-key join);
- while reads are running, new misses queue up and go together in the next read, so the batch
  size follows the load by itself: one key when idle (no added latency), hundreds under a burst.

A drain task opens one reader (a pooled connection, in responder/sources.py) and keeps it for as
long as keys keep coming, so a batch costs one round trip: handing a connection back to the pool
costs another (asyncpg resets the session), paid once per burst, after the answers went out.

Merging with a read already sent is allowed only when no invalidation happened since it was sent
(the `generation` of the response cache): such a read may have seen the row from before a
revocation, and a request that arrived after the NOTIFY must not be answered from it. Nor is a
read joined once it has used half the timeout: after a stall, a new miss gets a read of its own
rather than share the fate of one that is about to time out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

from responder.cache import CacheKey

Key = CacheKey
Row = tuple[bytes, int, int]  # (DER, thisUpdate, nextUpdate as epoch seconds)
Fetch = Callable[[list[Key]], Awaitable[dict[Key, Row]]]
# Opens a reader for a run of batches (a connection held for the run); raises what it raises.
OpenReader = Callable[[], AbstractAsyncContextManager[Fetch]]


def _retrieve(future: asyncio.Future[Row | None]) -> None:
    # Mark an exception as seen even when every waiter went away (no "never retrieved" noise).
    if not future.cancelled():
        future.exception()


class MissBatcher:
    """Merges and batches reads of pre-signed responses; see the module docstring."""

    __slots__ = ("_generation", "_inflight", "_max_batch", "_max_inflight", "_open_reader",
                 "_queue", "_sent", "_tasks", "_timeout", "batches", "keys_read")

    def __init__(self, open_reader: OpenReader, *, generation: Callable[[], int], timeout: float,
                 max_batch: int = 256, max_inflight: int = 4) -> None:
        self._open_reader = open_reader
        self._generation = generation
        self._timeout = timeout
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._queue: dict[Key, asyncio.Future[Row | None]] = {}
        # Reads sent: (answer, cache generation and loop time when sent).
        self._sent: dict[Key, tuple[asyncio.Future[Row | None], int, float]] = {}
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0  # reads run, for metrics and tests
        self.keys_read = 0

    async def get(self, key: Key) -> Row | None:
        """The stored response for `key` (None: none stored). Raises what `fetch` raises, or
        TimeoutError when no answer came within the timeout."""
        future = self._queue.get(key)
        if future is None:
            sent = self._sent.get(key)
            loop = asyncio.get_running_loop()
            if (sent is not None and sent[1] == self._generation()
                    and loop.time() - sent[2] < self._timeout / 2):
                future = sent[0]
            else:
                future = loop.create_future()
                future.add_done_callback(_retrieve)
                self._queue[key] = future
                if self._inflight < self._max_inflight:
                    self._inflight += 1
                    task = loop.create_task(self._drain())
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        async with asyncio.timeout(self._timeout):
            # shield: one waiter giving up must not cancel the answer for the others.
            return await asyncio.shield(future)

    async def _drain(self) -> None:
        try:
            while self._queue:
                opened = False
                try:
                    async with self._open_reader() as fetch:
                        opened = True
                        while self._queue and await self._read(fetch):
                            pass
                except Exception as exc:
                    if not opened and self._queue:
                        # No reader: the batch it would have read learns why; the next one
                        # tries again (as each batch did with a connection of its own).
                        self._finish(self._take_batch()[0], exc)
        finally:
            self._inflight -= 1

    def _take_batch(self) -> tuple[dict[Key, asyncio.Future[Row | None]], int]:
        """Up to max_batch queued keys, recorded as sent; (their answers, generation)."""
        generation = self._generation()
        sent_at = asyncio.get_running_loop().time()
        batch = {}
        for key in list(self._queue)[:self._max_batch]:
            future = self._queue.pop(key)
            batch[key] = future
            self._sent[key] = (future, generation, sent_at)
        return batch, generation

    async def _read(self, fetch: Fetch) -> bool:
        """Read one batch with `fetch`; False when it failed (the reader is given up)."""
        batch, _generation = self._take_batch()
        self.batches += 1
        self.keys_read += len(batch)
        try:
            rows = await fetch(list(batch))
        except Exception as exc:
            self._finish(batch, exc)
            return False
        for key, future in batch.items():
            if not future.done():
                future.set_result(rows.get(key))
        self._forget(batch)
        return True

    def _finish(self, batch: dict[Key, asyncio.Future[Row | None]], exc: Exception) -> None:
        for future in batch.values():
            if not future.done():
                future.set_exception(exc)
        self._forget(batch)

    def _forget(self, batch: dict[Key, asyncio.Future[Row | None]]) -> None:
        for key, future in batch.items():
            if key in self._sent and self._sent[key][0] is future:
                del self._sent[key]
