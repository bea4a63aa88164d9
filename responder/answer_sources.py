"""The answer pipeline: small sources stacked as wrappers, each with one concern.

    MemoSource      exact request bytes -> the entry that answered them last time
    FilterSource    parse; issuer and policy: unknown issuer or hash, several CertIDs, nonce
    CacheSource     (issuer, serial, hash) -> cached entry, while fresh and for this exact CertID
    StoreSource     PostgreSQL through the miss batcher; never a stale response (invariant 1)
    LiveSource      signs what nothing above could serve, or turns the miss into an OCSP error

Like Boulder's ocsp/responder (source.go, filter_source.go): one method, `answer`, returning one
`Answer` (responder/answers.py): an entry and where it came from, or an `OcspResponseStatus`. HTTP
is not here: responder/ocsp_endpoint.py decodes requests and renders answers.

Policies (CONFORMANCE sections 1-3; settings in brackets):

- unknown issuer or unsupported CertID hash -> `unauthorized` (OCSP-REQ-4);
- serial never issued -> `unknown` signed live [live_signing], else `unauthorized`; never `good`;
- nonce: pre-signed answers carry none (OCSP-RESP-14); with [live_signing] nonce requests are
  signed live and the nonce echoed (the pre-signed answer when the store cannot say the status);
  0 or >128 octets -> `malformedRequest` (RFC 9654, OCSP-REQ-9, in the parser);
- the request's CertID is echoed byte for byte: when the stored response's CertID differs (other
  parameter encoding, serial padding, a hash not pre-signed) it is signed live [live_signing],
  else `unauthorized` — never a mismatched CertID (OCSP-RESP-9);
- several CertIDs -> one live-signed response covering all [live_signing], else
  `malformedRequest` like Go responders (OCSP-REQ-7) — never a partial answer;
- a stored response past nextUpdate is never served: fetch again, sign live, or `tryLater`;
- a known certificate without a servable response (none signed since its latest change: a
  revocation the presigner has not reflected yet) -> live signature, or `tryLater` (invariant 1);
- PostgreSQL unreachable (pool acquire / query over the store timeout) -> `tryLater` on a miss.

Filling the cache: a fetched or live-signed entry is cached only when no invalidation happened
while it was fetched (the cache's `generation`), and a live answer only where no pre-signed one
lives; the memo remembers only nonce-less requests answered by a cache resident.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from responder.answers import (
    Answer,
    CertQuery,
    Memo,
    Miss,
    Query,
    ResponseSource,
    Served,
    Source,
)
from responder.cache import CachedResponse, CacheKey, ResponseCache
from responder.request_shapes import RequestShapes
from responder.sources import (
    PENDING,
    CertRecord,
    IssuerEntry,
    IssuerIndex,
    ResponseStore,
    StoreUnavailable,
)
from revoc.der.ocsp import MalformedRequest, OcspRequest
from revoc.model import OcspResponseStatus

MALFORMED = OcspResponseStatus.malformedRequest
TRY_LATER = OcspResponseStatus.tryLater
UNAUTHORIZED = OcspResponseStatus.unauthorized


class Loaded:
    """What the lifespan loads for the sources: issuer index and store (None until loaded)."""

    __slots__ = ("index", "store")

    def __init__(self) -> None:
        self.index: IssuerIndex | None = None
        self.store: ResponseStore | None = None


class MemoSource:
    """Exact request bytes -> the cached entry that answered them, while alive and fresh."""

    __slots__ = ("_cache", "_get", "_inner", "_now", "_post")

    def __init__(self, cache: ResponseCache, inner: ResponseSource[Query],
                 now: Callable[[], float]) -> None:
        self._cache = cache
        self._inner = inner
        self._now = now
        self._get = cache.get_memo
        self._post = cache.post_memo

    def hit(self, memo: Memo, key: bytes, now: float) -> CachedResponse | None:
        """The memoized entry for these request bytes when it may be served at `now`."""
        entry = (self._get if memo is Memo.GET else self._post).get(key)
        if entry is None or not entry.alive or now >= entry.next_update:
            return None
        return entry

    async def answer(self, query: Query) -> Answer:
        entry = self.hit(query.memo, query.memo_key, self._now())
        if entry is not None:
            return Served(entry, Source.MEMO)
        answer = await self._inner.answer(query)
        if isinstance(answer, Served) and query.memoizable:
            self._cache.remember(self._get if query.memo is Memo.GET else self._post,
                                 query.memo_key, answer.entry)
        return answer


class FilterSource:
    """Parses the request and applies the issuer and request policies (module docstring);
    routes nonce and multi-CertID requests to the live signer when there is one."""

    __slots__ = ("_inner", "_live", "_loaded", "_shapes")

    def __init__(self, loaded: Loaded, inner: ResponseSource[CertQuery],
                 live: LiveSource) -> None:
        self._loaded = loaded
        self._inner = inner
        self._live = live
        self._shapes = RequestShapes()  # parse_ocsp_request, by shape (request_shapes.py)

    async def answer(self, query: Query) -> Answer:
        try:
            request = self._shapes.parse(query.der())
        except MalformedRequest:
            return MALFORMED
        index = self._loaded.index
        if index is None or self._loaded.store is None:
            return TRY_LATER  # issuers not loaded yet: we cannot say who we serve
        if len(request.cert_ids) > 1:
            if not self._live.enabled:
                return MALFORMED  # OCSP-REQ-7: the whole request or nothing
            return await self._live.answer_many(request, index)
        cert_id = request.cert_ids[0]
        algorithm = cert_id.hash_algorithm
        if algorithm is None:
            return UNAUTHORIZED
        issuer = index.by_cert_id.get(
            (algorithm, cert_id.issuer_name_hash, cert_id.issuer_key_hash))
        if issuer is None:
            return UNAUTHORIZED
        cert = CertQuery(issuer, cert_id,
                         CacheKey(issuer.issuer.id, cert_id.serial_bytes, algorithm.value),
                         request.nonce)
        query.memoizable = request.nonce is None
        if request.nonce is not None and self._live.signs_for(issuer):
            answer = await self._live.answer_with_nonce(cert)
            if answer is not None:
                return answer
            # "Most complete response": without the store, the pre-signed answer will do.
        return await self._inner.answer(cert)


class CacheSource:
    """(issuer, serial, hash) -> the cached entry, when fresh and for this exact CertID."""

    __slots__ = ("_cache", "_inner", "_now")

    def __init__(self, cache: ResponseCache, inner: ResponseSource[CertQuery],
                 now: Callable[[], float]) -> None:
        self._cache = cache
        self._inner = inner
        self._now = now

    async def answer(self, query: CertQuery) -> Answer:
        entry = self._cache.get(query.key)
        if entry is not None and self._now() < entry.next_update:
            if entry.cert_id == query.cert_id.raw:
                return Served(entry, Source.CACHE)
            query.miss = Miss.VARIANT  # the store holds the same response: do not ask it
        return await self._inner.answer(query)


class StoreSource:
    """Pre-signed responses from PostgreSQL (batched by responder/miss_batch.py); what it reads
    fresh enters the cache unless an invalidation raced with the read."""

    __slots__ = ("_cache", "_inner", "_loaded", "_now")

    def __init__(self, loaded: Loaded, cache: ResponseCache, inner: LiveSource,
                 now: Callable[[], float]) -> None:
        self._loaded = loaded
        self._cache = cache
        self._inner = inner
        self._now = now

    async def answer(self, query: CertQuery) -> Answer:
        store = self._loaded.store
        if query.miss is Miss.VARIANT or store is None:
            return await self._inner.answer(query)
        cache = self._cache
        generation = cache.generation
        try:
            stored = await store.response(*query.key)
        except StoreUnavailable:
            return TRY_LATER
        if stored is PENDING:
            # Known, but its status changed after the last signature (or it was never signed):
            # the fresh status, signed live, or `tryLater`; never the old answer (invariant 1).
            query.miss = Miss.PENDING
        elif stored is not None:
            entry = CachedResponse(stored[0], stored[1], stored[2], key=query.key)
            if self._now() < entry.next_update:
                if generation == cache.generation:
                    cache.put(entry)
                if entry.cert_id == query.cert_id.raw:
                    return Served(entry, Source.STORE)
                query.miss = Miss.VARIANT
            else:
                query.miss = Miss.STALE
        return await self._inner.answer(query)


class LiveSource:
    """The live signer [live_signing]: signs what the pre-signed sources could not serve, with
    the certificate's current status from the store; without a signer, the miss becomes the OCSP
    error the policies name."""

    __slots__ = ("_cache", "_loaded", "_now", "_presigned", "enabled")

    def __init__(self, loaded: Loaded, cache: ResponseCache, now: Callable[[], float], *,
                 enabled: bool, presigned_hashes: frozenset[int]) -> None:
        self._loaded = loaded
        self._cache = cache
        self._now = now
        self.enabled = enabled
        self._presigned = presigned_hashes  # HashAlgorithm values the presigner signs

    def signs_for(self, issuer: IssuerEntry) -> bool:
        return self.enabled and issuer.signer is not None

    async def answer(self, query: CertQuery) -> Answer:
        miss = query.miss
        if not self.signs_for(query.issuer):
            if miss is Miss.PENDING:
                # A CertID hash we never pre-sign is refused as before (OCSP-RESP-9).
                return TRY_LATER if query.key.hash_alg in self._presigned else UNAUTHORIZED
            if miss is Miss.STALE:
                return TRY_LATER  # known, but nothing fresh to give
            return UNAUTHORIZED  # never issued, not pre-signed (yet), or a CertID variant
        cache = self._cache
        generation = cache.generation
        record = await self._record(query)
        if isinstance(record, OcspResponseStatus):
            return record
        # Cache the live answer only where no pre-signed one lives (it would evict the
        # pre-signed variant other clients ask for) and no change raced with us.
        cache_it = miss in (Miss.NOT_STORED, Miss.STALE) and generation == cache.generation
        entry = self._sign(query.issuer, [(query.cert_id.raw, record)], None,
                           query.key if cache_it else None)
        return Served(entry, Source.LIVE)

    async def answer_with_nonce(self, query: CertQuery) -> Answer | None:
        """Signed live with the nonce echoed; None when the store cannot say the status."""
        record = await self._record(query)
        if isinstance(record, OcspResponseStatus):
            return None
        return Served(self._sign(query.issuer, [(query.cert_id.raw, record)], query.nonce, None),
                      Source.LIVE)

    async def answer_many(self, request: OcspRequest, index: IssuerIndex) -> Answer:
        """Several CertIDs: one live response covering all, or an error for the whole request."""
        store = self._loaded.store
        assert store is not None
        answers: list[tuple[bytes, CertRecord | None]] = []
        issuer: IssuerEntry | None = None
        for cert_id in request.cert_ids:
            algorithm = cert_id.hash_algorithm
            found = None if algorithm is None else index.by_cert_id.get(
                (algorithm, cert_id.issuer_name_hash, cert_id.issuer_key_hash))
            # One response has one signer: every CertID must belong to the same issuer.
            if found is None or found.signer is None or found is not (issuer or found):
                return UNAUTHORIZED
            issuer = found
            try:
                record = await store.certificate(found.issuer.id, cert_id.serial_bytes)
            except StoreUnavailable:
                return TRY_LATER
            answers.append((cert_id.raw, record))
        assert issuer is not None  # parse_ocsp_request never returns an empty list
        return Served(self._sign(issuer, answers, request.nonce, None), Source.LIVE)

    async def _record(self, query: CertQuery) -> CertRecord | OcspResponseStatus | None:
        store = self._loaded.store
        if store is None:
            return TRY_LATER
        try:
            return await store.certificate(query.key.issuer_id, query.key.serial)
        except StoreUnavailable:
            return TRY_LATER

    def _sign(self, issuer: IssuerEntry, answers: list[tuple[bytes, CertRecord | None]],
              nonce: bytes | None, key: CacheKey | None) -> CachedResponse:
        assert issuer.signer is not None
        der, this_update, next_update = issuer.signer.sign(
            answers, datetime.fromtimestamp(int(self._now()), UTC), nonce)
        entry = CachedResponse(der, this_update, next_update, key=key)
        if key is not None:
            self._cache.put(entry)
        return entry


def build_stack(*, cache: ResponseCache, loaded: Loaded, now: Callable[[], float],
                live_signing: bool, presigned_hashes: frozenset[int]) -> MemoSource:
    """memo -> filter -> cache -> store -> live signer (ARCHITECTURE "The OCSP hot path")."""
    live = LiveSource(loaded, cache, now, enabled=live_signing,
                      presigned_hashes=presigned_hashes)
    store = StoreSource(loaded, cache, live, now)
    filtered = FilterSource(loaded, CacheSource(cache, store, now), live)
    return MemoSource(cache, filtered, now)
