"""Issue 13 point 7: the CDN purge hook (revoc/purge.py, crl_publisher/purging.py) and cache tags.

What was seen: a CDN in front of `GET /ocsp/...` kept serving the cached `good` for up to its
max-age (days) after a revocation. The end-to-end test puts a real caching proxy, nginx
`proxy_cache` with the cache purge module (Debian `libnginx-mod-http-cache-purge`), in front of
`revoc serve` on 127.0.0.1, with `revoc presign` and `revoc publish` running and
REVOC_PURGE_URL pointing at a small adapter that turns the hook's JSON into nginx purge
requests (what a CDN's purge API does; here GET /purge/{path}): a cached `good` becomes `revoked`
through the proxy within seconds of `revoc cert revoke` (CONFORMANCE OCSP-HTTP-7).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import asyncpg
import httpx
import pytest
from cryptography.x509 import ocsp

from revoc import admin
from revoc.purge import PurgeClient, ocsp_get_urls
from tests.daemons import Daemon, _free_port
from tests.edge_proxy import Hook, caching_proxy, proxy_available
from tests.pki import make_ca, make_leaf, write_pem_certs
from tests.responder_world import wait_until


async def test_purge_client_retries_with_backoff_and_counts() -> None:
    hook = Hook(statuses=[503, 500])
    await hook.start()
    counts: dict[str, int] = {}

    def count(name: str, amount: int) -> None:
        counts[name] = counts.get(name, 0) + amount

    client = PurgeClient(f"http://127.0.0.1:{hook.port}/purge", count=count, first_delay=0.01)
    client.submit(["http://x.example/crl/a.crl"], ["revoc-i1-crl"])
    client.submit(["http://x.example/crl/a.crl", "http://x.example/ocsp/MA%3D%3D"], [])
    assert await client.close(10)
    await hook.stop()
    # Three POSTs of one merged batch: two failures, then success.
    assert len(hook.bodies) == 3
    assert hook.bodies[-1] == {"urls": ["http://x.example/crl/a.crl",
                                        "http://x.example/ocsp/MA%3D%3D"],
                               "tags": ["revoc-i1-crl"]}
    assert counts == {"purge_retries": 2, "purge_sent": 1, "purge_urls": 2}


async def test_dead_hook_never_blocks_and_is_counted() -> None:
    port = _free_port()  # nothing listens there
    counts: dict[str, int] = {}
    client = PurgeClient(f"http://127.0.0.1:{port}/", attempts=2, first_delay=0.01,
                         count=lambda n, a: counts.__setitem__(n, counts.get(n, 0) + a))
    started = time.monotonic()
    client.submit(["http://x.example/crl/a.crl"])
    assert time.monotonic() - started < 1  # submit only queues
    assert await client.close(10)
    assert counts == {"purge_retries": 1, "purge_failed": 1}


async def test_overflow_keeps_the_issuer_tags_of_dropped_purges(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A burst larger than the queue (a mass revocation) drops the oldest URL purges, counted,
    but never silently: their issuers' tags go out with the next POST, so a CDN that purges by
    tag still drops every answer of those issuers, and one warning names the overflow."""
    from revoc import purge
    from revoc.cache_tags import cert_tag, is_cert_tag, issuer_tag, ocsp_tags

    monkeypatch.setattr(purge, "QUEUE_LIMIT", 3)
    hook = Hook(statuses=[])
    await hook.start()
    counts: dict[str, int] = {}
    client = PurgeClient(f"http://127.0.0.1:{hook.port}/purge", first_delay=0.01,
                         count=lambda n, a: counts.__setitem__(n, counts.get(n, 0) + a))
    with caplog.at_level("WARNING", logger="revoc.purge"):
        # Issuer 7's certificates first (these are dropped), then issuer 8's.
        for issuer, serial in [(7, 1), (7, 2), (8, 3), (8, 4), (8, 5)]:
            client.submit([f"http://x.example/ocsp/{issuer}-{serial}"], ocsp_tags(issuer, serial))
        assert await client.close(10)
    await hook.stop()
    assert counts["purge_dropped"] == 2
    sent_urls = [u for body in hook.bodies for u in body["urls"]]
    sent_tags = [t for body in hook.bodies for t in body["tags"]]
    assert sent_urls == [f"http://x.example/ocsp/8-{s}" for s in (3, 4, 5)]
    assert issuer_tag(7) in sent_tags and issuer_tag(8) in sent_tags
    assert cert_tag(7, 1) not in sent_tags and cert_tag(8, 5) in sent_tags
    warnings = [r for r in caplog.records if "purge queue full" in r.getMessage()]
    assert len(warnings) == 1 and issuer_tag(7) in warnings[0].getMessage()
    assert is_cert_tag(cert_tag(7, 0x1A)) and not is_cert_tag(issuer_tag(7))
    assert not is_cert_tag("revoc-i7-crl") and not is_cert_tag("revoc-ix-s1")


