"""A real caching proxy in front of `revoc serve`, for tests and bench/edge_visibility.py.

`caching_proxy` runs nginx on 127.0.0.1 with `proxy_cache` (it caches what the origin's
Cache-Control allows) and the cache purge module (Debian `libnginx-mod-http-cache-purge`),
purging at GET /purge/{path} from 127.0.0.1. `Hook` is a REVOC_PURGE_URL endpoint: it records
each POSTed JSON body and, with `relay_port`, turns each URL into an nginx purge request (what a
CDN's purge API does).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from tests.nginx_run import NGINX, nginx_config, running_nginx

PURGE_MODULE = Path("/usr/lib/nginx/modules/ngx_http_cache_purge_module.so")
RELAY_CONCURRENCY = 16


def proxy_available() -> bool:
    return Path(NGINX).exists() and PURGE_MODULE.exists()


def nginx_conf(root: Path, port: int, upstream: int) -> str:
    return nginx_config(root, f"""
    proxy_cache_path {root}/cache keys_zone=edge:1m;
    merge_slashes off;
    server {{
        listen 127.0.0.1:{port};
        # The key is the decoded path, so /purge/ + any encoding of it finds the entry.
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_cache edge;
            proxy_cache_key $uri$is_args$args;
            add_header X-Cache $upstream_cache_status always;
        }}
        location ~ ^/purge(/.*)$ {{
            allow 127.0.0.1;
            deny all;
            proxy_cache_purge edge $1$is_args$args;
        }}
    }}""", head=f"load_module {PURGE_MODULE};")


@contextmanager
def caching_proxy(root: Path, port: int, upstream: int) -> Iterator[int]:
    """nginx on 127.0.0.1:`port` caching http://127.0.0.1:`upstream`, files under `root`;
    yields nginx's pid, stopped (SIGQUIT, then SIGKILL) on exit."""
    (root / "cache").mkdir(parents=True)
    with running_nginx(root, nginx_conf(root, port, upstream)) as pid:
        yield pid


class Hook:
    """A purge endpoint on 127.0.0.1: records each POSTed JSON body; answers `statuses` in turn
    (then 200). With `relay_port` it accepts at once and then, as a CDN's purge API does, purges
    each URL from nginx (GET /purge/{path}, RELAY_CONCURRENCY at a time); `relayed` holds the
    time.monotonic() at which each URL's purge was answered."""

    def __init__(self, statuses: list[int] | None = None, relay_port: int | None = None) -> None:
        self.bodies: list[dict[str, list[str]]] = []
        self.relayed: dict[str, float] = {}
        self.statuses = list(statuses or [])
        self.relay_port = relay_port
        self.server: asyncio.Server | None = None
        self.port = 0
        self._client: httpx.AsyncClient | None = None
        self._limit = asyncio.Semaphore(RELAY_CONCURRENCY)
        self._relays: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=10)
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        body = json.loads(await reader.readexactly(length))
        self.bodies.append(body)
        status = self.statuses.pop(0) if self.statuses else 200
        if status == 200 and self.relay_port is not None:
            for url in body["urls"]:
                task = asyncio.create_task(self._relay(url))
                self._relays.add(task)
                task.add_done_callback(self._relays.discard)
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % status)
        await writer.drain()
        writer.close()

    @property
    def relaying(self) -> int:
        """URLs accepted and not purged yet."""
        return len(self._relays)

    async def _relay(self, url: str) -> None:
        assert self._client is not None
        async with self._limit:
            path = urlsplit(url).path
            try:
                await self._client.get(f"http://127.0.0.1:{self.relay_port}/purge{path}")
            except httpx.HTTPError:
                return
            self.relayed[url] = time.monotonic()

    async def stop(self) -> None:
        for task in list(self._relays):
            task.cancel()
        await asyncio.gather(*self._relays, return_exceptions=True)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        if self._client is not None:
            await self._client.aclose()
