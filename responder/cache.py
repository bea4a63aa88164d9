"""In-memory OCSP answers: prebuilt ASGI messages per response, an LRU-ish cache and a memo.

Everything a warm hit needs is computed when a response enters the cache, not per request: the
ETag (SHA-256 of the DER), Last-Modified / Expires and Content-Length as shared header tuples. Only
`Cache-Control: max-age` depends on the clock. The protocol-level lane (responder/fast_lane.py)
serves the header block as wire bytes rebuilt at most once a second per response
(`CachedResponse.refresh_wire`); the ASGI path builds its two messages per request from the same
tuples (a dict and a tuple: cheap next to the rest of that path, and not kept per entry).

Eviction is CLOCK (second chance) over dict insertion order rather than an OrderedDict LRU: a hit
only sets a flag, which is cheaper than `move_to_end` on every request, and approximates LRU well.
"""

from __future__ import annotations

import functools
import hashlib
from email.utils import formatdate
from typing import Any

from revoc.cache_tags import CACHE_TAG, SURROGATE_KEY, ocsp_tags, tag_headers
from revoc.der.asn1 import DerError, expect, read_tlv

# certStatus index for metrics: good, revoked, unknown (the tags of CertStatus CHOICE).
STATUS_GOOD, STATUS_REVOKED, STATUS_UNKNOWN = 0, 1, 2
_STATUS_BY_TAG = {0x80: STATUS_GOOD, 0xA1: STATUS_REVOKED, 0x82: STATUS_UNKNOWN}
# Python object, dict slots, header tuples and wire-header bytes per entry beyond the DER, so
# cache_max_bytes means something: measured with tracemalloc at about 1.1 KB per served entry
# with a POST and a GET memo slot (header tuples shared between entries; the memo keys' own bytes
# are counted against the memo's budget), rounded up. (1.9 KB while three ASGI messages were
# kept per entry.)
ENTRY_OVERHEAD_BYTES = 1280
CONTENT_TYPE = (b"content-type", b"application/ocsp-response")
# Header shape required by RFC 5019 / RFC 9919 §6.2 (CONFORMANCE OCSP-HTTP-5).
_CACHE_CONTROL = b"max-age=%d, public, no-transform, must-revalidate"

CacheKey = tuple[int, bytes, int]  # (issuer id, minimal serial octets, HashAlgorithm value)
Message = dict[str, Any]


class InvalidResponse(ValueError):
    """A stored response is not the successful single-response OCSPResponse we expect."""


def inspect_response(der: bytes) -> tuple[bytes, int, int]:
    """(CertID DER of the first SingleResponse, status index, number of SingleResponses).

    The responder must echo the request's CertID byte for byte (CONFORMANCE OCSP-RESP-9), so the
    cache keeps the CertID each stored response carries and compares it with the request's.
    """
    try:
        size = len(der)
        start, end = expect(der, 0, size, 0x30)  # OCSPResponse
        _s, status_end = expect(der, start, end, 0x0A)
        if der[_s:status_end] != b"\x00":
            raise InvalidResponse("not a successful OCSPResponse")
        rb_start, rb_end = expect(der, status_end, end, 0xA0)
        rb_start, rb_end = expect(der, rb_start, rb_end, 0x30)  # ResponseBytes
        _o, oid_end = expect(der, rb_start, rb_end, 0x06)
        b_start, b_end = expect(der, oid_end, rb_end, 0x04)
        b_start, b_end = expect(der, b_start, b_end, 0x30)  # BasicOCSPResponse
        t_start, t_end = expect(der, b_start, b_end, 0x30)  # tbsResponseData
        tag, _c, pos = read_tlv(der, t_start, t_end)
        if tag == 0xA0:  # explicit version
            tag, _c, pos = read_tlv(der, pos, t_end)
        if tag not in (0xA1, 0xA2):
            raise InvalidResponse("no responderID")
        _p, pos = expect(der, pos, t_end, 0x18)  # producedAt
        r_start, r_end = expect(der, pos, t_end, 0x30)  # responses
        count = 0
        cert_id = b""
        status = STATUS_UNKNOWN
        pos = r_start
        while pos < r_end:
            s_start, s_end = expect(der, pos, r_end, 0x30)
            if count == 0:
                _i, cid_end = expect(der, s_start, s_end, 0x30)
                cert_id = der[s_start:cid_end]
                status_tag = der[cid_end]
                if status_tag not in _STATUS_BY_TAG:
                    raise InvalidResponse("unknown certStatus")
                status = _STATUS_BY_TAG[status_tag]
            count += 1
            pos = s_end
    except (DerError, IndexError) as exc:
        raise InvalidResponse(f"stored OCSP response is malformed: {exc}") from exc
    if count == 0:
        raise InvalidResponse("no SingleResponse")
    return cert_id, status, count


