"""Serves the published CRLs from memory at the INTERFACE.md paths, CDN-ready.

`CrlStore` holds the newest full and delta CRL of every scope, read from the `crls` table (the
bytes are the very bytes the publisher wrote to --out). The app calls `load` at start-up and on
NOTIFY `crl_published`; only scopes whose SHA-256 changed are fetched again. `crl_routes` answers
GET and HEAD with `application/pkix-crl` (HTTP-CRL-1), a strong ETag (quoted hex SHA-256),
Last-Modified = thisUpdate, and `Cache-Control: public, max-age=N, stale-if-error=M,
no-transform` where N is the smaller of `crl_max_age` and the seconds left to nextUpdate
(HTTP-CRL-4: an edge never keeps a CRL past its nextUpdate) and M the seconds left to nextUpdate
(a CDN keeps serving the last CRL while the origin fails, never past its validity); `Expires` =
now + N; conditional requests get 304 (HTTP-CRL-3), but never for an If-Modified-Since in the
future (RFC 9110 §13.1.3); a single `Range` gets 206 (devices resuming large CRLs), an
unsatisfiable one 416; a 404 is cached for seconds only. Cache tags (revoc/cache_tags.py) go on
every answer. Next to the CRLs, `/crl/{issuer}/urls.json` is the issuer's CCADB URL list
(revoc/crl_urls.py), recomputed in the background after a CRL changes (`refresh_urls`: it
aggregates every certificate of every issuer, 27 s at 10M certificates, so it never delays
loading the CRLs themselves or start-up); until the first list is known it answers 503.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime, parsedate_to_datetime

import asyncpg
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from revoc.cache_tags import crl_tags, tag_headers
from revoc.clock import Clock, SystemClock
from revoc.crl_paths import crl_name
from revoc.crl_urls import URLS_NAME, disclosed_urls, urls_json
from revoc.queries import queries
from revoc.settings import Settings

CONTENT_TYPE = "application/pkix-crl"
NOT_FOUND_MAX_AGE = 10  # a shard or issuer published a moment later is found at once


@dataclass(frozen=True, slots=True)
class StoredCrl:
    """One servable CRL with its validators, computed once when loaded."""

    name: str
    der: bytes
    sha256: bytes
    number: int
    this_update: datetime
    next_update: datetime
    issuer_id: int = 0
    issuer: str = ""
    shard: int = -1
    kind: str = "full"
    entries: int = 0

    @property
    def etag(self) -> str:
        return f'"{self.sha256.hex()}"'

    @property
    def last_modified(self) -> str:
        return format_datetime(self.this_update.astimezone(UTC), usegmt=True)


class CrlStore:
    """The latest CRLs by name (`{issuer}.crl`, `{issuer}/{shard}-delta.crl`, ...)."""

    def __init__(self, public_url: str | None = None) -> None:
        self._crls: dict[str, StoredCrl] = {}
        # Issuer name -> (issuer id, urls.json bytes); kept only when public_url is given.
        self._public_url = public_url
        self._urls: dict[str, tuple[int, bytes]] = {}
        self._urls_ready = False  # the lists were computed at least once
        self._urls_stale = True  # a CRL changed since they were computed

    @property
    def urls_ready(self) -> bool:
        return self._urls_ready

    @property
    def urls_stale(self) -> bool:
        """The URL lists need `refresh_urls` (never computed, or a CRL changed since)."""
        return self._public_url is not None and self._urls_stale

    def get(self, name: str) -> StoredCrl | None:
        return self._crls.get(name)

    def urls(self, issuer: str) -> tuple[int, bytes] | None:
        """The issuer's CCADB URL list as served (issuer id, JSON), or None."""
        return self._urls.get(issuer)

    def names(self) -> list[str]:
        return sorted(self._crls)

    def all(self) -> list[StoredCrl]:
        return [self._crls[name] for name in sorted(self._crls)]

    async def load(self, conn_or_pool: asyncpg.Connection | asyncpg.Pool, *,
                   urls: bool = True) -> int:
        """Refresh from the `crls` table; returns how many CRLs changed. With `urls=False` the
        URL lists are only marked stale (`urls_stale`) for a later `refresh_urls`."""
        if isinstance(conn_or_pool, asyncpg.Pool):
            async with conn_or_pool.acquire() as conn:
                changed = await self._load(conn)
        else:
            changed = await self._load(conn_or_pool)
        if urls and self.urls_stale:
            await self.refresh_urls(conn_or_pool)
        return changed

    async def refresh_urls(self, conn_or_pool: asyncpg.Connection | asyncpg.Pool) -> None:
        """Recompute every issuer's CCADB URL list (one aggregate over the certificates)."""
        if self._public_url is None:
            return
        self._urls_stale = False  # a CRL loaded while this runs marks it stale again
        try:
            if isinstance(conn_or_pool, asyncpg.Pool):
                async with conn_or_pool.acquire() as conn:
                    lists = await disclosed_urls(conn, self._public_url, datetime.now(UTC))
            else:
                lists = await disclosed_urls(conn_or_pool, self._public_url, datetime.now(UTC))
        except BaseException:
            self._urls_stale = True
            raise
        ids = {crl.issuer: crl.issuer_id for crl in self._crls.values()}
        self._urls = {name: (ids[name], urls_json(found)) for name, found in lists.items()
                      if name in ids}
        self._urls_ready = True

    async def _load(self, conn: asyncpg.Connection) -> int:
        q = queries()
        fresh: dict[str, StoredCrl] = {}
        changed = 0
        for row in await conn.fetch(q["crl_latest_digests"]):
            name = crl_name(row["issuer"], row["shard"], row["kind"])
            digest = bytes(row["sha256"])
            held = self._crls.get(name)
            if held is not None and held.sha256 == digest:
                fresh[name] = held
                continue
            stored = await conn.fetchrow(q["crl_der_by_id"], row["id"])
            if stored is None:  # pragma: no cover - rows are never deleted
                continue
            der = bytes(stored["der"])
            if hashlib.sha256(der).digest() != digest:
                continue  # never serve bytes that do not match their recorded digest
            fresh[name] = StoredCrl(name, der, digest, int(row["number"]),
                                    stored["this_update"], stored["next_update"],
                                    row["issuer_id"], row["issuer"], row["shard"],
                                    row["kind"], row["entries"])
            changed += 1
        changed += len(set(self._crls) - set(fresh))
        self._crls = fresh
        if changed:
            self._urls_stale = True
        return changed


