"""The OCSP hot path: a raw ASGI callable for POST /ocsp and GET /ocsp/{base64}.

No Request/Response objects: a warm hit is one dict lookup on the exact request bytes (the memo),
an integer compare against nextUpdate and two small ASGI messages; most warm hits never get here,
responder/fast_lane.py answers them in the HTTP protocol through `lane_get` / `lane_post`. Misses
go through
parse -> issuer index -> (issuer, serial, hash) cache -> PostgreSQL -> live signer -> clean error
(ARCHITECTURE "The OCSP hot path").

Policies (CONFORMANCE sections 1-3; settings named in brackets):

- unknown issuer or unsupported CertID hash -> `unauthorized` (OCSP-REQ-4);
- serial never issued -> `unknown` signed live [live_signing], else `unauthorized`; never `good`;
- nonce: pre-signed answers carry none (OCSP-RESP-14); with [live_signing] nonce requests are
  signed live and the nonce echoed; 0 or >128 octets -> `malformedRequest` (RFC 9654, OCSP-REQ-9);
- the request's CertID is echoed byte for byte: when the stored response's CertID differs (other
  parameter encoding, serial padding, a hash not pre-signed) it is signed live [live_signing],
  else `unauthorized` — never a mismatched CertID (OCSP-RESP-9);
- several CertIDs -> one live-signed response covering all [live_signing], else
  `malformedRequest` like Go responders (OCSP-REQ-7) — never a partial answer;
- a stored response past nextUpdate is never served: fetch again, sign live, or `tryLater`;
- a stored response signed before the certificate's latest change (a revocation the presigner
  has not reflected yet) is never served either: live signature, or `tryLater`;
- PostgreSQL unreachable (pool acquire / query over `STORE_TIMEOUT`) -> `tryLater` on a miss.

HTTP (RFC 5019 / RFC 9919, OCSP-HTTP-*): every OCSP-level answer is HTTP 200; errors carry
`Cache-Control: no-cache, no-store, max-age=0`; other methods get 405, oversize bodies 413 and
oversize GET paths 414. Any exception on this path is answered with `internalError`.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from time import perf_counter
from typing import Any
from urllib.parse import unquote_to_bytes

from responder.cache import CachedResponse, CacheKey, Message, ResponseCache
from responder.metrics import (
    SOURCE_CACHE,
    SOURCE_DATABASE,
    SOURCE_LIVE,
    SOURCE_MEMO,
    ResponderMetrics,
)
from responder.sources import (
    PENDING,
    CertRecord,
    IssuerEntry,
    IssuerIndex,
    ResponseStore,
    StoreUnavailable,
)
from revoc.der.ocsp import ERROR_RESPONSES, MalformedRequest, OcspRequest, parse_ocsp_request
from revoc.model import OcspResponseStatus

log = logging.getLogger("revoc.responder")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Messages = tuple[Message, Message]

MALFORMED = OcspResponseStatus.malformedRequest
INTERNAL = OcspResponseStatus.internalError
TRY_LATER = OcspResponseStatus.tryLater
UNAUTHORIZED = OcspResponseStatus.unauthorized
# How long a miss may wait for PostgreSQL (pool acquire, then the query) before `tryLater`.
STORE_TIMEOUT = 1.5
_NO_CACHE = (b"cache-control", b"no-cache, no-store, max-age=0")
_BASE64URL = bytes.maketrans(b"-_", b"+/")


def _error_messages(status: OcspResponseStatus) -> Messages:
    body = ERROR_RESPONSES[status]
    headers = [
        (b"content-type", b"application/ocsp-response"),
        (b"content-length", str(len(body)).encode()),
        _NO_CACHE,
    ]
    return ({"type": "http.response.start", "status": 200, "headers": headers},
            {"type": "http.response.body", "body": body})


def _http_error(code: int, extra: list[tuple[bytes, bytes]] | None = None) -> Messages:
    body = {405: b"method not allowed\n", 413: b"request too large\n",
            414: b"request URI too long\n"}[code]
    headers = [(b"content-type", b"text/plain; charset=utf-8"),
               (b"content-length", str(len(body)).encode()), _NO_CACHE, *(extra or [])]
    return ({"type": "http.response.start", "status": code, "headers": headers},
            {"type": "http.response.body", "body": body})


_EMPTY_BODY: Message = {"type": "http.response.body", "body": b""}


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


class ResponderState:
    """What the lifespan provides to the endpoint: issuer index and store (None until loaded)."""

    __slots__ = ("index", "store")

    def __init__(self) -> None:
        self.index: IssuerIndex | None = None
        self.store: ResponseStore | None = None


class OcspEndpoint:
    """Raw ASGI app answering OCSP over HTTP; see the module docstring for the policies."""

    def __init__(
        self,
        *,
        cache: ResponseCache,
        state: ResponderState,
        metrics: ResponderMetrics,
        now: Callable[[], float],
        max_request_bytes: int,
        live_signing: bool,
        presigned_hashes: frozenset[int] = frozenset((1, 2, 3, 4)),
    ) -> None:
        self.cache = cache
        self.state = state
        self.metrics = metrics
        self._now = now
        self._max_body = max_request_bytes
        # A GET path carries base64 (4/3) that may be percent-encoded (up to 3x).
        self._max_path = 5 + 1 + 4 * max_request_bytes
        self._live = live_signing
        self._presigned = presigned_hashes  # HashAlgorithm values the presigner signs
        self._errors = {status: _error_messages(status) for status in ERROR_RESPONSES}
        self._405 = _http_error(405, [(b"allow", b"GET, HEAD, POST")])
        self._413 = _http_error(413, [(b"connection", b"close")])
        self._414 = _http_error(414)

    # ------------------------------------------------------------------ ASGI entry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = perf_counter()
        metrics = self.metrics
        method = scope["method"]
        try:
            messages = await self._handle(scope, receive, method)
        except Exception:  # the hot path must never turn into a 5xx (OCSP-HTTP-8)
            log.exception("internal error answering an OCSP request")
            metrics.outcomes[INTERNAL] += 1
            messages = self._errors[INTERNAL]
        await send(messages[0])
        await send(_EMPTY_BODY if method == "HEAD" else messages[1])
        metrics.observe(perf_counter() - started)

    # ------------------------------------------------------------------ protocol lane

    def lane_get(self, raw_path: bytes,
                 headers: list[tuple[bytes, bytes]]) -> CachedResponse | None:
        """A fresh memo hit for GET `raw_path`, counted as served; None: take the ASGI path.

        For responder/fast_lane.py, which writes `entry.wire_head + entry.der` itself. A
        conditional request (If-None-Match) goes the ASGI way, which knows 304.
        """
        entry = self.cache.get_memo.get(raw_path)
        if entry is None or not entry.alive:
            return None
        for name, _value in headers:
            if name == b"if-none-match":
                return None
        return self._lane_hit(entry)

    def lane_post(self, body: bytes) -> CachedResponse | None:
        """A fresh memo hit for the POST body `body`, counted as served; None: take the ASGI
        path."""
        entry = self.cache.post_memo.get(body)
        if entry is None or not entry.alive:
            return None
        return self._lane_hit(entry)

    def lane_accepts_post(self, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether the lane may collect this POST's body itself: a Content-Length within the
        cap and no transfer coding (everything else is the ASGI path's to refuse or read)."""
        length = -1
        for name, value in headers:
            if name == b"content-length":
                length = int(value) if value.isdigit() else -1
            elif name == b"transfer-encoding":
                return False
        return 0 < length <= self._max_body

    def _lane_hit(self, entry: CachedResponse) -> CachedResponse | None:
        started = perf_counter()
        now = self._now()
        if now >= entry.next_update:
            return None
        second = int(now)
        if second != entry.wire_second:
            entry.refresh_wire(second)
        self._count_served(entry, SOURCE_MEMO)
        self.metrics.observe(perf_counter() - started)
        return entry

    async def _handle(self, scope: Scope, receive: Receive, method: str) -> Messages:
        if method == "POST":
            content_length = -1
            for name, value in scope["headers"]:
                if name == b"content-length":
                    try:
                        content_length = int(value)
                    except ValueError:
                        return self._reject(413)
                    break
            if content_length > self._max_body:
                return self._reject(413)  # refused before reading a byte of the body
            body = b""
            more = True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    return self._errors[MALFORMED]  # client went away; nobody reads this
                chunk = message.get("body", b"")
                body = body + chunk if body else chunk
                if len(body) > self._max_body:
                    return self._reject(413)
                more = message.get("more_body", False)
            entry = self.cache.post_memo.get(body)
            if entry is not None and entry.alive:
                hit = self._memo_hit(entry, None)
                if hit is not None:
                    return hit
            return await self._answer(body, self.cache.post_memo, body, None)
        if method in ("GET", "HEAD"):
            raw_path: bytes = scope.get("raw_path") or scope["path"].encode("latin-1")
            if len(raw_path) > self._max_path:
                return self._reject(414)
            etag_header = None
            for name, value in scope["headers"]:
                if name == b"if-none-match":
                    etag_header = value
                    break
            entry = self.cache.get_memo.get(raw_path)
            if entry is not None and entry.alive:
                hit = self._memo_hit(entry, etag_header)
                if hit is not None:
                    return hit
            try:
                der = decode_get_path(raw_path)
            except MalformedRequest:
                self.metrics.outcomes[MALFORMED] += 1
                return self._errors[MALFORMED]
            if len(der) > self._max_body:
                return self._reject(414)
            return await self._answer(der, self.cache.get_memo, raw_path, etag_header)
        return self._reject(405)

    def _reject(self, code: int) -> Messages:
        self.metrics.http_rejected[code] += 1
        return {405: self._405, 413: self._413, 414: self._414}[code]

    def _memo_hit(self, entry: CachedResponse, etag_header: bytes | None) -> Messages | None:
        now = self._now()
        if now >= entry.next_update:
            return None
        return self._serve(entry, now, SOURCE_MEMO, etag_header)

    def _serve(self, entry: CachedResponse, now: float, source: int,
               etag_header: bytes | None) -> Messages:
        second = int(now)
        self._count_served(entry, source)
        if etag_header is not None and _etag_matches(etag_header, entry.etag):
            return entry.not_modified_message(second), _EMPTY_BODY
        return entry.start_message(second), entry.body_message()

    def _count_served(self, entry: CachedResponse, source: int) -> None:
        """Mark a fresh entry as used and count it as served."""
        entry.referenced = True
        metrics = self.metrics
        metrics.outcomes[0] += 1
        metrics.statuses[entry.status] += 1
        metrics.sources[source] += 1
        if entry.this_update < metrics.oldest_this_update:
            metrics.oldest_this_update = entry.this_update

    def _error(self, status: OcspResponseStatus) -> Messages:
        self.metrics.outcomes[status] += 1
        return self._errors[status]

    # ------------------------------------------------------------------ misses

    async def _answer(self, der: bytes, memo: dict[bytes, CachedResponse], memo_key: bytes,
                      etag_header: bytes | None) -> Messages:
        try:
            request = parse_ocsp_request(der)
        except MalformedRequest:
            return self._error(MALFORMED)
        index = self.state.index
        store = self.state.store
        if index is None or store is None:
            return self._error(TRY_LATER)  # issuers not loaded yet: we cannot say who we serve
        if len(request.cert_ids) > 1:
            if not self._live:
                return self._error(MALFORMED)  # OCSP-REQ-7: whole request or nothing
            return await self._live_multi(request, index, store, etag_header)

        cert_id = request.cert_ids[0]
        algorithm = cert_id.hash_algorithm
        if algorithm is None:
            return self._error(UNAUTHORIZED)
        issuer = index.by_cert_id.get(
            (algorithm, cert_id.issuer_name_hash, cert_id.issuer_key_hash))
        if issuer is None:
            return self._error(UNAUTHORIZED)
        signer = issuer.signer if self._live else None
        serial = cert_id.serial_bytes
        key: CacheKey = (issuer.issuer.id, serial, algorithm.value)
        now = self._now()

        if request.nonce is not None and signer is not None:
            try:
                record = await store.certificate(issuer.issuer.id, serial)
                return self._serve_live(issuer, [(cert_id.raw, record)], request.nonce, None,
                                        etag_header)
            except StoreUnavailable:
                pass  # "most complete response": the pre-signed answer without nonce will do

        entry = self.cache.get(key)
        source = SOURCE_CACHE
        pending = False
        if entry is None or now >= entry.next_update:
            generation = self.cache.generation
            try:
                stored = await store.response(*key)
            except StoreUnavailable:
                return self._error(TRY_LATER)
            entry = None
            if stored is PENDING:
                # Known, but its status changed after the last signature (or it was never
                # signed): the fresh status, signed live, or `tryLater`; never the old answer.
                if signer is None:
                    # A CertID hash we never pre-sign is refused as before (OCSP-RESP-9).
                    return self._error(TRY_LATER if algorithm.value in self._presigned
                                       else UNAUTHORIZED)
                stored = None
                pending = True
            if stored is not None:
                entry = CachedResponse(stored[0], stored[1], stored[2], key=key)
                if now < entry.next_update and generation == self.cache.generation:
                    self.cache.put(entry)
            source = SOURCE_DATABASE
        if entry is not None and now < entry.next_update and entry.cert_id == cert_id.raw:
            messages = self._serve(entry, now, source, etag_header)
            if request.nonce is None:
                self.cache.remember(memo, memo_key, entry)
            return messages

        # No fresh pre-signed answer with this exact CertID.
        if signer is None:
            if entry is None:
                return self._error(UNAUTHORIZED)  # never issued, or not pre-signed (yet)
            if now < entry.next_update:
                return self._error(UNAUTHORIZED)  # a CertID variant we did not pre-sign
            return self._error(TRY_LATER)  # known, but nothing fresh to give
        generation = self.cache.generation
        try:
            record = await store.certificate(issuer.issuer.id, serial)
        except StoreUnavailable:
            return self._error(TRY_LATER)
        # Cache the live answer only where no pre-signed one lives (it would evict the
        # pre-signed variant other clients ask for) and no change raced with us.
        cache_it = ((entry is None or now >= entry.next_update) and not pending
                    and generation == self.cache.generation)
        return self._serve_live(issuer, [(cert_id.raw, record)], None,
                                key if cache_it else None, etag_header,
                                memo=memo if cache_it and request.nonce is None else None,
                                memo_key=memo_key)

    async def _live_multi(self, request: OcspRequest, index: IssuerIndex, store: ResponseStore,
                          etag_header: bytes | None) -> Messages:
        answers: list[tuple[bytes, CertRecord | None]] = []
        issuer: IssuerEntry | None = None
        for cert_id in request.cert_ids:
            algorithm = cert_id.hash_algorithm
            found = None if algorithm is None else index.by_cert_id.get(
                (algorithm, cert_id.issuer_name_hash, cert_id.issuer_key_hash))
            # One response has one signer: every CertID must belong to the same issuer.
            if found is None or found.signer is None or found is not (issuer or found):
                return self._error(UNAUTHORIZED)
            issuer = found
            try:
                record = await store.certificate(found.issuer.id, cert_id.serial_bytes)
            except StoreUnavailable:
                return self._error(TRY_LATER)
            answers.append((cert_id.raw, record))
        assert issuer is not None  # parse_ocsp_request never returns an empty list
        return self._serve_live(issuer, answers, request.nonce, None, etag_header)

    def _serve_live(
        self,
        issuer: IssuerEntry,
        answers: list[tuple[bytes, CertRecord | None]],
        nonce: bytes | None,
        key: CacheKey | None,
        etag_header: bytes | None,
        *,
        memo: dict[bytes, CachedResponse] | None = None,
        memo_key: bytes = b"",
    ) -> Messages:
        assert issuer.signer is not None
        now = self._now()
        der, this_update, next_update = issuer.signer.sign(
            answers, datetime.fromtimestamp(int(now), UTC), nonce)
        entry = CachedResponse(der, this_update, next_update, key=key)
        if key is not None:
            self.cache.put(entry)
            if memo is not None:
                self.cache.remember(memo, memo_key, entry)
        return self._serve(entry, now, SOURCE_LIVE, etag_header)


def _etag_matches(header: bytes, etag: bytes) -> bool:
    """If-None-Match: `*`, one entity tag, or a list; weak comparison (RFC 9110 §13.1.2)."""
    if header.strip() == b"*":
        return True
    for candidate in header.split(b","):
        candidate = candidate.strip()
        if candidate.startswith(b"W/"):
            candidate = candidate[2:]
        if candidate == etag:
            return True
    return False