def http_date(epoch: int) -> bytes:
    return formatdate(epoch, usegmt=True).encode("ascii")


# Header tuples shared between entries: responses pre-signed in one chunk share their times and
# mostly their length, so a million cached responses need only a few thousand distinct tuples.
@functools.lru_cache(maxsize=4096)
def _content_length(length: int) -> tuple[bytes, bytes]:
    return (b"content-length", str(length).encode("ascii"))


@functools.lru_cache(maxsize=4096)
def _date_header(name: bytes, epoch: int) -> tuple[bytes, bytes]:
    return (name, http_date(epoch))


@functools.lru_cache(maxsize=4096)
def _cache_control(max_age: int) -> tuple[bytes, bytes]:
    return (b"cache-control", _CACHE_CONTROL % max_age)


def _ocsp_tag_headers(key: CacheKey) -> tuple[tuple[bytes, bytes], tuple[bytes, bytes]]:
    """`Surrogate-Key` and `Cache-Tag` of an answer about one certificate (revoc/cache_tags.py)."""
    issuer_id, serial, _algorithm = key
    headers = tag_headers(ocsp_tags(issuer_id, int.from_bytes(serial, "big")))
    return ((SURROGATE_KEY.lower().encode(), headers[SURROGATE_KEY].encode()),
            (CACHE_TAG.lower().encode(), headers[CACHE_TAG].encode()))


class CachedResponse:
    """One successful DER OCSPResponse with everything HTTP needs, built once."""

    __slots__ = (
        "alive",
        "cert_id",
        "der",
        "etag",
        "key",
        "max_age_cap",
        "next_update",
        "referenced",
        "size",
        "static_headers",
        "status",
        "this_update",
        "wire_head",
        "wire_second",
    )

    def __init__(
        self,
        der: bytes,
        this_update: int,
        next_update: int,
        *,
        key: CacheKey | None = None,
        max_age_cap: int | None = None,
    ) -> None:
        self.cert_id, self.status, _count = inspect_response(der)
        self.der = der
        self.key = key
        self.this_update = this_update
        self.next_update = next_update
        # A live `unknown` may turn into an authoritative answer within minutes (BR 15-minute
        # rule, CONFORMANCE OCSP-HTTP-6): let HTTP caches keep it only briefly.
        if max_age_cap is None and self.status == STATUS_UNKNOWN:
            max_age_cap = 60
        self.max_age_cap = max_age_cap
        self.etag = b'"' + hashlib.sha256(der).hexdigest().encode("ascii") + b'"'
        self.size = len(der) + ENTRY_OVERHEAD_BYTES
        # Tuples, not lists: a tuple of bytes pairs leaves the cyclic GC's books at its next
        # collection, a list never does (see responder/gc_policy.py for why that matters).
        self.static_headers: tuple[tuple[bytes, bytes], ...] = (
            CONTENT_TYPE,
            _content_length(len(der)),
            (b"etag", self.etag),
            _date_header(b"last-modified", this_update),
            _date_header(b"expires", next_update),
        )
        if key is not None:  # issue 13 point 7: tags for CDNs that purge by tag
            tags = _ocsp_tag_headers(key)
            self.static_headers += tags
            self.size += len(tags[0][1]) + len(tags[1][1])
        self.alive = True
        self.referenced = False
        self.wire_head = b""
        self.wire_second = -1

    def cache_control_at(self, second: int) -> tuple[bytes, bytes]:
        """Cache-Control for this second: max-age counts down to nextUpdate."""
        max_age = self.next_update - second
        if self.max_age_cap is not None and max_age > self.max_age_cap:
            max_age = self.max_age_cap
        if max_age < 0:
            max_age = 0
        return _cache_control(max_age)

    def refresh_wire(self, second: int) -> None:
        """Rebuild the header lines as HTTP/1.1 wire bytes for this second, for the
        protocol-level lane (responder/fast_lane.py): what uvicorn writes after its status line
        and Date header. Only bytes, which the cyclic GC does not track, so a lane hit
        allocates nothing it has to scan (responder/gc_policy.py)."""
        headers = (*self.static_headers, self.cache_control_at(second))
        self.wire_head = b"".join([b"%s: %s\r\n" % pair for pair in headers]) + b"\r\n"
        self.wire_second = second

    def start_message(self, second: int) -> Message:
        """The ASGI `http.response.start` of a 200 for this second. Built per request, not
        kept: the ASGI path is the slow path (misses, conditional requests, REVOC_FAST_LANE off),
        and three kept messages per entry cost more memory than the rest of the entry."""
        return {"type": "http.response.start", "status": 200,
                "headers": (*self.static_headers, self.cache_control_at(second))}

    def not_modified_message(self, second: int) -> Message:
        """The 304 for this second: validators and freshness, no body (RFC 9110 §15.4.5)."""
        static = self.static_headers
        return {"type": "http.response.start", "status": 304,
                "headers": (static[2], static[3], static[4], self.cache_control_at(second))}

    def body_message(self) -> Message:
        return {"type": "http.response.body", "body": self.der}


