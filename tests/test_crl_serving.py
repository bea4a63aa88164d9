"""responder.crl_files: the CRLs in memory, served with validators, over a small Starlette app."""

from __future__ import annotations

from datetime import timedelta
from email.utils import format_datetime
from pathlib import Path

import asyncpg
import httpx
from starlette.applications import Starlette

from crl_publisher.publisher import publish_round
from responder.crl_files import CrlStore, crl_routes
from revoc.clock import FixedClock
from revoc.model import Reason
from tests.crl_fixtures import START, add_leaves, clock, register_pki, revoke, settings_for


async def test_serves_published_bytes_with_validators(clean_db: asyncpg.Pool,
                                                      tmp_path: Path) -> None:
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "p1", "web")
        await register_pki(conn, tmp_path / "p2", "webs", shards=2)
        await add_leaves(conn, pki, [1, 2])
        await revoke(conn, pki, 1, Reason.keyCompromise, START - timedelta(hours=1))
    settings = settings_for(tmp_path, crl_max_age=300)
    fixed = clock()
    await publish_round(clean_db, settings, clock=fixed)
    store = CrlStore()
    assert await store.load(clean_db) == 6
    assert await store.load(clean_db) == 0  # nothing new: nothing fetched again
    serving_clock = FixedClock(START + timedelta(minutes=1))
    app = Starlette(routes=crl_routes(store, settings, clock=serving_clock))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for name in ["web.crl", "web-delta.crl", "webs/0.crl", "webs/1-delta.crl"]:
            response = await client.get(f"/crl/{name}")
            assert response.status_code == 200
            assert response.content == (settings.crl_out / name).read_bytes()
            assert response.headers["content-type"] == "application/pkix-crl"
            assert response.headers["cache-control"].startswith("public, max-age=300, ")
            assert response.headers["last-modified"] == format_datetime(START, usegmt=True)
            etag = response.headers["etag"]
            assert etag.startswith('"') and len(etag) == 66
            head = await client.head(f"/crl/{name}")
            assert head.status_code == 200 and head.content == b""
            assert head.headers["content-length"] == str(len(response.content))
            assert head.headers["etag"] == etag
            again = await client.get(f"/crl/{name}", headers={"If-None-Match": etag})
            assert again.status_code == 304 and again.content == b""
            assert again.headers["etag"] == etag
            since = await client.get(f"/crl/{name}", headers={
                "If-Modified-Since": format_datetime(START, usegmt=True)})
            assert since.status_code == 304
            older = await client.get(f"/crl/{name}", headers={
                "If-Modified-Since": format_datetime(START - timedelta(seconds=1), usegmt=True)})
            assert older.status_code == 200
            stale_tag = await client.get(f"/crl/{name}", headers={"If-None-Match": '"abc"'})
            assert stale_tag.status_code == 200
        for missing in ["nope.crl", "webs.crl", "web/0.crl", "webs/7.crl", "web.pem"]:
            assert (await client.get(f"/crl/{missing}")).status_code == 404
        # max-age never reaches past nextUpdate (delta: 1 day of validity).
        serving_clock.advance(timedelta(days=1) - timedelta(minutes=1) - timedelta(seconds=60))
        delta = await client.get("/crl/web-delta.crl")
        assert delta.headers["cache-control"] == ("public, max-age=60, stale-if-error=60, "
                                                  "no-transform")
        serving_clock.advance(timedelta(days=1))
        expired = await client.get("/crl/web-delta.crl")
        assert expired.headers["cache-control"] == ("public, max-age=0, stale-if-error=0, "
                                                    "no-transform")

        # A new publication replaces the bytes after load (the app calls it on NOTIFY).
        old_etag = (await client.get("/crl/web.crl")).headers["etag"]
        fixed.advance(timedelta(days=1))
        await publish_round(clean_db, settings, clock=fixed)
        assert await store.load(clean_db) == 6
        new = await client.get("/crl/web.crl")
        assert new.headers["etag"] != old_etag
        assert new.content == (settings.crl_out / "web.crl").read_bytes()
