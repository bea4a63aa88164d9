"""What the uvicorn lane (responder/fast_lane.py) keeps per worker: answers held until the end of
the event loop's pass, and the requests it answered, by their raw bytes.

Held writes. On a warm hit most of the worker's CPU is the kernel's, and a large part of that is
the `send` waking the client's side (profiles under wrk: about a third of the worker's samples in
the wake-up of the reader, against a few microseconds of Python). Written as each request is
parsed, every answer may wake a client that went back to sleep after the previous one; held and
written together once the loop has read everything that was ready, a pass's answers go out back
to back. The answers of one pass are written at the start of the next one (`call_soon`), before
anything else runs on those connections. `HeldTransport` wraps a connection's transport so that
every other write, close or EOF on it (uvicorn's own path, the edge's refusals, the keep-alive
timeout) first writes what is held: answers keep their order on the connection.

Known requests. A keep-alive client sends the same request head again and again (wrk does, so do
OCSP clients and stapling servers polling one responder; a POST differs only in its body). A read
that carried exactly one whole request, parsed by httptools (with every edge limit) and taken by
the lane (answered at once or later, not handed to uvicorn), is remembered by the bytes of its
head with what the lane asked `FastPath.lookup` and the length of its body (Content-Length).
When a read at a request boundary is exactly a known head followed by that many octets, the lane
asks `lookup` the same way without parsing: identical head bytes parse to the identical request,
and a body is opaque octets to HTTP (for a GET there is none). The answer itself still comes from
`lookup` (memo, freshness, invalidation, the pipeline on a miss), never from here. Whatever else
arrives is parsed. Bounded: forgotten all at once when `KNOWN_MAX` heads are remembered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

KNOWN_MAX = 4096
KNOWN_MAX_BYTES = 2048  # longer heads are not remembered (at most 8 MB in all)

# What the lane asks `FastPath.lookup` for a known request head: method, target, headers, and
# the length of the body that follows it (Content-Length; 0 for a GET).
KnownRequest = tuple[bytes, bytes, Sequence[tuple[bytes, bytes]], int]


class HeldTransport:
    """A connection's transport whose lane answers wait for the end of the loop's pass (`hold`);
    anything else written, or a close, first writes them. Other attributes are the transport's."""

    __slots__ = ("_held", "_worker", "transport")

    def __init__(self, transport: asyncio.Transport, worker: LaneWorker) -> None:
        self.transport = transport
        self._worker = worker
        self._held = b""

    def hold(self, data: bytes) -> None:
        if self._held:
            self._held += data
            return
        self._held = data
        self._worker.held(self)

    def flush(self) -> None:
        data = self._held
        if data:
            self._held = b""
            if not self.transport.is_closing():
                self.transport.write(data)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._held:
            self.flush()
        self.transport.write(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        if self._held:
            self.flush()
        self.transport.writelines(list_of_data)

    def write_eof(self) -> None:
        if self._held:
            self.flush()
        self.transport.write_eof()

    def close(self) -> None:
        if self._held:
            self.flush()
        self.transport.close()

    def abort(self) -> None:
        self._held = b""
        self.transport.abort()

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def can_write_eof(self) -> bool:
        return self.transport.can_write_eof()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.transport.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self.transport.pause_reading()

    def resume_reading(self) -> None:
        self.transport.resume_reading()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class LaneWorker:
    """One worker's (one event loop's) held transports and known requests."""

    __slots__ = ("_held", "_loop", "known")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._held: list[HeldTransport] = []
        self.known: dict[bytes, KnownRequest] = {}

    def held(self, transport: HeldTransport) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(transport)

    def flush(self) -> None:
        held, self._held = self._held, []
        for transport in held:
            transport.flush()

    def remember(self, head: bytes, request: KnownRequest) -> None:
        if len(head) > KNOWN_MAX_BYTES:
            return
        known = self.known
        if len(known) >= KNOWN_MAX:
            known.clear()
        known[head] = request
