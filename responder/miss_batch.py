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
from collections import deque
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager

from responder.cache import CacheKey

Key = CacheKey
Row = tuple[bytes, int, int]  # (DER, thisUpdate, nextUpdate as epoch seconds)
Fetch = Callable[[list[Key]], Awaitable[dict[Key, Row]]]
# Opens a reader for a run of batches (a connection held for the run); raises what it raises.
OpenReader = Callable[[], AbstractAsyncContextManager[Fetch]]


Waiters = list["asyncio.Future[Row | None]"]


class MissBatcher:
    """Merges and batches reads of pre-signed responses; see the module docstring.

    Every waiter has a future of its own (a waiter that goes away cancels only its own), listed
    under its key; one timer per batcher, not one per waiter, fails the waiters whose timeout
    passed (`_expire`)."""

    __slots__ = ("_deadlines", "_expiry", "_generation", "_inflight", "_max_batch",
                 "_max_inflight", "_open_reader", "_queue", "_sent", "_tasks", "_timeout",
                 "batches", "keys_read")

    def __init__(self, open_reader: OpenReader, *, generation: Callable[[], int], timeout: float,
                 max_batch: int = 256, max_inflight: int = 4) -> None:
        self._open_reader = open_reader
        self._generation = generation
        self._timeout = timeout
        self._max_batch = max_batch
        self._max_inflight = max_inflight
        self._queue: dict[Key, Waiters] = {}
        # Reads sent: (their waiters, cache generation and loop time when sent).
        self._sent: dict[Key, tuple[Waiters, int, float]] = {}
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # (loop time a waiter gives up, its future), in the order they came; the timer that
        # expires the first of them.
        self._deadlines: deque[tuple[float, asyncio.Future[Row | None]]] = deque()
        self._expiry: asyncio.TimerHandle | None = None
        self.batches = 0  # reads run, for metrics and tests
        self.keys_read = 0

    async def get(self, key: Key) -> Row | None:
        """The stored response for `key` (None: none stored). Raises what `fetch` raises, or
        TimeoutError when no answer came within the timeout."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        future: asyncio.Future[Row | None] = loop.create_future()
        waiters = self._queue.get(key)
        if waiters is None:
            sent = self._sent.get(key)
            if (sent is not None and sent[1] == self._generation()
                    and now - sent[2] < self._timeout / 2):
                waiters = sent[0]
            else:
                waiters = self._queue[key] = []
                if self._inflight < self._max_inflight:
                    self._inflight += 1
                    task = loop.create_task(self._drain())
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        waiters.append(future)
        deadline = now + self._timeout
        self._deadlines.append((deadline, future))
        if self._expiry is None:
            self._expiry = loop.call_at(deadline, self._expire)
        return await future

    def _expire(self) -> None:
        """Timer: TimeoutError for every waiter past its deadline still without an answer."""
        self._expiry = None
        deadlines = self._deadlines
        loop = asyncio.get_running_loop()
        now = loop.time()
        while deadlines and deadlines[0][0] <= now:
            future = deadlines.popleft()[1]
            if not future.done():
                future.set_exception(TimeoutError())
        if deadlines:
            self._expiry = loop.call_at(deadlines[0][0], self._expire)

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
                        self._finish(self._take_batch(), exc)
        finally:
            self._inflight -= 1

    def _take_batch(self) -> dict[Key, Waiters]:
        """Up to max_batch queued keys and their waiters, recorded as sent."""
        generation = self._generation()
        sent_at = asyncio.get_running_loop().time()
        queue = self._queue
        sent = self._sent
        if len(queue) <= self._max_batch:
            batch, self._queue = queue, {}
        else:
            batch = {key: queue.pop(key) for key in list(queue)[:self._max_batch]}
        for key, waiters in batch.items():
            sent[key] = (waiters, generation, sent_at)
        return batch

    async def _read(self, fetch: Fetch) -> bool:
        """Read one batch with `fetch`; False when it failed (the reader is given up)."""
        batch = self._take_batch()
        self.batches += 1
        self.keys_read += len(batch)
        try:
            rows = await fetch(list(batch))
        except Exception as exc:
            self._finish(batch, exc)
            return False
        sent = self._sent
        for key, waiters in batch.items():
            row = rows.get(key)
            for future in waiters:
                if not future.done():
                    future.set_result(row)
            if key in sent and sent[key][0] is waiters:
                del sent[key]
        return True

    def _finish(self, batch: dict[Key, Waiters], exc: Exception) -> None:
        sent = self._sent
        for key, waiters in batch.items():
            for future in waiters:
                if not future.done():
                    future.set_exception(exc)
            if key in sent and sent[key][0] is waiters:
                del sent[key]
