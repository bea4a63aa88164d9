"""Edge limits of `revoc serve`: what one hostile client may cost a worker (issue 12, point 6).

What was seen without them: one request with a 256 MB header took 96 s of server CPU, because
httptools rebuilds a header value that arrives in pieces by `bytes +=` (parser.pyx
`_on_header_value`; uvicorn's `on_url` does the same with the target), so every read copies
everything before it; 400 slowloris connections were held forever (uvicorn arms no timer before
the first request, nor while a request trickles in); ~20,000 idle connections used up the file
descriptors and every new client was reset, with nothing logged.

`EdgeProtocolFactory` is what `responder.app.uvicorn_options` gives uvicorn as its `http`
protocol: a picklable callable (uvicorn hands it to worker processes) that builds, once per
worker, a subclass of the wrapped protocol (uvicorn's httptools protocol or the OCSP fast lane)
with `EdgeMixin` in front, and one `ConnectionRegistry` per worker. The mixin keeps, per
connection, a phase and when it began:

- IDLE: a new connection before its first byte, and keep-alive between requests; closed after
  `keepalive_timeout`, and the first to go when a worker has too many connections.
- RECEIVING, from the first byte of a request until its last. The request line and headers are
  counted as they arrive, read by read, so the parser's copying is bounded by the limit, never by
  what the client sends: a head past `max_header_bytes` is refused with 431 (414 when the target
  alone is past `max_request_line_bytes`), and so is a request with more than `max_headers`
  header lines. A request not complete `request_timeout` after its first byte gets 408.
- BUSY: the request is in the app (or its answer is being written); the app bounds that itself.

A refusal writes one short answer (when no earlier answer is still pending on the connection)
with `connection: close`, half-closes, drops what still arrives (up to LINGER_BYTES, then stops
reading) and closes LINGER_SECONDS later, so the client can read the refusal. Timeouts are
enforced by one sweep timer per worker over two insertion-ordered dicts (no timer per request;
a warm hit only takes its connection out of the idle dict and puts it back), so a sweep costs
only what expired.

Past `max_connections` open connections in a worker, a new connection closes the connection that
has been idle longest; when none is idle the new one is answered 503 and closed. Either is
logged: the first time at once, then one summary line at most every `LOG_EVERY` seconds.
`max_connections` is clamped below the worker's file-descriptor limit, which `raise_fd_limit`
lifts to the hard limit when `revoc serve` starts.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE

from revoc.settings import Settings

log = logging.getLogger("revoc.responder.edge")

RECEIVING, BUSY, IDLE = 0, 1, 2
LOG_EVERY = 10.0
# How long, and how many more bytes, a refused connection is still read (and the bytes dropped)
# before it is closed: long enough for the client to read the refusal.
LINGER_SECONDS = 1.0
LINGER_BYTES = 256 * 1024
# Descriptors a worker keeps for itself: listening socket, database pool, LISTEN session, logs.
FD_RESERVE = 64
# Refusals the protocol answers itself (everything else is the app's).
_REASONS = {408: "request not received in time", 414: "request line too long",
            431: "request header fields too large", 503: "too many connections"}


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    """The edge settings one worker enforces (see revoc/settings.py for each)."""

    max_request_line_bytes: int = 16 * 1024
    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    request_timeout: float = 10.0
    keepalive_timeout: float = 5.0
    max_connections: int = 10_000

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgeLimits:
        return cls(settings.max_request_line_bytes, settings.max_header_bytes,
                   settings.max_headers, float(settings.request_timeout),
                   float(settings.keepalive_timeout), settings.max_connections)


def raise_fd_limit() -> tuple[int, int]:
    """Lift this process's soft RLIMIT_NOFILE to its hard limit (workers inherit it); returns
    (soft before, soft after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        try:  # Linux refuses "unlimited"; its ceiling is fs.nr_open
            with open("/proc/sys/fs/nr_open") as handle:
                target = int(handle.read())
        except (OSError, ValueError):
            return soft, soft
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (OSError, ValueError) as exc:
            log.warning("could not raise the file-descriptor limit from %d to %d: %s",
                        soft, target, exc)
            return soft, soft
        log.info("file-descriptor limit raised from %d to %d", soft, target)
        return soft, target
    return soft, soft


def _fd_ceiling() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 30 if soft == resource.RLIM_INFINITY else soft


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request the edge refuses."""


class ConnectionRegistry:
    """One worker's connections by phase, the sweep that enforces the timeouts, and the log."""

    def __init__(self, limits: EdgeLimits) -> None:
        self.limits = limits
        ceiling = _fd_ceiling() - FD_RESERVE
        self.max_connections = max(1, min(limits.max_connections, ceiling))
        if self.max_connections < limits.max_connections:
            log.warning("max_connections %d is above what the file-descriptor limit allows; "
                        "using %d", limits.max_connections, self.max_connections)
        self.connections: set[EdgeMixin] = set()
        # By phase start, oldest first. A request that arrives whole in one read is never listed
        # as receiving: the hot path costs two dict operations (out of idle, back into it).
        self.receiving: dict[EdgeMixin, None] = {}
        self.idle: dict[EdgeMixin, None] = {}
        # Raw bytes of an unfinished head past which it is refused (see data_received).
        self.raw_head_limit = 2 * (limits.max_header_bytes + limits.max_request_line_bytes)
        self.now = 0.0  # loop time, refreshed by the sweep (phases are stamped with it)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sweeping = False
        self._interval = max(0.05, min(1.0, limits.request_timeout / 4,
                                       limits.keepalive_timeout / 4))
        self.counts: Counter[str] = Counter()  # since the last log line
        self._logged_at = -1e9

    def __len__(self) -> int:
        return len(self.connections)

    # ---------------------------------------------------------------- membership

    def admit(self, protocol: EdgeMixin) -> bool:
        """Register a new connection; False: it must be refused (no room, nothing idle)."""
        if self._loop is None:
            self._loop = protocol.loop
        self.now = self._loop.time()
        if len(self) >= self.max_connections:
            if not self.idle:
                self.note("refused (no idle connection to close)")
                return False
            victim = next(iter(self.idle))
            idle_for = self.now - victim.edge_since
            self.forget(victim)
            victim.transport.close()
            self.note("closed the oldest idle connection", f"idle {idle_for:.1f} s")
        self.connections.add(protocol)
        self.idle[protocol] = None
        self._start_sweeping()
        return True

    def forget(self, protocol: EdgeMixin) -> None:
        self.connections.discard(protocol)
        self.receiving.pop(protocol, None)
        self.idle.pop(protocol, None)

    # ---------------------------------------------------------------- timeouts

    def _start_sweeping(self) -> None:
        if not self._sweeping and self._loop is not None:
            self._sweeping = True
            self._loop.call_later(self._interval, self._sweep)

    def _sweep(self) -> None:
        assert self._loop is not None
        self.now = now = self._loop.time()
        limit = self.limits.request_timeout
        while self.receiving:
            protocol = next(iter(self.receiving))
            if now - protocol.edge_since < limit:
                break
            self.forget(protocol)
            protocol.edge_timed_out()
        limit = self.limits.keepalive_timeout
        while self.idle:
            protocol = next(iter(self.idle))
            if now - protocol.edge_since < limit:
                break
            self.forget(protocol)
            protocol.transport.close()
        self._flush_log()
        if len(self):
            self._loop.call_later(self._interval, self._sweep)
        else:
            self._sweeping = False

    # ---------------------------------------------------------------- log

    def note(self, what: str, detail: str = "") -> None:
        """Count an edge event; the first one is logged at once, later ones in summaries."""
        self.counts[what] += 1
        if self.now - self._logged_at >= LOG_EVERY:
            self._flush_log(detail)

    def _flush_log(self, detail: str = "") -> None:
        if not self.counts or self.now - self._logged_at < LOG_EVERY:
            return
        events = ", ".join(f"{what}: {count}" for what, count in sorted(self.counts.items()))
        extra = f" ({detail})" if detail else ""
        log.warning("edge limits acted (per worker: max %d connections, %d open): %s%s",
                    self.max_connections, len(self), events, extra)
        self.counts.clear()
        self._logged_at = self.now


class EdgeMixin:
    """Goes in front of uvicorn's httptools protocol (or a subclass); see the module docstring.

    Uses of the protocol's own members are the ones uvicorn's data flow documents: the parser
    callbacks, `transport`, `loop`, `url`, `cycle`, `pipeline`, `on_response_complete` and
    `send_400_response` (its hook for a request the parser gave up on)."""

    edge: ConnectionRegistry  # set on the class the factory builds, with the base's methods
    # the hot path extends, called directly (cheaper than super() on every request)
    _base_data_received: Callable[[bytes], None]
    _base_on_header: Callable[[bytes, bytes], None]
    _base_on_headers_complete: Callable[[], None]
    _base_on_message_complete: Callable[[], None]
    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    url: bytes
    cycle: Any
    pipeline: Any

    edge_phase = IDLE
    edge_since = 0.0
    _edge_in_head = True  # between the end of one request and the end of the next one's headers
    _edge_head_bytes = 0  # bytes received since the head began (at most one read past it)
    _edge_headers = 0
    _edge_header_bytes = 0
    _edge_refusal = 0  # status of a refusal in progress, or 0

    # ------------------------------------------------------------------ connection

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        edge = self.edge
        if not edge.admit(self):
            self._edge_refuse(503)
            return
        self.edge_since = edge.now

    def connection_lost(self, exc: Exception | None) -> None:
        self.edge.forget(self)
        super().connection_lost(exc)  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        if self._edge_refusal:  # refused: what still comes is dropped, up to a budget
            self._edge_head_bytes += len(data)
            if self._edge_head_bytes > LINGER_BYTES:
                self.transport.pause_reading()
            return
        edge = self.edge
        if self.edge_phase != RECEIVING:
            if self.edge_phase == IDLE:
                edge.idle.pop(self, None)
            self.edge_phase = RECEIVING
            self.edge_since = edge.now
        if self._edge_in_head:
            self._edge_head_bytes += len(data)
        self._base_data_received(data)
        if self._edge_refusal:
            return
        if self.edge_phase != RECEIVING:
            self._edge_maybe_idle()
            return
        if self not in edge.receiving:  # a request still coming in after this read
            edge.receiving[self] = None
        if self._edge_in_head and self._edge_head_bytes > edge.raw_head_limit:
            # A head still incomplete after this many raw bytes: refused without waiting for
            # the end of a header (the callbacks count exact sizes, but only of what the parser
            # completed; this bounds what it ever buffers and copies).
            long_line = len(getattr(self, "url", b"")) > edge.limits.max_request_line_bytes
            self._edge_refuse(414 if long_line else 431)

    # ------------------------------------------------------------------ parser callbacks

    def on_url(self, url: bytes) -> None:
        # uvicorn's on_url is `self.url += url`: done here, once the length is known to fit.
        target = self.url + url
        if len(target) > self.edge.limits.max_request_line_bytes:
            self._edge_refusal = 414
            raise _Refused
        self._edge_header_bytes += len(url)
        self.url = target

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self.edge.limits
        self._edge_headers += 1
        self._edge_header_bytes += len(name) + len(value) + 4
        if (self._edge_headers > limits.max_headers
                or self._edge_header_bytes > limits.max_header_bytes):
            self._edge_refusal = 431
            raise _Refused
        self._base_on_header(name, value)

    def on_headers_complete(self) -> None:
        self._edge_in_head = False
        self._base_on_headers_complete()

    def on_message_complete(self) -> None:
        self._edge_in_head = True
        self._edge_head_bytes = self._edge_headers = self._edge_header_bytes = 0
        if self.edge_phase == RECEIVING:
            edge = self.edge
            edge.receiving.pop(self, None)
            self.edge_phase = BUSY
            self.edge_since = edge.now
        self._base_on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._edge_maybe_idle()

    def send_400_response(self, msg: str) -> None:
        if self._edge_refusal:  # the parser stopped because a callback refused the request
            self._edge_refuse(self._edge_refusal)
        else:
            super().send_400_response(msg)  # type: ignore[misc]

    # ------------------------------------------------------------------ helpers

    def _edge_maybe_idle(self) -> None:
        """BUSY -> IDLE once no answer is pending (the lane answers inside data_received, the
        ASGI path later, in on_response_complete)."""
        if self.edge_phase != BUSY:
            return
        cycle = self.cycle
        if (cycle is None or cycle.response_complete) and not self.pipeline:
            edge = self.edge
            self.edge_phase = IDLE
            self.edge_since = edge.now
            edge.idle[self] = None

    def edge_timed_out(self) -> None:
        """The sweep's verdict on a request not complete within request_timeout."""
        self._edge_refuse(408)

    def _edge_refuse(self, status: int) -> None:
        """Answer `status` (unless an earlier answer is still pending) and close."""
        self._edge_refusal = status
        self._edge_head_bytes = 0
        self.edge.forget(self)
        if status != 503:
            self.edge.note(f"{status} {_REASONS[status]}")
        transport = self.transport
        cycle = self.cycle
        if not transport.is_closing() and (cycle is None or cycle.response_complete):
            body = _REASONS[status].encode() + b"\n"
            transport.write(b"".join((
                STATUS_LINE[status], b"content-type: text/plain; charset=utf-8\r\n",
                b"content-length: %d\r\n" % len(body), b"connection: close\r\n\r\n", body)))
            if transport.can_write_eof():
                # Lingering close: closing with unread bytes would reset the connection and
                # the client could lose the answer; what still arrives is dropped unparsed.
                transport.write_eof()
                self.loop.call_later(LINGER_SECONDS, transport.close)
                return
        transport.close()


# The wrapped protocol's methods the mixin extends (checked when a worker builds its class).
RELIED_ON = ("connection_made", "connection_lost", "data_received", "on_url", "on_header",
             "on_headers_complete", "on_message_complete", "on_response_complete",
             "send_400_response")


class EdgeProtocolFactory:
    """uvicorn's `http` option: builds `protocol_class` with `EdgeMixin` in front. Picklable
    (the subclass and the registry are made in the worker that uses them)."""

    def __init__(self, protocol_class: type[asyncio.Protocol], limits: EdgeLimits) -> None:
        self.protocol_class = protocol_class
        self.limits = limits
        self._built: type[asyncio.Protocol] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"protocol_class": self.protocol_class, "limits": self.limits}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["protocol_class"], state["limits"])  # type: ignore[misc]

    @property
    def registry(self) -> ConnectionRegistry | None:
        """This worker's registry; None when the edge limits could not be applied."""
        return getattr(self.build(), "edge", None)

    def build(self) -> type[asyncio.Protocol]:
        if self._built is None:
            base = self.protocol_class
            missing = [name for name in RELIED_ON if not callable(getattr(base, name, None))]
            if missing:  # a uvicorn release that changed its protocol: say so, serve anyway
                log.error("edge limits OFF: %s.%s lacks %s, which responder/edge.py relies on",
                          base.__module__, base.__qualname__, ", ".join(missing))
                self._built = base
            else:
                self._built = type(f"Edge{base.__name__}", (EdgeMixin, base), {
                    "edge": ConnectionRegistry(self.limits),
                    **{f"_base_{name}": getattr(base, name) for name in (
                        "data_received", "on_header", "on_headers_complete",
                        "on_message_complete")}})
        return self._built

    def __call__(self, **kwargs: Any) -> asyncio.Protocol:
        return self.build()(**kwargs)
