"""The answer pipeline's seams (issue 12): `FastPath.lookup`, the one call an HTTP server makes
for a warm hit, and the store's reads costing one round trip per batch (no pool reset between
runs of batches), against real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from cryptography.x509 import ocsp as x509_ocsp

from responder.app import Responder
from responder.cache import CachedResponse, CacheKey
from responder.fast_path import FastPath
from responder.http_render import HttpRenderer, http_date, ok_headers
from responder.sources import ResponseStore
from revoc.der.ocsp import SingleResponse, build_ocsp_response, responder_key_hash
from revoc.model import CertStatus
from revoc.signing import FileKeySigner
from tests.responder_world import GOOD, REVOKED, World, post, serve_asgi


def _split(wire: bytes) -> tuple[list[bytes], bytes]:
    head, _sep, body = wire.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), body


async def test_fast_path_lookup_contract(world: World) -> None:
    """A memo hit is a whole HTTP/1.1 200 with the DER the ASGI path sent; a miss is a coroutine
    giving the whole response and whether to close; everything the fast path must leave to ASGI
    is None."""
    async with serve_asgi(world) as (app, client):
        responder: Responder = app.state.responder
        fast = responder.fast_path
        assert isinstance(fast, FastPath)
        der = world.request(GOOD)
        target = b"/ocsp/" + base64.b64encode(der)
        later = fast.lookup(b"GET", target, [], b"", False)  # not memoized yet: a miss
        assert inspect.iscoroutine(later)
        wire, close = await later
        assert not close
        via_asgi = await client.get(target.decode())
        assert _split(wire)[1] == via_asgi.content
        assert (await post(client, der)).content == via_asgi.content  # both memos filled
        served = responder.metrics.sources[0]

        lines, body = _split(fast.lookup(b"GET", target, [(b"host", b"x")], b"", False) or b"")
        assert lines[0] == b"HTTP/1.1 200 OK" and lines[1].startswith(b"date: ")
        assert body == via_asgi.content
        headers = dict(line.split(b": ", 1) for line in lines[1:])
        for name in ("content-type", "content-length", "etag", "last-modified", "expires"):
            assert headers[name.encode()].decode() == via_asgi.headers[name], name
        assert headers[b"cache-control"].endswith(b", public, no-transform, must-revalidate")
        assert b"connection" not in headers
        lines, body = _split(fast.lookup(b"POST", b"/ocsp", [], der, True) or b"")
        assert lines[-1] == b"connection: close" and body == via_asgi.content
        assert responder.metrics.sources[0] == served + 2  # counted as memo hits

        for method, path, headers_in, body_in in (
                (b"HEAD", target, [], b""),
                (b"GET", target, [(b"if-none-match", b"*")], b""),  # 304 is the ASGI path's
                (b"POST", b"/other", [], der),
                (b"GET", target + b"?x=1", [], b""),  # not what the memo is keyed by
                (b"PUT", b"/ocsp", [], der)):
            assert fast.lookup(method, path, headers_in, body_in, False) is None, method
        later = fast.lookup(b"POST", b"/ocsp", [], world.request(REVOKED), True)
        assert inspect.iscoroutine(later)
        wire, close = await later
        lines, revoked = _split(wire)
        assert close and lines[-1] == b"connection: close"
        assert x509_ocsp.load_der_ocsp_response(revoked).certificate_status == (
            x509_ocsp.OCSPCertStatus.REVOKED)
        assert x509_ocsp.load_der_ocsp_response(body).certificate_status == (
            x509_ocsp.OCSPCertStatus.GOOD)


async def test_store_reads_skip_the_pool_reset(world: World,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12: each batch took two round trips, the query and the pool's reset on release.
    Now a reader connection stays with the store between runs of batches and is reset once, when
    it goes back to the pool (idle, or at close)."""
    rows = await world.pool.fetch("SELECT issuer_id, serial, hash_alg FROM ocsp_responses")
    resets: list[int] = []
    original = asyncpg.connection.Connection.reset

    async def counting_reset(self: asyncpg.Connection, **kwargs: Any) -> None:
        resets.append(1)
        await original(self, **kwargs)

    monkeypatch.setattr(asyncpg.connection.Connection, "reset", counting_reset)
    store = ResponseStore(world.pool, 5.0)
    for row in rows * 3:  # one miss at a time: a run of batches each
        answer = await store.response(row["issuer_id"], bytes(row["serial"]), row["hash_alg"])
        assert answer is not None and answer[0]
    assert store.misses.batches == len(rows) * 3
    assert resets == []
    await store.close()
    assert resets == [1]

    # An idle reader goes back to the pool by itself.
    monkeypatch.setattr(ResponseStore, "READER_IDLE_SECONDS", 0.05)
    store = ResponseStore(world.pool, 5.0)
    await store.response(rows[0]["issuer_id"], bytes(rows[0]["serial"]), rows[0]["hash_alg"])
    deadline = time.monotonic() + 5
    while len(resets) < 2:
        assert time.monotonic() < deadline, "the idle reader was never released"
        await asyncio.sleep(0.01)


def test_wire_renderings_are_the_header_lines_in_order(world: World) -> None:
    """`ok_wire` and `fresh_wire` (the bytes a warm hit and a miss send) equal the status line,
    the date and `ok_headers` rendered one line each, as uvicorn renders the ASGI messages:
    with and without cache tags, with the max-age cap of a live `unknown`, past nextUpdate, and
    with `connection: close`."""
    now = datetime.now(UTC).replace(microsecond=0)
    signer = FileKeySigner(world.ca.key)
    renderer = HttpRenderer()
    for status in (CertStatus.GOOD, CertStatus.UNKNOWN):
        der = build_ocsp_response(
            [SingleResponse(world.cert_id(GOOD), status, now, now + timedelta(days=1))],
            signer=signer, responder_key_hash=responder_key_hash(world.ca.cert),
            produced_at=now)
        this_update = int(now.timestamp())
        for key in (None, CacheKey(1, b"\x10\x01", 1), CacheKey(12, b"\x00\xff\x10", 3)):
            entry = CachedResponse(der, this_update, this_update + 86400, key=key)
            for second in (this_update + 5, this_update + 2 * 86400):
                for close in (False, True):
                    date = b"date: " + http_date(second) + b"\r\n"
                    expected = b"".join((
                        b"HTTP/1.1 200 OK\r\n", date,
                        *(b"%s: %s\r\n" % pair for pair in ok_headers(entry, second)),
                        b"connection: close\r\n" if close else b"", b"\r\n", der))
                    assert renderer.fresh_wire(entry, second, close) == expected
                    assert renderer.ok_wire(entry, second, close) == expected
                    start, body = HttpRenderer.ok_messages(entry, second)
                    wire, closes = renderer.messages_wire((start, body), second, close)
                    assert wire == expected and closes == close