def _etag_matches(header: str, etag: str) -> bool:
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


def _not_modified_since(header: str, this_update: datetime, now: datetime) -> bool:
    try:
        since = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return False
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    if since > now:  # RFC 9110 §13.1.3: a date later than the server's time is invalid
        return False
    return this_update.replace(microsecond=0) <= since


def _single_range(header: str, size: int) -> tuple[int, int] | bool | None:
    """(first, last) of one `bytes=` range; None to ignore the header (several ranges or a
    unit we do not know: the whole body); False when unsatisfiable (416)."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if first_text == "":
            suffix = int(last_text)
            if suffix <= 0:
                return False
            return max(0, size - suffix), size - 1
        first = int(first_text)
        last = int(last_text) if last_text else size - 1
    except ValueError:
        return None
    if first >= size:
        return False
    if first < 0 or last < first:
        return None
    return first, min(last, size - 1)


def crl_routes(store: CrlStore, settings: Settings, *,
               clock: Clock | None = None) -> list[BaseRoute]:
    """Routes for /crl/{issuer}.crl, /crl/{issuer}-delta.crl, /crl/{issuer}/{shard}.crl and
    /crl/{issuer}/{shard}-delta.crl (GET and HEAD)."""
    time_source = clock or SystemClock()

    def serve_urls(request: Request, issuer: str) -> Response:
        found = store.urls(issuer)
        if found is None:
            if not store.urls_ready:  # still being computed after start-up: ask again soon
                return Response(b"", status_code=503,
                                headers={"Retry-After": "5", "Cache-Control": "no-store"})
            return _not_found()
        issuer_id, body = found
        max_age = settings.crl_max_age
        headers = {"Cache-Control": f"public, max-age={max_age}, no-transform",
                   "Expires": _http_date(time_source.now() + timedelta(seconds=max_age)),
                   "ETag": f'"{hashlib.sha256(body).hexdigest()}"',
                   **tag_headers(crl_tags(issuer_id))}
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            body = b""
        return Response(body, media_type="application/json", headers=headers)

    async def serve_crl(request: Request) -> Response:
        name = request.path_params["name"]
        issuer, slash, leaf = name.rpartition("/")
        if slash and leaf == URLS_NAME and "/" not in issuer:
            return serve_urls(request, issuer)
        crl = store.get(name)
        if crl is None:
            return _not_found()
        now = time_source.now()
        remaining = max(0, int((crl.next_update - now).total_seconds()))
        max_age = min(settings.crl_max_age, remaining)
        headers = {
            "ETag": crl.etag,
            "Last-Modified": crl.last_modified,
            "Cache-Control": f"public, max-age={max_age}, stale-if-error={remaining}, "
                             "no-transform",
            "Expires": _http_date(now + timedelta(seconds=max_age)),
            "Accept-Ranges": "bytes",
            **tag_headers(crl_tags(crl.issuer_id)),
        }
        if_none_match = request.headers.get("if-none-match")
        if if_none_match is not None:
            not_modified = _etag_matches(if_none_match, crl.etag)
        else:
            since = request.headers.get("if-modified-since")
            not_modified = since is not None and _not_modified_since(since, crl.this_update, now)
        if not_modified:
            return Response(status_code=304, headers=headers)
        body = crl.der
        status = 200
        wanted = request.headers.get("range")
        if_range = request.headers.get("if-range")
        if wanted is not None and (if_range is None or if_range.strip() == crl.etag):
            span = _single_range(wanted, len(body))
            if span is False:
                headers["Content-Range"] = f"bytes */{len(body)}"
                return Response(status_code=416, headers=headers)
            if isinstance(span, tuple):
                first, last = span
                headers["Content-Range"] = f"bytes {first}-{last}/{len(body)}"
                body, status = body[first:last + 1], 206
        headers["Content-Length"] = str(len(body))
        if request.method == "HEAD":
            body = b""
        return Response(body, status_code=status, media_type=CONTENT_TYPE, headers=headers)

    return [Route("/crl/{name:path}", serve_crl, methods=["GET", "HEAD"])]


def _http_date(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC).replace(microsecond=0), usegmt=True)


def _not_found() -> Response:
    return Response(b"no such CRL\n", status_code=404, media_type="text/plain",
                    headers={"Cache-Control": f"public, max-age={NOT_FOUND_MAX_AGE}"})


class CrlSizeCollector(Collector):
    """Issue 13 point 5: each served CRL's size and entry count, and which pass the size limit
    (`crl_size_limit`, default 10 MB: Microsoft's limit per CRL file, CONFORMANCE ROOT-2)."""

    def __init__(self, store: CrlStore, limit: int) -> None:
        self._store = store
        self._limit = limit

    def collect(self) -> Iterator[Metric]:
        labels = ["issuer", "shard", "kind"]
        size = GaugeMetricFamily("revoc_crl_bytes", "Size of the latest CRL of each scope",
                                 labels=labels)
        entries = GaugeMetricFamily("revoc_crl_entries",
                                    "Revoked certificates on the latest CRL of each scope",
                                    labels=labels)
        over = GaugeMetricFamily(
            "revoc_crl_over_size_limit",
            "1 when the latest CRL of a scope is larger than REVOC_CRL_SIZE_LIMIT (shard more)",
            labels=labels)
        for crl in self._store.all():
            values = [crl.issuer, str(crl.shard), crl.kind]
            size.add_metric(values, len(crl.der))
            entries.add_metric(values, crl.entries)
            over.add_metric(values, 1.0 if len(crl.der) > self._limit else 0.0)
        yield size
        yield entries
        yield over
        yield GaugeMetricFamily("revoc_crl_size_limit_bytes", "REVOC_CRL_SIZE_LIMIT",
                                self._limit)


__all__ = ["CONTENT_TYPE", "CrlSizeCollector", "CrlStore", "StoredCrl", "crl_routes"]
