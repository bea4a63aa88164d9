"""The OCSP endpoint as raw ASGI: decode the HTTP request, ask the answer pipeline, render.

POST /ocsp (body size-capped before a byte is read: 413) and GET or HEAD /ocsp/{base64} (path
size-capped: 414; URL-decoded base64, base64url and missing padding accepted, OCSP-HTTP-2/4)
become a `Query` for the source stack of responder/answer_sources.py, which holds every OCSP
policy; the `Answer` it returns is rendered by responder/http_render.py (200 with RFC 5019
headers, 304 for a matching If-None-Match, an uncacheable OCSP error). Other methods get 405.
Any exception on this path is answered with `internalError`, never a 5xx (OCSP-HTTP-8).

No Request/Response objects: a warm hit is one dict lookup on the exact request bytes and two
small ASGI messages. Under `revoc serve` most OCSP requests never get here as ASGI: the HTTP
server answers warm hits through the one call of responder/fast_path.py, and misses through
`respond`, the same decisions for a request whose body is already read, which the fast path
renders to wire bytes.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from time import perf_counter
from typing import Any
from urllib.parse import unquote_to_bytes

from responder.answer_sources import MemoSource
from responder.answers import Answer, Memo, Query, RequestTooLarge, Served
from responder.http_render import EMPTY_BODY, HttpRenderer, Messages, etag_matches
from responder.metrics import ResponderMetrics
from revoc.der.ocsp import MalformedRequest
from revoc.model import OcspResponseStatus

log = logging.getLogger("revoc.responder")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

INTERNAL = OcspResponseStatus.internalError
MALFORMED = OcspResponseStatus.malformedRequest
_BASE64URL = bytes.maketrans(b"-_", b"+/")


def decode_get_path(raw_path: bytes) -> bytes:
    """The DER request from a raw GET path `/ocsp/<url-encoded base64>` (OCSP-HTTP-2/4).

    The whole remainder after the mount point is the request (base64 contains '/'); leading
    slashes are dropped (a doubled slash after the mount point; DER's first octet 0x30 encodes as
    'M', so no request starts with '/'); percent-decoding only, never '+' -> space, and a space a
    client produced anyway is turned back into '+'; base64url and missing padding accepted.
    """
    encoded = raw_path[5:]
    if b"%" in encoded:
        encoded = unquote_to_bytes(encoded)
    encoded = encoded.lstrip(b"/").replace(b" ", b"+").translate(_BASE64URL).rstrip(b"=")
    if not encoded:
        raise MalformedRequest("empty GET request")
    encoded += b"=" * (-len(encoded) % 4)
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedRequest(f"GET path is not base64: {exc}") from exc


def _body_as_der(body: bytes) -> bytes:
    return body


class OcspEndpoint:
    """Raw ASGI app answering OCSP over HTTP; see the module docstring."""

    def __init__(
        self,
        *,
        stack: MemoSource,
        renderer: HttpRenderer,
        metrics: ResponderMetrics,
        now: Callable[[], float],
        max_request_bytes: int,
    ) -> None:
        self.stack = stack
        self.renderer = renderer
        self.metrics = metrics
        self._now = now
        self._max_body = max_request_bytes
        # A GET path carries base64 (4/3) that may be percent-encoded (up to 3x).
        self._max_path = 5 + 1 + 4 * max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = perf_counter()
        method = scope["method"]
        try:
            messages = await self._handle(scope, receive, method)
        except Exception:  # the hot path must never turn into a 5xx (OCSP-HTTP-8)
            messages = self._internal_error()
        await send(messages[0])
        await send(EMPTY_BODY if method == "HEAD" else messages[1])
        self.metrics.observe(perf_counter() - started)

    async def respond(self, method: str, raw_path: bytes,
                      headers: Sequence[tuple[bytes, bytes]], body: bytes,
                      close: bool) -> tuple[bytes, bool]:
        """The answer to a GET or POST whose body the HTTP server has read already (at most
        `max_request_bytes`, responder/fast_path.py's miss path) as HTTP/1.1 bytes: what uvicorn
        writes for the messages `__call__` sends (`HttpRenderer.messages_wire`; a 200 rendered
        straight to bytes), latency counted likewise; and whether to close after it. Never
        raises."""
        started = perf_counter()
        try:
            decided = await self._decide(method, raw_path, headers, body, wire=True)
        except Exception:  # as in __call__ (OCSP-HTTP-8)
            decided = self._internal_error()
        second = int(self._now())
        if isinstance(decided, Served):  # a 200 (no 304 with wire=True)
            answer = (self.renderer.fresh_wire(decided.entry, second, close), close)
        else:
            answer = self.renderer.messages_wire(decided, second, close)
        self.metrics.observe(perf_counter() - started)
        return answer

    def _internal_error(self) -> Messages:
        log.exception("internal error answering an OCSP request")
        self.metrics.outcomes[INTERNAL] += 1
        return self.renderer.error_messages(INTERNAL)

    async def _handle(self, scope: Scope, receive: Receive, method: str) -> Messages:
        body = b""
        raw_path = b""
        if method == "POST":
            read = await self._read_body(scope, receive)
            if isinstance(read, int):
                return self._reject(read)
            if read is None:
                return self.renderer.error_messages(MALFORMED)  # client went away
            body = read
        elif method in ("GET", "HEAD"):
            raw_path = scope.get("raw_path") or scope["path"].encode("latin-1")
        messages = await self._decide(method, raw_path, scope["headers"], body)
        assert not isinstance(messages, Served)  # only with wire=True
        return messages

    async def _decide(self, method: str, raw_path: bytes,
                      headers: Sequence[tuple[bytes, bytes]], body: bytes, *,
                      wire: bool = False) -> Messages | Served:
        etag_header = None
        if method == "POST":
            query = Query(Memo.POST, body, _body_as_der)
        elif method in ("GET", "HEAD"):
            if len(raw_path) > self._max_path:
                return self._reject(414)
            for name, value in headers:
                if name == b"if-none-match":
                    etag_header = value
                    break
            query = Query(Memo.GET, raw_path, self._get_der)
        else:
            return self._reject(405)
        try:
            answer = await self.stack.answer(query)
        except RequestTooLarge as exc:
            return self._reject(exc.code)
        if wire and etag_header is None and isinstance(answer, Served):
            self.metrics.served(answer.entry, answer.source)
            return answer  # a 200, rendered to bytes by `respond`
        return self._render(answer, etag_header)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | int | None:
        """The POST body; 413 when over the cap (refused before reading when Content-Length
        says so); None when the client went away."""
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    if int(value) > self._max_body:
                        return 413
                except ValueError:
                    return 413
                break
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            body = body + chunk if body else chunk
            if len(body) > self._max_body:
                return 413
            more = message.get("more_body", False)
        return body

    def _get_der(self, raw_path: bytes) -> bytes:
        der = decode_get_path(raw_path)
        if len(der) > self._max_body:
            raise RequestTooLarge(414)
        return der

    def _render(self, answer: Answer, etag_header: bytes | None) -> Messages:
        if isinstance(answer, Served):
            entry = answer.entry
            self.metrics.served(entry, answer.source)
            second = int(self._now())
            if etag_header is not None and etag_matches(etag_header, entry.etag):
                return self.renderer.not_modified_messages(entry, second)
            return self.renderer.ok_messages(entry, second)
        self.metrics.outcomes[answer] += 1
        return self.renderer.error_messages(answer)

    def _reject(self, code: int) -> Messages:
        self.metrics.http_rejected[code] += 1
        return self.renderer.refusal_messages(code)