class ResponseCache:
    """(issuer, serial, hash) -> CachedResponse, bounded in entries and bytes, plus the memo.

    The memo maps exact request bytes (POST body, or GET raw path) to the entry that answered them,
    so a repeated nonce-less request skips parsing. Memo values are the cache's own entries: when an
    entry is evicted or invalidated its `alive` flag drops and the memo forgets it lazily. The memo
    is bounded by the same entry count and a quarter of the byte budget; when full it is simply
    cleared (it refills from the cache at the cost of one parse per request).
    """

    __slots__ = (
        "_bytes",
        "_entries",
        "_max_bytes",
        "_max_entries",
        "_memo_bytes",
        "_memo_max_bytes",
        "generation",
        "get_memo",
        "post_memo",
    )

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._entries: dict[CacheKey, CachedResponse] = {}
        self._bytes = 0
        self.post_memo: dict[bytes, CachedResponse] = {}
        self.get_memo: dict[bytes, CachedResponse] = {}
        self._memo_bytes = 0
        self._memo_max_bytes = max_bytes // 4
        # Bumped by every invalidation: a fetch that started before one must not fill the cache
        # with what may be the answer from before the change.
        self.generation = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size_bytes(self) -> int:
        return self._bytes

    @property
    def memo_entries(self) -> int:
        return len(self.post_memo) + len(self.get_memo)

    def get(self, key: CacheKey) -> CachedResponse | None:
        entry = self._entries.get(key)
        if entry is not None:
            entry.referenced = True
        return entry

    def put(self, entry: CachedResponse) -> None:
        key = entry.key
        if key is None or self._max_entries == 0 or entry.size > self._max_bytes:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            old.alive = False
            self._bytes -= old.size
        self._entries[key] = entry
        self._bytes += entry.size
        self._evict()

    def _evict(self) -> None:
        entries = self._entries
        while len(entries) > self._max_entries or self._bytes > self._max_bytes:
            key = next(iter(entries))
            entry = entries.pop(key)
            if entry.referenced and len(entries) > 0:
                entry.referenced = False  # second chance: back to the young end
                entries[key] = entry
                continue
            entry.alive = False
            self._bytes -= entry.size

    def remember(self, memo: dict[bytes, CachedResponse], request: bytes,
                 entry: CachedResponse) -> None:
        """Memoize request bytes -> entry (only cache residents: they can be invalidated)."""
        if not entry.alive or entry.key is None or self._entries.get(entry.key) is not entry:
            return
        if (self.memo_entries >= self._max_entries
                or self._memo_bytes + len(request) > self._memo_max_bytes):
            self.post_memo.clear()
            self.get_memo.clear()
            self._memo_bytes = 0
        memo[request] = entry
        self._memo_bytes += len(request)

    def invalidate(self, issuer_id: int, serial: bytes) -> int:
        """Drop every hash variant of one certificate; returns how many entries went."""
        self.generation += 1
        dropped = 0
        for algorithm in (1, 2, 3, 4):
            entry = self._entries.pop((issuer_id, serial, algorithm), None)
            if entry is not None:
                entry.alive = False
                self._bytes -= entry.size
                dropped += 1
        return dropped

    def clear(self) -> None:
        """Forget everything (reconnect after missed notifications, bulk changes)."""
        self.generation += 1
        for entry in self._entries.values():
            entry.alive = False
        self._entries.clear()
        self._bytes = 0
        self.post_memo.clear()
        self.get_memo.clear()
        self._memo_bytes = 0
