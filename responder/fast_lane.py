"""The uvicorn adapter of the fast path: uvicorn's httptools protocol, plus one call.

On an OCSP request most of uvicorn's time goes to machinery around the app, not to the app: a
scope dict and a copy of the app state per request, a RequestResponseCycle, an asyncio.Event and
a Task per request, two regular expressions per response header. `FastLaneProtocol` skips all of
it for GET /ocsp/... and POST /ocsp: it asks `FastPath.lookup` (responder/fast_path.py, the only
thing of ours it calls) and

- writes the bytes itself on a warm hit (synchronously, inside data_received);
- on a miss gets a coroutine (the answer pipeline awaiting the store), runs it as a task and
  writes what it gives when done. Until then a stand-in for uvicorn's cycle (`_Pending`) tells
  uvicorn, the edge and the lane that a response is pending: a request pipelined behind it takes
  uvicorn's path, which queues it until `on_response_complete` (called when the lane's answer is
  written), so answers keep their order;
- when lookup says None, or anything is unusual, hands the request to uvicorn's own path to the
  ASGI app, unchanged:
  - HEAD, other methods and paths, conditional GETs (lookup's decisions);
  - `Expect: 100-continue`, upgrades and HTTP versions other than 1.0 and 1.1;
  - a POST without Content-Length, with a transfer coding, or over `FastPath.max_body`;
  - a request pipelined behind one still pending, and a transport whose writes are paused.

Like uvicorn, it closes after HTTP/1.0 or `Connection: close` (lookup renders `connection:
close`), and closes a keep-alive connection idle for `timeout_keep_alive` seconds after a lane
answer. Unlike uvicorn it does not cancel and re-arm a timer per answer (about a fifth of the
lane's time in profiles): one timer per connection notes the time of the last answer and, when it
fires early, sleeps for the rest; a miss's answer completes the same way when nothing is queued
behind it.

Per worker (responder/lane_worker.py, kept in `FastPath.adapter`): keep-alive answers are held
and written at the end of the event loop's pass (the connection's transport is wrapped so that
anything else written on it comes after them), and a read that is exactly the head of a request
the lane took before plus a body of the length that head declares is answered without parsing
(`_replay`: the same `lookup` call the parse led to; anything not at rest on the connection, and
every other read, is parsed).

Third-party internals, one place (STYLE habit 11): the attributes and methods of uvicorn's
protocol this subclass relies on (including the cycle attributes `_Pending` stands in for) are
listed in responder/lane_check.py, whose `self_check()` builds a protocol
against the installed uvicorn at start-up and `protocol_for()` falls back to plain "httptools",
with a warning, when anything is missing or fails. The byte-for-byte tests of
tests/test_fast_lane.py run against whatever uvicorn is installed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvicorn
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from responder.fast_path import STATE_KEY, FastPath, Later
from responder.lane_check import self_check
from responder.lane_worker import HeldTransport, KnownRequest, LaneWorker

__all__ = ["FastLaneProtocol", "protocol_for", "self_check"]

log = logging.getLogger("revoc.responder")

# What the lane is doing with the request being parsed.
_IDLE = 0  # nothing: uvicorn's path (or no request yet)
_ANSWERED = 1  # the lane wrote the answer at the end of the headers
_BODY = 2  # a POST whose body the lane collects before looking it up


class FastLaneProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol answering what `FastPath.lookup` answers (module docstring)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        fast = app_state.get(STATE_KEY)
        self._fast: FastPath | None = fast if isinstance(fast, FastPath) else None
        self._lane_state = _IDLE
        self._lane_body = b""
        self._close_after = False
        self._keep_alive = True
        self._in_message = False
        self._last_answer = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None
        # Held answers and known requests (responder/lane_worker.py), one per worker.
        self._worker: LaneWorker | None = None
        self._held: HeldTransport | None = None
        if self._fast is not None:
            key = (type(self), self.loop)
            worker = self._fast.adapter.get(key)
            if worker is None:
                worker = self._fast.adapter[key] = LaneWorker(self.loop)
            self._worker = worker
        self._completed = 0  # messages completed while one read is parsed
        self._answered: KnownRequest | None = None  # the request the lane took in it
        self._answering = False  # a miss's answer is complete (see on_response_complete)

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self._worker is not None:
            self._held = HeldTransport(transport, self._worker)
            self.transport = self._held  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        worker = self._worker
        if worker is None or self._in_message:
            super().data_received(data)
            return
        head_end = data.find(b"\r\n\r\n") + 4
        if head_end > 3:
            known = worker.known.get(data if head_end == len(data) else data[:head_end])
            if (known is not None and len(data) - head_end == known[3]
                    and self._replay(known, data[head_end:] if known[3] else b"")):
                return
        # Parsed; remembered when it was one whole request the lane took.
        self._completed = 0
        self._answered = None
        super().data_received(data)
        answered = self._answered
        if answered is not None:
            self._answered = None
            if (self._completed == 1 and not self._in_message and head_end > 3
                    and len(data) - head_end == answered[3]):
                worker.remember(data[:head_end], answered)

    def _replay(self, known: KnownRequest, body: bytes) -> bool:
        """Answer a known request (responder/lane_worker.py) as the parse of its bytes would
        have; False: parse them (something on the connection is not at rest)."""
        fast = self._fast
        assert fast is not None
        if ((self.cycle is not None and not self.cycle.response_complete)
                or self.pipeline
                or self.timeout_keep_alive_task is not None
                or self._close_after
                or self.flow.write_paused
                or self.transport.is_closing()):
            return False
        method, target, headers, _length = known
        try:
            wire = fast.lookup(method, target, headers, body, False)
        except Exception:  # as in on_headers_complete: the parsed path decides
            log.exception("fast lane failed; answering through ASGI")
            return False
        if wire is None:
            return False
        self._keep_alive = True
        self._lane_state = _ANSWERED
        if type(wire) is bytes:
            self._write(wire)
        else:
            self._later(wire)  # type: ignore[arg-type]
        self.on_message_complete()  # as the parser would: the edge (if any) sees it too
        return True

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        # uvicorn builds its scope here; the lane defers that until a request needs it.
        self.url = b""
        self.headers = []
        self.expect_100_continue = False
        self._lane_state = _IDLE
        self._lane_body = b""
        self._in_message = True

    def on_headers_complete(self) -> None:
        try:
            answered = self._lane_headers()
        except Exception:  # the lane must never cost an answer: uvicorn's path decides
            log.exception("fast lane failed; answering through ASGI")
            self._lane_state = _IDLE
            answered = False
        if not answered:
            self._to_uvicorn()

    def _lane_headers(self) -> bool:
        """Answer or start collecting at the end of the headers; False: uvicorn's path."""
        fast = self._fast
        parser = self.parser
        if (fast is None
                or (self.cycle is not None and not self.cycle.response_complete)
                or self.transport.is_closing()
                or self.flow.write_paused
                or self.expect_100_continue
                or parser.should_upgrade()):
            return False
        version = parser.get_http_version()
        # uvicorn's rule: HTTP/1.0 never keeps the connection (openssl ocsp and nginx's
        # stapling requests are HTTP/1.0 with one request per connection).
        if version == "1.1":
            self._keep_alive = parser.should_keep_alive()
        elif version == "1.0":
            self._keep_alive = False
        else:
            return False
        method = parser.get_method()
        if method == b"POST":
            if not self._body_wanted(fast.max_body):
                return False
            self._lane_state = _BODY
            return True
        close = self._closing()
        wire = fast.lookup(method, self.url, self.headers, b"", close)
        if wire is None:
            return False
        self._lane_state = _ANSWERED
        if not close:
            self._answered = (method, self.url, tuple(self.headers), 0)
        if type(wire) is bytes:
            self._write(wire)
        else:
            self._later(wire)  # type: ignore[arg-type]
        return True

    def _body_wanted(self, max_body: int) -> bool:
        """A Content-Length within the cap and no transfer coding (everything else is the ASGI
        path's to refuse or read)."""
        length = -1
        for name, value in self.headers:
            if name == b"content-length":
                length = int(value) if value.isdigit() else -1
            elif name == b"transfer-encoding":
                return False
        return 0 < length <= max_body

    def on_body(self, body: bytes) -> None:
        state = self._lane_state
        if state == _BODY:
            self._lane_body += body
        elif state == _IDLE:
            super().on_body(body)
        # _ANSWERED: a body on a GET the lane answered; the ASGI path ignores it too.

    def on_message_complete(self) -> None:
        state = self._lane_state
        self._lane_state = _IDLE
        self._in_message = False
        self._completed += 1
        if state == _IDLE:
            super().on_message_complete()
            return
        if state == _ANSWERED:
            return
        body, self._lane_body = self._lane_body, b""
        fast = self._fast
        assert fast is not None
        close = self._closing()
        try:
            wire = fast.lookup(b"POST", self.url, self.headers, body, close)
        except Exception:  # as in on_headers_complete: let uvicorn's path answer
            log.exception("fast lane failed; answering through ASGI")
            wire = None
        if wire is not None and not close:
            self._answered = (b"POST", self.url, tuple(self.headers), len(body))
        if type(wire) is bytes:
            self._write(wire)
            return
        if wire is not None:
            self._later(wire)  # type: ignore[arg-type]
            return
        # A miss: hand uvicorn the whole request, body included, as if it had read it.
        self._to_uvicorn()
        self.cycle.body += body
        if self._close_after:
            self.cycle.keep_alive = False
        super().on_message_complete()

    def shutdown(self) -> None:
        if self._lane_state == _BODY:
            self._close_after = True  # answer the POST being read, then close
            return
        super().shutdown()

    def send_400_response(self, msg: str) -> None:
        self._answered = None  # what this read carried was not only the answered request
        super().send_400_response(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        super().connection_lost(exc)

    # ------------------------------------------------------------------ helpers

    def _closing(self) -> bool:
        return not self._keep_alive or self._close_after

    def _to_uvicorn(self) -> None:
        """Build uvicorn's per-request state (what its on_message_begin would have) and start
        the request its way."""
        url, headers, expect = self.url, self.headers, self.expect_100_continue
        super().on_message_begin()
        self.url = url
        self.headers = headers
        self.scope["headers"] = headers
        self.expect_100_continue = expect
        super().on_headers_complete()

    def _write(self, wire: bytes) -> None:
        """Send one lane answer (held for the end of the loop's pass, responder/lane_worker.py)
        and do what uvicorn does when a response completes."""
        self.server_state.total_requests += 1
        held = self._held
        if self._closing() or held is None:
            self.transport.write(wire)
            if self._closing():
                self.transport.close()
            return
        held.hold(wire)
        self._last_answer = self.loop.time()
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_later(self.timeout_keep_alive, self._idle_check)

    def _later(self, later: Later) -> None:
        """Answer when `later` is done (a miss: the pipeline awaits the store). Until then a
        stand-in for uvicorn's cycle says a response is pending, so a request pipelined behind
        this one takes uvicorn's path, which queues it (and stops reading) until
        `on_response_complete`; the edge keeps the connection busy meanwhile."""
        pending = _Pending(not self._closing())
        self.cycle = pending  # type: ignore[assignment]
        task = self.loop.create_task(self._answer_later(later, pending))
        tasks = self.tasks
        tasks.add(task)  # uvicorn waits for these at shutdown
        task.add_done_callback(tasks.discard)

    async def _answer_later(self, later: Later, pending: _Pending) -> None:
        try:
            try:
                wire, close = await later
            except Exception:  # never expected (the pipeline answers internalError itself)
                log.exception("fast lane failed answering a miss; closing the connection")
                wire, close = b"", True
            transport = self.transport
            if pending.disconnected or transport.is_closing():
                return
            if self.flow.write_paused:
                await self.flow.drain()  # as uvicorn's send does
                if pending.disconnected or transport.is_closing():
                    return
            held = self._held
            if held is not None and not close and pending.keep_alive:
                held.hold(wire)  # with the other answers of this pass (one batch's, say)
            else:
                transport.write(wire)
        finally:
            # Only now may a request pipelined behind this one be answered.
            pending.response_complete = True
        if close or not pending.keep_alive:
            transport.close()
        self._answering = True
        try:
            self.on_response_complete()  # through the edge, if any: the connection is idle
        finally:
            self._answering = False

    def on_response_complete(self) -> None:
        if not self._answering or self.pipeline or self.transport.is_closing():
            super().on_response_complete()  # uvicorn's: the next pipelined request, keep-alive
            return
        # A miss answered and nothing queued behind it: what _write does after a warm answer
        # (the lane's keep-alive timer, not one of uvicorn's armed per response).
        self.server_state.total_requests += 1
        self.flow.resume_reading()
        self._last_answer = self.loop.time()
        if self._idle_timer is None:
            self._idle_timer = self.loop.call_later(self.timeout_keep_alive, self._idle_check)

    def _idle_check(self) -> None:
        """The keep-alive timeout after lane answers: close when nothing happened for
        `timeout_keep_alive` seconds since the last one, else look again when it would be."""
        self._idle_timer = None
        if self.transport.is_closing():
            return
        remaining = self._last_answer + self.timeout_keep_alive - self.loop.time()
        if remaining > 0:
            self._idle_timer = self.loop.call_later(remaining, self._idle_check)
            return
        # Since the last lane answer: a request being received, one in the app, or one that
        # uvicorn answered (it then runs its own keep-alive timer) -- all uvicorn's to time.
        if (self._in_message or self.timeout_keep_alive_task is not None
                or (self.cycle is not None and not self.cycle.response_complete)):
            return
        self.transport.close()


class _NoEvent:
    """What uvicorn's connection_lost sets on a cycle; nothing waits on a lane answer."""

    __slots__ = ()

    def set(self) -> None:
        return None


class _Pending:
    """Stands in for uvicorn's RequestResponseCycle while a lane answer is pending: the
    attributes uvicorn's protocol (connection_lost, shutdown, on_headers_complete), the edge
    and the lane read or set on `cycle`."""

    __slots__ = ("disconnected", "keep_alive", "response_complete")
    message_event = _NoEvent()

    def __init__(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive
        self.response_complete = False
        self.disconnected = False


def protocol_for(enabled: bool) -> type[HttpToolsProtocol] | str:
    """uvicorn's `http` option: the lane when enabled and the self-check passes, else plain
    "httptools" (with a warning saying what is missing when the check failed)."""
    if not enabled:
        return "httptools"
    missing = self_check()
    if missing:
        log.warning("fast lane off: uvicorn %s lacks what responder/fast_lane.py relies on "
                    "(%s); answering every request through ASGI", uvicorn.__version__,
                    ", ".join(missing))
        return "httptools"
    return FastLaneProtocol
