"""A lane through uvicorn's HTTP protocol for warm OCSP hits (issue 4 item 10).

On a warm hit most of uvicorn's time goes to machinery around the app, not to the app: a scope
dict and a copy of the app state per request, a RequestResponseCycle, an asyncio.Event and a Task
per request, and two regular expressions per response header. None of that is needed when the
answer is already in the memo: it is bytes rendered when the entry was last refreshed (at most once
a second, `CachedResponse.wire_head`).

`FastLaneProtocol` is uvicorn's httptools protocol with one addition. When a request is

- a GET whose exact path is in the GET memo, or
- a POST to `/ocsp` whose exact body is in the POST memo,

and the memoized response is fresh, the protocol writes the status line, uvicorn's own default
headers (Date) and the prerendered header lines and DER itself, in order, without a task; like
uvicorn it adds `connection: close` and closes after HTTP/1.0 or `Connection: close`. Anything
else takes uvicorn's normal path to the raw ASGI endpoint, which also fills the memo:

- a miss, or a response at or past its nextUpdate;
- HEAD, other methods and other paths;
- a conditional request (If-None-Match: the ASGI path knows 304);
- `Expect: 100-continue`, upgrades and HTTP versions other than 1.0 and 1.1;
- a POST without Content-Length, with a transfer coding, or over the size cap;
- a request pipelined behind one that is still in the app, and a transport whose writes are paused.

The lane and the ASGI path send the same bytes (tests/test_fast_lane.py compares them on the wire),
and the lane counts in the same metrics (source `memo`). uvicorn is pinned to a minor-version range
in pyproject.toml, since this subclass relies on the protocol's callbacks and attributes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from responder.ocsp_endpoint import OcspEndpoint

log = logging.getLogger("revoc.responder")

# What the lane is doing with the request being parsed.
_IDLE = 0  # nothing: uvicorn's path (or no request yet)
_ANSWERED = 1  # the lane wrote the answer at the end of the headers
_BODY = 2  # a POST to /ocsp whose body the lane collects before looking it up
_STATUS_200 = STATUS_LINE[200]
_CLOSE = b"connection: close\r\n\r\n"


def find_endpoint(app: Any) -> OcspEndpoint | None:
    """The OCSP endpoint of the responder app, below any middleware uvicorn wrapped around it."""
    for _depth in range(16):
        endpoint = getattr(app, "ocsp", None)
        if isinstance(endpoint, OcspEndpoint):
            return endpoint
        app = getattr(app, "app", None)
        if app is None:
            break
    return None


class _Prefix:
    """Status line and uvicorn's default headers as bytes, rebuilt when uvicorn replaces its
    header list (once a second, for Date)."""

    __slots__ = ("bytes", "source")

    def __init__(self) -> None:
        self.source: list[tuple[bytes, bytes]] | None = None
        self.bytes = b""

    def get(self, defaults: list[tuple[bytes, bytes]]) -> bytes:
        if defaults is not self.source:
            self.bytes = _STATUS_200 + b"".join([b"%s: %s\r\n" % pair for pair in defaults])
            self.source = defaults
        return self.bytes


class FastLaneProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol answering fresh memo hits itself (module docstring)."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._lane = find_endpoint(self.app)
        self._prefix = _Prefix()
        self._lane_state = _IDLE
        self._lane_body = b""
        self._close_after = False
        self._keep_alive = True

    # ------------------------------------------------------------------ parser callbacks

    def on_message_begin(self) -> None:
        # uvicorn builds its scope here; the lane defers that until a request needs it.
        self.url = b""
        self.headers = []
        self.expect_100_continue = False
        self._lane_state = _IDLE
        self._lane_body = b""

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
        lane = self._lane
        parser = self.parser
        if (lane is not None
                and (self.cycle is None or self.cycle.response_complete)
                and not self.transport.is_closing()
                and not self.flow.write_paused
                and not self.expect_100_continue
                and not parser.should_upgrade()):
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
            if method == b"GET":
                entry = lane.lane_get(self.url, self.headers)
                if entry is not None:
                    self._lane_state = _ANSWERED
                    self._write(entry.wire_head, entry.der)
                    return True
            elif method == b"POST" and self.url == b"/ocsp" and lane.lane_accepts_post(
                    self.headers):
                self._lane_state = _BODY
                return True
        return False

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
        if state == _IDLE:
            super().on_message_complete()
            return
        if state == _ANSWERED:
            return
        body, self._lane_body = self._lane_body, b""
        lane = self._lane
        assert lane is not None
        try:
            entry = lane.lane_post(body)
        except Exception:  # as in on_headers_complete: let uvicorn's path answer
            log.exception("fast lane failed; answering through ASGI")
            entry = None
        if entry is not None:
            self._write(entry.wire_head, entry.der)
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

    # ------------------------------------------------------------------ helpers

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

    def _write(self, head: bytes, der: bytes) -> None:
        """Send one lane answer and do what uvicorn does when a response completes."""
        prefix = self._prefix.get(self.server_state.default_headers)
        if self._keep_alive and not self._close_after:
            self.transport.write(b"".join((prefix, head, der)))
        else:
            # uvicorn adds this header last when it will close the connection.
            self.transport.write(b"".join((prefix, head[:-2], _CLOSE, der)))
        self.server_state.total_requests += 1
        if not self._keep_alive or self._close_after:
            self.transport.close()
            return
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler)
