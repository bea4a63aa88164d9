"""The types of the answer pipeline (responder/answer_sources.py), in one place.

A request enters as a `Query` (the exact request bytes, for the memo, and how to get the DER);
below the issuer and policy filter it is a `CertQuery` (one CertID mapped to an issuer and a
`CacheKey`). Every source returns one `Answer`: `Served` (an entry and where it came from) or an
`OcspResponseStatus` error. `ResponseSource` is the one-method protocol each wrapper implements
(Boulder's `Source`, ocsp/responder/source.go).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from responder.cache import CachedResponse, CacheKey
from responder.sources import IssuerEntry
from revoc.der.ocsp import CertIdRequest
from revoc.model import OcspResponseStatus


class Source(enum.IntEnum):
    """Where a successful answer came from; the value is the metrics slot."""

    MEMO = 0
    CACHE = 1
    STORE = 2  # exported as source="database"
    LIVE = 3


class Miss(enum.Enum):
    """Why the pre-signed sources had nothing to serve; the live signer's policy input."""

    NOT_STORED = "no response stored, or the serial was never issued"
    STALE = "the stored response is past its nextUpdate"
    PENDING = "known, but no response signed since its latest change"
    VARIANT = "a fresh response exists, but for another encoding of the CertID"


@dataclass(frozen=True, slots=True)
class Served:
    entry: CachedResponse
    source: Source


Answer = Served | OcspResponseStatus


class Memo(enum.Enum):
    """Which exact-request memo a request belongs to."""

    GET = "get"  # keyed by the raw GET path
    POST = "post"  # keyed by the POST body


class Query:
    """One HTTP-level OCSP request: the memo key, and the DER behind it (decoded lazily: a memo
    hit on a GET never decodes its base64). `memoizable` is set by the filter once it knows the
    request carries no nonce."""

    __slots__ = ("_decode", "memo", "memo_key", "memoizable")

    def __init__(self, memo: Memo, memo_key: bytes, decode: Callable[[bytes], bytes]) -> None:
        self.memo = memo
        self.memo_key = memo_key
        self._decode = decode
        self.memoizable = False

    def der(self) -> bytes:
        """The DER OCSPRequest; raises MalformedRequest, or RequestTooLarge (HTTP 414)."""
        return self._decode(self.memo_key)


class RequestTooLarge(Exception):
    """The decoded request exceeds the size cap: an HTTP refusal, not an OCSP answer."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class CertQuery:
    """One CertID the filter accepted: its issuer, cache key and nonce, and what the sources
    above the live signer found (`miss`)."""

    __slots__ = ("cert_id", "issuer", "key", "miss", "nonce")

    def __init__(self, issuer: IssuerEntry, cert_id: CertIdRequest, key: CacheKey,
                 nonce: bytes | None) -> None:
        self.issuer = issuer
        self.cert_id = cert_id
        self.key = key
        self.nonce = nonce
        self.miss = Miss.NOT_STORED


Q_contra = TypeVar("Q_contra", contravariant=True)


class ResponseSource(Protocol[Q_contra]):
    """One concern of the pipeline: answer, or ask the source it wraps."""

    async def answer(self, query: Q_contra) -> Answer: ...