async def test_ocsp_urls_are_what_openssl_sends(clean_db: asyncpg.Pool, tmp_path: Path) -> None:
    """The canonical GET URLs equal OpenSSL's own requests (`-no_nonce -reqout`, SHA-1 and
    SHA-256 CertIDs), base64 percent-encoded as nginx stapling and browsers send them."""
    ca = make_ca("Purge URL CA")
    leaf = make_leaf(ca, 0xFFEE01)  # high bit set in the first octet of the serial content
    cert, key = ca.write(tmp_path)
    async with clean_db.acquire() as conn:
        await admin.add_issuer(conn, admin.IssuerRequest("purl", str(cert), key_path=str(key)))
        issuer = await admin.get_issuer(conn, "purl")
    urls = ocsp_get_urls("http://ocsp.example/", issuer, 0xFFEE01)
    ca_pem = write_pem_certs(tmp_path / "ca.pem", ca)
    leaf_pem = tmp_path / "leaf.pem"
    leaf_pem.write_bytes(leaf.cert_pem)
    for url, digest in zip(urls, ([], ["-sha256"]), strict=True):
        out = tmp_path / "req.der"
        await asyncio.to_thread(
            subprocess.run, ["openssl", "ocsp", "-issuer", str(ca_pem), *digest, "-cert",
                             str(leaf_pem), "-no_nonce", "-reqout", str(out)], check=True,
            capture_output=True)
        expected = quote(base64.b64encode(out.read_bytes()).decode(), safe="")
        assert url == f"http://ocsp.example/ocsp/{expected}"


