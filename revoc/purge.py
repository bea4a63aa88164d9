"""The CDN purge hook (issue 13 point 7, INTERFACE.md "CDN purge").

When `REVOC_PURGE_URL` is set, revoc POSTs `{"urls": [...], "tags": [...]}` there after a
publication (the CRL URLs of the scopes published, their IDP URLs and the issuer's urls.json)
and after a certificate's new OCSP answer is stored (its canonical GET URLs, see
`ocsp_get_urls`), with the cache tags of revoc/cache_tags.py, so a CDN drops what changed
instead of serving a cached `good` until its max-age runs out.

Never blocking: `submit` only queues, bounded: when a dead hook or a burst (a mass revocation
re-signs millions of answers) fills the queue, the oldest batch is dropped and counted
(`purge_dropped`), but its issuer-wide tags are kept and sent with the next POST, and a warning
says so once per overflow: a CDN that purges by tag still drops every answer of that issuer, and
one that purges only by URL is named in the log instead of left serving a cached `good`.
One task sends, merging what is queued into one POST, retrying a failed POST with doubling
delays; every outcome is counted (`counters`, exported by the worker's heartbeat). Signing and
publishing never wait for it; `close` gives it a bounded time to finish.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from cryptography import x509

from revoc.cache_tags import is_cert_tag
from revoc.der.ocsp import cert_id_der, encode_ocsp_request
from revoc.model import HashAlgorithm, Issuer
from revoc.signing import subject_public_key_bits

log = logging.getLogger("revoc.purge")

QUEUE_LIMIT = 1000  # batches waiting; beyond it the oldest is dropped (counted)
BATCH_URLS = 1000  # URLs per POST at most
ATTEMPTS = 6
FIRST_DELAY = 0.5
MAX_DELAY = 30.0
POST_TIMEOUT = 10.0
PURGE_HASHES = (HashAlgorithm.SHA1, HashAlgorithm.SHA256)


def ocsp_get_urls(public_url: str, issuer: Issuer, serial: int) -> list[str]:
    """The canonical OCSP GET URLs of a certificate, as OpenSSL, browsers and nginx send them:
    one request each with a SHA-1 and a SHA-256 CertID (NULL parameters), no nonce, standard
    base64 with `+`, `/` and `=` percent-encoded, under REVOC_PUBLIC_URL + /ocsp/."""
    cert = x509.load_der_x509_certificate(issuer.cert_der)
    key_bits = subject_public_key_bits(cert)
    base = public_url.rstrip("/") + "/ocsp/"
    urls = []
    for algorithm in PURGE_HASHES:
        request = encode_ocsp_request([cert_id_der(algorithm, issuer.subject_der, key_bits,
                                                   serial)])
        urls.append(base + quote(base64.b64encode(request).decode(), safe=""))
    return urls


@dataclass(frozen=True, slots=True)
class PurgeBatch:
    urls: tuple[str, ...]
    tags: tuple[str, ...]


class PurgeClient:
    """Queues purge requests and POSTs them to `url` in the background (see the docstring)."""

    def __init__(self, url: str, *, count: Callable[[str, int], None] | None = None,
                 attempts: int = ATTEMPTS, first_delay: float = FIRST_DELAY,
                 max_delay: float = MAX_DELAY, timeout: float = POST_TIMEOUT) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"purge URL {url!r} must be an http:// or https:// URL")
        self.url = url
        self._parts = parts
        self._count = count or (lambda _name, _amount: None)
        self._attempts, self._first, self._cap = attempts, first_delay, max_delay
        self._timeout = timeout
        self._queue: list[PurgeBatch] = []
        # Issuer-wide tags of dropped batches (at most two per issuer), sent with the next POST.
        self._kept_tags: dict[str, None] = {}
        self._overflowing = False
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def submit(self, urls: Sequence[str], tags: Sequence[str] = ()) -> None:
        """Queue one purge; returns at once."""
        if not urls and not tags:
            return
        if len(self._queue) >= QUEUE_LIMIT:
            dropped = self._queue.pop(0)
            self._count("purge_dropped", 1)
            self._kept_tags.update(dict.fromkeys(t for t in dropped.tags if not is_cert_tag(t)))
            if not self._overflowing:
                self._overflowing = True
                log.warning("CDN purge queue full (%d batches): dropping the oldest URL purges; "
                            "their issuers' tags (%s) are purged instead. A CDN that purges "
                            "only by URL keeps serving those answers until their max-age",
                            QUEUE_LIMIT, ", ".join(self._kept_tags) or "none")
        self._queue.append(PurgeBatch(tuple(urls), tuple(tags)))
        self._idle.clear()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    async def close(self, grace: float) -> bool:
        """Wait up to `grace` seconds for the queue to empty, then stop; True when all were sent
        (or given up on after their attempts)."""
        done = True
        if self._task is not None and not self._task.done():
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except TimeoutError:
                done = False
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._queue:
            self._count("purge_dropped", len(self._queue))
            self._queue.clear()
        return done

    def _take(self) -> PurgeBatch:
        urls: dict[str, None] = {}
        tags: dict[str, None] = {}
        if self._kept_tags:
            tags.update(self._kept_tags)
            self._kept_tags = {}
        while self._queue and len(urls) < BATCH_URLS:
            batch = self._queue.pop(0)
            urls.update(dict.fromkeys(batch.urls))
            tags.update(dict.fromkeys(batch.tags))
        if not self._queue:
            self._overflowing = False
        return PurgeBatch(tuple(urls), tuple(tags))

    async def _run(self) -> None:
        while True:
            if not self._queue and not self._kept_tags:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._take()
            await self._send_with_retries(batch)

    async def _send_with_retries(self, batch: PurgeBatch) -> None:
        body = json.dumps({"urls": list(batch.urls), "tags": list(batch.tags)}).encode()
        delay = self._first
        for attempt in range(1, self._attempts + 1):
            try:
                status = await asyncio.wait_for(self._post(body), self._timeout)
            except (OSError, TimeoutError, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if 200 <= status < 300:
                    self._count("purge_sent", 1)
                    self._count("purge_urls", len(batch.urls))
                    return
                problem = f"HTTP {status}"
            if attempt == self._attempts:
                self._count("purge_failed", 1)
                log.error("CDN purge of %d URL(s) and %d tag(s) failed %d times, last: %s; "
                          "given up (the CDN serves them until their max-age ends)",
                          len(batch.urls), len(batch.tags), attempt, problem)
                return
            self._count("purge_retries", 1)
            log.warning("CDN purge to %s failed (%s); retry %d in %.1f s", self.url, problem,
                        attempt, delay)
            await asyncio.sleep(delay)
            delay = min(self._cap, delay * 2)

    async def _post(self, body: bytes) -> int:
        parts = self._parts
        https = parts.scheme == "https"
        port = parts.port or (443 if https else 80)
        host = parts.hostname or ""
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl.create_default_context() if https else None)
        try:
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            head = (f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\nUser-Agent: revoc-purge\r\n\r\n")
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
            status_line = await reader.readline()
            fields = status_line.split()
            if len(fields) < 2 or not fields[1].isdigit():
                raise ValueError(f"not an HTTP answer: {status_line[:60]!r}")
            with contextlib.suppress(Exception):
                await reader.read()  # drain, so the server sees a clean close
            return int(fields[1])
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
