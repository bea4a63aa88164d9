"""Serves the published CRLs from memory at the INTERFACE.md paths, CDN-ready.

`CrlStore` holds the newest full and delta CRL of every scope, read from the `crls` table (the
bytes are the very bytes the publisher wrote to --out). The app calls `load` at start-up and on
NOTIFY `crl_published`; only scopes whose SHA-256 changed are fetched again. `crl_routes` answers
GET and HEAD with `application/pkix-crl` (HTTP-CRL-1), a strong ETag (quoted hex SHA-256),
Last-Modified = thisUpdate, and `Cache-Control: public, max-age=N, no-transform` where N is the
smaller of `crl_max_age` and the seconds left to nextUpdate (HTTP-CRL-4: an edge never keeps a
CRL past its nextUpdate); conditional requests get 304 (HTTP-CRL-3).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime

import asyncpg
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from revoc.clock import Clock, SystemClock
from revoc.crl_paths import crl_name
from revoc.queries import queries
from revoc.settings import Settings

CONTENT_TYPE = "application/pkix-crl"


@dataclass(frozen=True, slots=True)
class StoredCrl:
    """One servable CRL with its validators, computed once when loaded."""

    name: str
    der: bytes
    sha256: bytes
    number: int
    this_update: datetime
    next_update: datetime

    @property
    def etag(self) -> str:
        return f'"{self.sha256.hex()}"'

    @property
    def last_modified(self) -> str:
        return format_datetime(self.this_update.astimezone(UTC), usegmt=True)


class CrlStore:
    """The latest CRLs by name (`{issuer}.crl`, `{issuer}/{shard}-delta.crl`, ...)."""

    def __init__(self) -> None:
        self._crls: dict[str, StoredCrl] = {}

    def get(self, name: str) -> StoredCrl | None:
        return self._crls.get(name)

    def names(self) -> list[str]:
        return sorted(self._crls)

    async def load(self, conn_or_pool: asyncpg.Connection | asyncpg.Pool) -> int:
        """Refresh from the `crls` table; returns how many CRLs changed."""
        if isinstance(conn_or_pool, asyncpg.Pool):
            async with conn_or_pool.acquire() as conn:
                return await self._load(conn)
        return await self._load(conn_or_pool)

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
                                    stored["this_update"], stored["next_update"])
            changed += 1
        changed += len(set(self._crls) - set(fresh))
        self._crls = fresh
        return changed


def _etag_matches(header: str, etag: str) -> bool:
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


def _not_modified_since(header: str, this_update: datetime) -> bool:
    try:
        since = parsedate_to_datetime(header)
    except (TypeError, ValueError):
        return False
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return this_update.replace(microsecond=0) <= since


def crl_routes(store: CrlStore, settings: Settings, *,
               clock: Clock | None = None) -> list[BaseRoute]:
    """Routes for /crl/{issuer}.crl, /crl/{issuer}-delta.crl, /crl/{issuer}/{shard}.crl and
    /crl/{issuer}/{shard}-delta.crl (GET and HEAD)."""
    time_source = clock or SystemClock()

    async def serve_crl(request: Request) -> Response:
        name = request.path_params["name"]
        crl = store.get(name)
        if crl is None:
            return Response(b"no such CRL\n", status_code=404, media_type="text/plain",
                            headers={"Cache-Control": "public, max-age=60"})
        remaining = int((crl.next_update - time_source.now()).total_seconds())
        max_age = max(0, min(settings.crl_max_age, remaining))
        headers = {
            "ETag": crl.etag,
            "Last-Modified": crl.last_modified,
            "Cache-Control": f"public, max-age={max_age}, no-transform",
        }
        if_none_match = request.headers.get("if-none-match")
        if if_none_match is not None:
            not_modified = _etag_matches(if_none_match, crl.etag)
        else:
            since = request.headers.get("if-modified-since")
            not_modified = since is not None and _not_modified_since(since, crl.this_update)
        if not_modified:
            return Response(status_code=304, headers=headers)
        headers["Content-Length"] = str(len(crl.der))
        body = b"" if request.method == "HEAD" else crl.der
        return Response(body, media_type=CONTENT_TYPE, headers=headers)

    return [Route("/crl/{name:path}", serve_crl, methods=["GET", "HEAD"])]


__all__ = ["CONTENT_TYPE", "CrlStore", "StoredCrl", "crl_routes"]
