"""The one seam between the OCSP answer pipeline and an HTTP server: `FastPath.lookup`.

    lookup(method, target, headers, body, close) -> bytes | Later | None

- bytes: the complete HTTP/1.1 response for a warm hit (a fresh entry in the exact-request
  memo). Synchronous, allocates nothing the cyclic GC tracks, counted in the same metrics as the
  ASGI path (source `memo`).
- `Later`: a coroutine for every other GET of `/ocsp/...` and POST to `/ocsp` (cache misses,
  store reads, OCSP errors, 414): awaited by the adapter, it gives (the complete response, close
  the connection after it). It runs the ASGI endpoint's own decision code
  (`OcspEndpoint.respond`) without the ASGI machinery; never raises.
- None: "take the ASGI path": HEAD, conditional GETs (304), other paths and methods, GET targets
  with a query or fragment.

The bytes are rendered by responder/http_render.py, equal to what uvicorn sends for the ASGI
messages (tests/test_fast_lane.py compares them), with `connection: close` when `close`.

A server adapter finds the fast path in the ASGI lifespan state under `STATE_KEY` (uvicorn hands
that state to its protocols), never by walking the app: responder/fast_lane.py is the uvicorn
adapter. HTTP framing stays with the adapter: which connection a response goes to, keep-alive,
ordering behind an answer still pending, whether a POST body (Content-Length at most `max_body`,
no transfer coding) is worth collecting.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from time import perf_counter
from typing import Any

from responder.answer_sources import MemoSource
from responder.answers import Memo, Source
from responder.http_render import HttpRenderer
from responder.metrics import ResponderMetrics
from responder.ocsp_endpoint import OcspEndpoint

STATE_KEY = "revoc.fast_path"
POST_TARGET = b"/ocsp"
GET_PREFIX = b"/ocsp/"

# The response and whether to close the connection after it.
Later = Coroutine[Any, Any, tuple[bytes, bool]]


class FastPath:
    """Warm memo hits as response bytes; see the module docstring."""

    __slots__ = ("_endpoint", "_memo", "_metrics", "_now", "_renderer", "adapter", "max_body")

    def __init__(self, memo: MemoSource, renderer: HttpRenderer, metrics: ResponderMetrics,
                 now: Callable[[], float], max_body: int, endpoint: OcspEndpoint) -> None:
        self._memo = memo
        self._endpoint = endpoint
        self._renderer = renderer
        self._metrics = metrics
        self._now = now
        self.max_body = max_body
        # Per-worker state the server adapter keeps with the fast path it serves (the uvicorn
        # lane's held answers and known requests, responder/lane_worker.py).
        self.adapter: dict[Any, Any] = {}

    def lookup(self, method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]],
               body: bytes, close: bool) -> bytes | Later | None:
        """See the module docstring. `headers`: lower-case names, as received; `body`: the
        whole body of a POST (at most `max_body`), else empty."""
        started = perf_counter()
        if method == b"GET":
            for name, _value in headers:
                if name == b"if-none-match":
                    return None
            memo, key = Memo.GET, target
        elif method == b"POST" and target == POST_TARGET:
            memo, key = Memo.POST, body
        else:
            return None
        now = self._now()
        entry = self._memo.hit(memo, key, now)
        if entry is None:
            # Memo keys are paths ASGI routed to /ocsp, without a query: only a miss checks.
            if memo is Memo.GET and (not target.startswith(GET_PREFIX) or b"?" in target
                                     or b"#" in target):
                return None
            return self._later(method.decode("ascii"), target, headers, body, close)
        wire = self._renderer.ok_wire(entry, int(now), close)
        metrics = self._metrics
        metrics.served(entry, Source.MEMO)
        metrics.observe(perf_counter() - started)
        return wire

    async def _later(self, method: str, target: bytes, headers: Sequence[tuple[bytes, bytes]],
                     body: bytes, close: bool) -> tuple[bytes, bool]:
        return await self._endpoint.respond(method, target, headers, body, close)
