"""Issue 13 points 4, 7 (tags) and 8: CRLs over HTTP as CDNs, CRLite's crawler and devices on
flaky links use them, and the CCADB URL list next to them (CONFORMANCE HTTP-CRL-3/4, ROOT-1,
ROOT-3, SHARD-7). The app is `crl_routes` over a `CrlStore` loaded from a real PostgreSQL after
`publish_round`; `revoc crl urls` runs as the installed console script."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import timedelta
from email.utils import format_datetime, parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
from cryptography import x509
from starlette.applications import Starlette

from crl_publisher.publisher import publish_round
from responder.crl_files import CrlStore, crl_routes
from revoc.clock import FixedClock
from revoc.model import Reason
from tests.crl_fixtures import (
    PUBLIC_URL,
    START,
    add_leaves,
    clock,
    register_pki,
    revoke,
    settings_for,
)
from tests.pki import make_leaf

_REVOC = str(Path(sys.executable).with_name("revoc"))


async def _app(pool: asyncpg.Pool, tmp_path: Path, serving: FixedClock) -> httpx.AsyncClient:
    settings = settings_for(tmp_path, crl_max_age=300)
    store = CrlStore(PUBLIC_URL)
    await store.load(pool)
    app = Starlette(routes=crl_routes(store, settings, clock=serving))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_crl_http_details(clean_db: asyncpg.Pool, tmp_path: Path) -> None:
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "p", "http")
        await add_leaves(conn, pki, range(1, 40))
        for serial in range(1, 40, 2):
            await revoke(conn, pki, serial, Reason.keyCompromise, START - timedelta(hours=1))
    settings = settings_for(tmp_path)
    await publish_round(clean_db, settings, clock=clock())
    der = (settings.crl_out / "http.crl").read_bytes()
    serving = FixedClock(START + timedelta(minutes=1))
    async with await _app(clean_db, tmp_path, serving) as client:
        full = await client.get("/crl/http.crl")
        assert full.content == der
        # Expires = now + max-age; stale-if-error up to nextUpdate (7 days of validity).
        assert full.headers["cache-control"] == (
            f"public, max-age=300, stale-if-error={7 * 86400 - 60}, no-transform")
        expires = parsedate_to_datetime(full.headers["expires"])
        assert expires == serving.now() + timedelta(seconds=300)
        assert full.headers["accept-ranges"] == "bytes"
        # Cache tags for purge by tag (revoc/cache_tags.py): the issuer and its CRLs.
        assert full.headers["surrogate-key"] == "revoc-i1 revoc-i1-crl"
        assert full.headers["cache-tag"] == "revoc-i1,revoc-i1-crl"
        # HEAD: what CRLite's aggregator decides a download from.
        head = await client.head("/crl/http.crl")
        assert head.content == b"" and head.headers["content-length"] == str(len(der))
        assert head.headers["last-modified"] == format_datetime(START, usegmt=True)
        # One range: 206 with Content-Range; several: the whole CRL; past the end: 416.
        part = await client.get("/crl/http.crl", headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and part.content == der[:100]
        assert part.headers["content-range"] == f"bytes 0-99/{len(der)}"
        assert part.headers["content-length"] == "100"
        rest = await client.get("/crl/http.crl", headers={"Range": "bytes=100-"})
        assert rest.status_code == 206 and part.content + rest.content == der
        tail = await client.get("/crl/http.crl", headers={"Range": "bytes=-50"})
        assert tail.status_code == 206 and tail.content == der[-50:]
        many = await client.get("/crl/http.crl", headers={"Range": "bytes=0-1,5-9"})
        assert many.status_code == 200 and many.content == der
        beyond = await client.get("/crl/http.crl", headers={"Range": f"bytes={len(der)}-"})
        assert beyond.status_code == 416
        assert beyond.headers["content-range"] == f"bytes */{len(der)}"
        # If-Range with another ETag (a new CRL meanwhile): the whole new CRL, never a splice.
        other = await client.get("/crl/http.crl", headers={"Range": "bytes=0-9",
                                                           "If-Range": '"old"'})
        assert other.status_code == 200 and other.content == der
        same = await client.get("/crl/http.crl", headers={"Range": "bytes=0-9",
                                                          "If-Range": full.headers["etag"]})
        assert same.status_code == 206
        # If-Modified-Since in the future is invalid (RFC 9110 §13.1.3): the CRL, not 304.
        future = await client.get("/crl/http.crl", headers={
            "If-Modified-Since": format_datetime(serving.now() + timedelta(days=1),
                                                 usegmt=True)})
        assert future.status_code == 200 and future.content == der
        now_since = await client.get("/crl/http.crl", headers={
            "If-Modified-Since": format_datetime(serving.now(), usegmt=True)})
        assert now_since.status_code == 304
        # A 404 is cached for seconds only: a scope published a moment later is found.
        missing = await client.get("/crl/http/9.crl")
        assert missing.status_code == 404
        assert missing.headers["cache-control"] == "public, max-age=10"


async def _revoc(*argv: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [_REVOC, *argv], capture_output=True,
                                   text=True, check=False, env={**os.environ, **env})


async def test_ccadb_url_list_matches_every_served_idp(clean_db: asyncpg.Pool, database_url: str,
                                                       tmp_path: Path) -> None:
    """ROOT-1 / SHARD-7: `revoc crl urls --json` == /crl/{issuer}/urls.json, and every URL in it
    serves a CRL whose issuingDistributionPoint (when present) names it byte for byte."""
    async with clean_db.acquire() as conn:
        sharded = await register_pki(conn, tmp_path / "s", "ccs", shards=3)
        await add_leaves(conn, sharded, [3, 4])  # shards 0 and 1; shard 2 has none yet
        plain = await register_pki(conn, tmp_path / "u", "ccu")
        await add_leaves(conn, plain, [1])
        # A certificate of the unsharded issuer naming a shard URL (a scope of its own).
        leaf = make_leaf(plain.ca, 9, crl_url=f"{PUBLIC_URL}/crl/ccu/5.crl")
        (tmp_path / "u9.pem").write_bytes(leaf.cert_pem)
        from revoc import admin

        await admin.add_certificates(conn, "ccu", [str(tmp_path / "u9.pem")])
    settings = settings_for(tmp_path)
    await publish_round(clean_db, settings, clock=clock())
    env = {"REVOC_DATABASE_URL": database_url, "REVOC_PUBLIC_URL": PUBLIC_URL}
    expected = {
        "ccs": [f"{PUBLIC_URL}/crl/ccs/{k}.crl" for k in range(3)],
        "ccu": [f"{PUBLIC_URL}/crl/ccu.crl", f"{PUBLIC_URL}/crl/ccu/5.crl"],
    }
    serving = FixedClock(START + timedelta(minutes=1))
    async with await _app(clean_db, tmp_path, serving) as client:
        for name, urls in expected.items():
            done = await _revoc("crl", "urls", "--issuer", name, "--json", env=env)
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout) == urls
            lines = await _revoc("crl", "urls", "--issuer", name, env=env)
            assert lines.stdout.splitlines() == urls
            served = await client.get(f"/crl/{name}/urls.json")
            assert served.status_code == 200, served.text
            assert served.headers["content-type"] == "application/json"
            assert served.content.decode().strip() == done.stdout.strip()
            for url in urls:
                response = await client.get(urlsplit(url).path)
                assert response.status_code == 200, url
                crl = x509.load_der_x509_crl(response.content)
                try:
                    idp = crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
                except x509.ExtensionNotFound:
                    assert url.endswith(f"/crl/{name}.crl")  # the issuer-wide CRL: no IDP
                    continue
                names = [n.value for n in idp.value.full_name or []]
                assert url in names
                assert url.encode() in idp.value.public_bytes()  # the IA5String, byte for byte
    unknown = await _revoc("crl", "urls", "--issuer", "nope", env=env)
    assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1


async def test_crls_load_while_the_url_lists_are_held_up(clean_db: asyncpg.Pool,
                                                         tmp_path: Path) -> None:
    """The CCADB URL lists aggregate every certificate (27 s at 10M): loading a new CRL, which
    carries revocations, never waits for them. With `certificates` locked so the aggregate
    cannot run, the CRL is loaded and served, urls.json answers 503 (not a 404 a CDN keeps),
    and once the lock goes the list is served."""
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "p", "held")
        await add_leaves(conn, pki, [1, 2])
        await revoke(conn, pki, 1, Reason.keyCompromise, START - timedelta(hours=1))
    settings = settings_for(tmp_path)
    await publish_round(clean_db, settings, clock=clock())
    store = CrlStore(PUBLIC_URL)
    app = Starlette(routes=crl_routes(store, settings, clock=FixedClock(START)))
    async with clean_db.acquire() as locker, httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        lock = locker.transaction()
        await lock.start()
        await locker.execute("LOCK TABLE certificates IN ACCESS EXCLUSIVE MODE")
        assert await asyncio.wait_for(store.load(clean_db, urls=False), 30) >= 1
        assert store.urls_stale and not store.urls_ready
        full = await client.get("/crl/held.crl")
        assert full.status_code == 200
        assert x509.load_der_x509_crl(full.content).get_revoked_certificate_by_serial_number(1)
        refresh = asyncio.create_task(store.refresh_urls(clean_db))
        waiting = await client.get("/crl/held/urls.json")
        assert waiting.status_code == 503 and waiting.headers["cache-control"] == "no-store"
        assert not refresh.done()
        await lock.rollback()
        await asyncio.wait_for(refresh, 30)
        served = await client.get("/crl/held/urls.json")
        assert served.status_code == 200 and json.loads(served.content) == [
            f"{PUBLIC_URL}/crl/held.crl"]
    assert not store.urls_stale
