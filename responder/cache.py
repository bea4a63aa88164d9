"""In-memory OCSP answers: the response cache, keyed by `CacheKey`, and the exact-request memo.

An entry (`CachedResponse`) is a pre-signed or live-signed DER response plus what is computed once
when it enters: the CertID it carries, its status, validity and ETag. Rendering it for HTTP (header
lines, ASGI messages, wire bytes) is responder/http_render.py's, which keeps its own per-second
rendering, so a million cached entries carry no HTTP bytes.

Eviction is CLOCK (second chance) over dict insertion order rather than an OrderedDict LRU: a hit
only sets a flag, which is cheaper than `move_to_end` on every request, and approximates LRU well.
"""

from __future__ import annotations

import enum
import hashlib
from typing import NamedTuple

from revoc.der.asn1 import DerError, expect, read_tlv


class SingleStatus(enum.IntEnum):
    """certStatus of a response's (first) SingleResponse; the value is the metrics slot."""

    GOOD = 0
    REVOKED = 1
    UNKNOWN = 2


_STATUS_BY_TAG = {0x80: SingleStatus.GOOD, 0xA1: SingleStatus.REVOKED,
                  0x82: SingleStatus.UNKNOWN}
# Python object and dict slots per entry beyond the DER, so cache_max_bytes means something:
# measured with tracemalloc at about 1.1 KB per served entry with a POST and a GET memo slot while
# entries still kept shared header tuples and wire bytes (the memo keys' own bytes are counted
# against the memo's budget); kept, rounded up, now that they keep neither.
ENTRY_OVERHEAD_BYTES = 1280


class CacheKey(NamedTuple):
    """What one cached answer is for: the one key of the cache, the store and the miss batcher."""

    issuer_id: int
    serial: bytes  # minimal two's-complement octets, whatever padding the request carried
    hash_alg: int  # HashAlgorithm value of the CertID


class InvalidResponse(ValueError):
    """A stored response is not the successful single-response OCSPResponse we expect."""


def inspect_response(der: bytes) -> tuple[bytes, SingleStatus, int]:
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
        status = SingleStatus.UNKNOWN
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


class CachedResponse:
    """One successful DER OCSPResponse and what answering with it needs, computed once: the CertID
    it carries (echoed byte for byte, OCSP-RESP-9), its certificate status, its validity and its
    ETag. How it is written on the wire is responder/http_render.py's business, not the entry's."""

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
        "status",
        "this_update",
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
        if max_age_cap is None and self.status is SingleStatus.UNKNOWN:
            max_age_cap = 60
        self.max_age_cap = max_age_cap
        self.etag = b'"' + hashlib.sha256(der).hexdigest().encode("ascii") + b'"'
        self.size = len(der) + ENTRY_OVERHEAD_BYTES
        self.alive = True
        self.referenced = False

    def max_age_at(self, second: int) -> int:
        """Seconds an HTTP cache may keep this answer from `second` on: until nextUpdate, capped."""
        max_age = self.next_update - second
        if self.max_age_cap is not None and max_age > self.max_age_cap:
            max_age = self.max_age_cap
        return max(max_age, 0)


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
        "_fills",
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
        self._fills: list[BulkFill] = []  # open bulk fills, told of every invalidation

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

    def open_fill(self) -> BulkFill:
        """Start a bulk fill (responder/cache_warm.py): from now on it learns of every
        invalidation. Open it before taking the snapshot it fills from; close it when done."""
        fill = BulkFill()
        self._fills.append(fill)
        return fill

    def fill(self, fill: BulkFill, entry: CachedResponse) -> bool:
        """Put `entry` without evicting anything, unless its certificate was invalidated since
        `fill` opened or the cache holds its key already (an answer read on a miss is at least
        as recent). False once the cache is full or was cleared: the fill is over."""
        if (fill.cleared or len(self._entries) >= self._max_entries
                or self._bytes + entry.size > self._max_bytes):
            return False
        key = entry.key
        assert key is not None
        if (key.issuer_id, key.serial) in fill.changed:
            fill.skipped += 1
        elif key not in self._entries:
            self._entries[key] = entry
            self._bytes += entry.size
            fill.added += 1
        return True

    def close_fill(self, fill: BulkFill) -> None:
        if fill in self._fills:
            self._fills.remove(fill)
        fill.changed.clear()

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
        for fill in self._fills:
            fill.changed.add((issuer_id, serial))
        dropped = 0
        for algorithm in (1, 2, 3, 4):
            entry = self._entries.pop(CacheKey(issuer_id, serial, algorithm), None)
            if entry is not None:
                entry.alive = False
                self._bytes -= entry.size
                dropped += 1
        return dropped

    def clear(self) -> None:
        """Forget everything (reconnect after missed notifications, bulk changes)."""
        self.generation += 1
        for fill in self._fills:
            fill.cleared = True
        for entry in self._entries.values():
            entry.alive = False
        self._entries.clear()
        self._bytes = 0
        self.post_memo.clear()
        self.get_memo.clear()
        self._memo_bytes = 0


class BulkFill:
    """A bulk fill of the cache from one database snapshot (`ResponseCache.open_fill`).

    The snapshot may predate a change whose invalidation runs while the fill is still reading:
    the NOTIFY (or the catch-up) drops nothing, because the entry is not in the cache yet, and
    the fill would then put the answer from before the change, a `good` after a revocation, where
    nothing would ever drop it again. So every invalidation from `open_fill` on is recorded here,
    and `ResponseCache.fill` never puts an entry of a certificate invalidated since (nor anything
    once the cache was cleared). Opened before the snapshot is taken, this covers every change
    the snapshot cannot see: such a change commits after the snapshot, so its invalidation (by
    NOTIFY, or by the first catch-up that sees it) comes after the fill opened.
    """

    __slots__ = ("added", "changed", "cleared", "skipped")

    def __init__(self) -> None:
        self.added = 0  # entries put
        self.changed: set[tuple[int, bytes]] = set()  # (issuer id, serial) invalidated meanwhile
        self.cleared = False
        self.skipped = 0  # entries not put because their certificate changed meanwhile