@pytest.fixture()
def nginx(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """nginx on 127.0.0.1 caching `revoc serve` (upstream port), purging at /purge/{path}
    from 127.0.0.1 (tests/edge_proxy.py); yields (nginx port, upstream port)."""
    if not proxy_available():
        pytest.skip("nginx with libnginx-mod-http-cache-purge is not installed")
    port, upstream = _free_port(), _free_port()
    with caching_proxy(tmp_path / "nginx", port, upstream):
        yield port, upstream


async def test_cached_good_becomes_revoked_through_nginx(
        clean_db: asyncpg.Pool, database_url: str, tmp_path: Path,
        nginx: tuple[int, int]) -> None:
    edge_port, port = nginx
    ca = make_ca("Edge CA")
    leaf = make_leaf(ca, 0x5EED)
    cert, key = ca.write(tmp_path)
    async with clean_db.acquire() as conn:
        await admin.add_issuer(conn, admin.IssuerRequest("edge", str(cert), key_path=str(key)))
        await admin.add_certificates(conn, "edge", [str(leaf.write(tmp_path)[0])])
        issuer = await admin.get_issuer(conn, "edge")
    hook = Hook(relay_port=edge_port)
    await hook.start()
    public = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVOC_")}
    env.update({"REVOC_DATABASE_URL": database_url, "REVOC_PORT": str(port),
                "REVOC_PUBLIC_URL": public, "REVOC_PRESIGN_PROCESSES": "1",
                "REVOC_CRL_OUT": str(tmp_path / "crl"),
                "REVOC_PURGE_URL": f"http://127.0.0.1:{hook.port}/purge"})
    daemons = [Daemon([name], env) for name in ("serve", "presign", "publish")]
    get_url = ocsp_get_urls(public, issuer, 0x5EED)[0]
    edge_url = get_url.replace(public, f"http://127.0.0.1:{edge_port}")

    async def through_edge(client: httpx.AsyncClient) -> tuple[str, ocsp.OCSPCertStatus | None]:
        response = await client.get(edge_url)
        if response.headers.get("content-type") != "application/ocsp-response":
            return response.headers.get("x-cache", ""), None  # revoc serve not up yet: 502
        der = ocsp.load_der_ocsp_response(response.content)
        status = (der.certificate_status
                  if der.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL else None)
        return response.headers.get("x-cache", ""), status

    try:
        async with httpx.AsyncClient(timeout=10) as client:
            deadline = time.monotonic() + 60
            while (await through_edge(client))[1] is not ocsp.OCSPCertStatus.GOOD:
                assert time.monotonic() < deadline, "no good answer through nginx"
                await asyncio.sleep(0.2)
            # The proxy now holds the `good` answer (a busy machine may need a request more).
            while await through_edge(client) != ("HIT", ocsp.OCSPCertStatus.GOOD):
                assert time.monotonic() < deadline, "nginx never cached the good answer"
                await asyncio.sleep(0.2)
            direct = await client.get(get_url)
            assert direct.headers["surrogate-key"] == f"revoc-i{issuer.id} revoc-i{issuer.id}-s5EED"
            assert direct.headers["cache-tag"] == f"revoc-i{issuer.id},revoc-i{issuer.id}-s5EED"
            revoked = await asyncio.to_thread(
                subprocess.run, [str(Path(sys.executable).with_name("revoc")), "cert", "revoke",
                                 "--issuer", "edge", "--serial", "5EED", "--reason",
                                 "keyCompromise"], env=env, capture_output=True, text=True)
            assert revoked.returncode == 0, revoked.stderr
            started = time.monotonic()
            while (await through_edge(client))[1] is not ocsp.OCSPCertStatus.REVOKED:
                assert time.monotonic() - started < 30, (
                    f"still not revoked through nginx; hook got {hook.bodies}; publish said:\n"
                    + daemons[2].output[-2000:])
                await asyncio.sleep(0.2)
            purged = [url for body in hook.bodies for url in body["urls"]]
            assert get_url in purged
            assert any(f"revoc-i{issuer.id}-s5EED" in body["tags"] for body in hook.bodies)
    finally:
        for daemon in daemons:
            daemon.stop(signal.SIGTERM)
        await hook.stop()


async def test_publication_purge_names_every_changed_url(clean_db: asyncpg.Pool,
                                                         tmp_path: Path) -> None:
    """After a publication the hook gets each CRL's URL, the URLs in its IDP and the issuer's
    urls.json, with the issuer's CRL tags."""
    from crl_publisher.publisher import publish_round
    from crl_publisher.purging import publication_purge
    from tests.crl_fixtures import PUBLIC_URL, add_leaves, clock, register_pki, settings_for

    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "p", "pur", shards=2)
        await add_leaves(conn, pki, [2, 3])
    settings = settings_for(tmp_path)
    report = await publish_round(clean_db, settings, clock=clock())
    urls, tags = publication_purge(settings, report.publications)
    assert sorted(urls) == sorted([f"{PUBLIC_URL}/crl/pur/{k}{suffix}"
                                   for k in range(2) for suffix in (".crl", "-delta.crl")]
                                  + [f"{PUBLIC_URL}/crl/pur/urls.json"])
    assert tags == ["revoc-i1", "revoc-i1-crl"]


async def test_publication_purged_again_after_the_responders_reload(
        clean_db: asyncpg.Pool, tmp_path: Path) -> None:
    """HTTP-CRL-4 with a CDN: a responder loads a new CRL on NOTIFY (a standby by polling), so
    a CDN refetching the instant it is purged may cache the old CRL for max-age. The publisher
    purges the same URLs again `repurge_after` seconds later; a process that stops first
    (`publish --once`) drops that second purge instead of waiting for it."""
    from crl_publisher.publisher import publish_round
    from crl_publisher.purging import PublisherPurge, publication_purge
    from tests.crl_fixtures import add_leaves, clock, register_pki, settings_for

    hook = Hook()
    await hook.start()
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "p", "rep")
        await add_leaves(conn, pki, [2, 3])
    settings = dataclasses.replace(settings_for(tmp_path),
                                   purge_url=f"http://127.0.0.1:{hook.port}/purge")
    report = await publish_round(clean_db, settings, clock=clock())
    urls, _tags = publication_purge(settings, report.publications)
    purge = PublisherPurge(settings, clean_db, repurge_after=0.3)
    purge.published(report.publications)
    await wait_until(lambda: len(hook.bodies) >= 2, 20)
    assert [sorted(body["urls"]) for body in hook.bodies] == [sorted(urls)] * 2
    stopping = PublisherPurge(settings, clean_db, repurge_after=30)
    stopping.published(report.publications)
    await stopping.close(10)
    await purge.close(10)
    await hook.stop()
    assert len(hook.bodies) == 3  # the first purge of `stopping`, never its second
