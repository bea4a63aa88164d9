"""The publisher's side of the CDN purge hook (revoc/purge.py; issue 13 point 7).

`revoc publish` sends the purges because it runs once per deployment (one leader per scope) and
already listens to PostgreSQL: after each round, the URLs of every CRL it published (the scope's
URL, the URLs in its IDP, and the issuer's urls.json) with the issuer's CRL tags; and on NOTIFY
`ocsp_changed` (a presigner stored new answers, e.g. `revoked` after a revocation), the
certificate's canonical OCSP GET URLs with its tags; for `<issuer>:*` (many at once, e.g. a
mass revocation) the issuer's tag. Purging once the new answer is stored means the CDN's next
fetch gets it, not `tryLater`. Nothing here blocks a round: it only queues.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

import asyncpg

from crl_publisher.publisher import Publication
from revoc.admin import list_issuers
from revoc.cache_tags import crl_tags, issuer_tag, ocsp_tags
from revoc.crl_paths import crl_url
from revoc.crl_urls import urls_path
from revoc.model import Issuer
from revoc.notify import decode_serial_change
from revoc.purge import PurgeClient, ocsp_get_urls
from revoc.settings import Settings
from revoc.workers import Heartbeat

log = logging.getLogger("revoc.publish")

# Seconds after a publication's purge to purge its URLs again (see `PublisherPurge.published`):
# longer than a responder takes to load a new CRL (NOTIFY: well under a second; a hot standby
# polls every 5 s).
REPURGE_SECONDS = 15.0


def publication_purge(settings: Settings, publications: Sequence[Publication]
                      ) -> tuple[list[str], list[str]]:
    """(URLs, tags) whose content changed with `publications`."""
    base = settings.public_url.rstrip("/")
    urls: dict[str, None] = {}
    tags: dict[str, None] = {}
    for item in publications:
        urls[crl_url(settings.public_url, item.issuer, item.shard, item.kind)] = None
        urls.update(dict.fromkeys(item.idp_urls))
        urls[f"{base}/crl/{urls_path(item.issuer)}"] = None
        tags.update(dict.fromkeys(crl_tags(item.issuer_id)))
    return list(urls), list(tags)


class PublisherPurge:
    """Queues the purges of one publisher process (see the module docstring)."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool,
                 heartbeat: Heartbeat | None = None, *,
                 repurge_after: float = REPURGE_SECONDS) -> None:
        assert settings.purge_url
        self.settings = settings
        self.pool = pool
        self.client = PurgeClient(settings.purge_url,
                                  count=heartbeat.count if heartbeat is not None else None)
        self._issuers: dict[int, Issuer] = {}
        self._payloads: list[str] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._later: set[asyncio.TimerHandle] = set()
        self._repurge_after = repurge_after

    def published(self, publications: Sequence[Publication]) -> None:
        """Purge now, and once more REPURGE_SECONDS later: `revoc serve` loads a new CRL on
        NOTIFY (a hot standby by polling, the URL lists in the background), so a CDN refetching
        at once may still get the old bytes and keep them for max-age. The second purge bounds
        that; it is dropped when the process stops first (`revoc publish --once`)."""
        urls, tags = publication_purge(self.settings, publications)
        self.client.submit(urls, tags)
        if urls or tags:
            handle = asyncio.get_running_loop().call_later(
                self._repurge_after, self._repurge, urls, tags)
            self._later.add(handle)

    def _repurge(self, urls: list[str], tags: list[str]) -> None:
        self._later = {h for h in self._later if not h.cancelled() and
                       h.when() > asyncio.get_running_loop().time()}
        self.client.submit(urls, tags)

    def on_ocsp_changed(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        """asyncpg listener callback for `ocsp_changed`."""
        self._payloads.append(payload)
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            payloads, self._payloads = self._payloads, []
            try:
                await self._submit_ocsp(payloads)
            except Exception as exc:  # purging is best effort; the loop goes on
                log.warning("CDN purge of OCSP answers not queued: %s: %s",
                            type(exc).__name__, exc)

    async def _issuer(self, issuer_id: int) -> Issuer | None:
        if issuer_id not in self._issuers:
            async with self.pool.acquire() as conn:
                self._issuers = {i.id: i for i in await list_issuers(conn)}
        return self._issuers.get(issuer_id)

    async def _submit_ocsp(self, payloads: Sequence[str]) -> None:
        urls: list[str] = []
        tags: dict[str, None] = {}
        for payload in payloads:
            change = decode_serial_change(payload)
            if change is None:
                continue
            if change.serial is None:
                tags[issuer_tag(change.issuer_id)] = None
                continue
            issuer = await self._issuer(change.issuer_id)
            if issuer is None:
                continue
            serial = int.from_bytes(change.serial, "big")
            urls += ocsp_get_urls(self.settings.public_url, issuer, serial)
            tags.update(dict.fromkeys(ocsp_tags(change.issuer_id, serial)))
        self.client.submit(urls, list(tags))

    async def close(self, grace: float) -> None:
        for handle in self._later:
            handle.cancel()
        self._later.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self.client.close(grace)
