"""The one seam between the OCSP answer pipeline and an HTTP server: `FastPath.lookup`.

    lookup(method, target, headers, body, close) -> bytes | None

The complete HTTP/1.1 response for a warm hit (a fresh entry in the exact-request memo), or None:
"take the ASGI path", which answers everything else the slow way and fills the memo. It is
synchronous, allocates nothing the cyclic GC tracks, and counts what it serves in the same
metrics as the ASGI path (source `memo`). What it answers:

- GET `target` whose exact bytes are in the GET memo, without If-None-Match (304 is the ASGI
  path's);
- POST to `/ocsp` whose exact body is in the POST memo.

The bytes are rendered by responder/http_render.py, equal to what uvicorn sends for the ASGI
messages (tests/test_fast_lane.py compares them), with `connection: close` when `close`.

A server adapter finds the fast path in the ASGI lifespan state under `STATE_KEY` (uvicorn hands
that state to its protocols), never by walking the app: responder/fast_lane.py is the uvicorn
adapter. HTTP framing stays with the adapter: which connection a response goes to, keep-alive,
whether a POST body (Content-Length at most `max_body`, no transfer coding) is worth collecting.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from time import perf_counter

from responder.answer_sources import MemoSource
from responder.answers import Memo, Source
from responder.http_render import HttpRenderer
from responder.metrics import ResponderMetrics

STATE_KEY = "revoc.fast_path"
POST_TARGET = b"/ocsp"


class FastPath:
    """Warm memo hits as response bytes; see the module docstring."""

    __slots__ = ("_memo", "_metrics", "_now", "_renderer", "max_body")

    def __init__(self, memo: MemoSource, renderer: HttpRenderer, metrics: ResponderMetrics,
                 now: Callable[[], float], max_body: int) -> None:
        self._memo = memo
        self._renderer = renderer
        self._metrics = metrics
        self._now = now
        self.max_body = max_body

    def lookup(self, method: bytes, target: bytes, headers: Sequence[tuple[bytes, bytes]],
               body: bytes, close: bool) -> bytes | None:
        """The whole response for a fresh memo hit, counted as served; None: take the ASGI
        path. `headers`: lower-case names, as received."""
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
            return None
        wire = self._renderer.ok_wire(entry, int(now), close)
        metrics = self._metrics
        metrics.served(entry, Source.MEMO)
        metrics.observe(perf_counter() - started)
        return wire
