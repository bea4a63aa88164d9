"""The uvicorn adapter of the fast path (responder/fast_lane.py) under a real uvicorn server.

These run against whatever uvicorn is installed (pyproject.toml no longer caps its version): the
adapter's start-up self-check and the byte-for-byte comparisons below are what says the seam
still holds with a new release.

The app is wrapped in a counting ASGI middleware: a request the lane answers never reaches ASGI,
so the counter tells which path answered. Answers are read off raw sockets and compared byte for
byte with what uvicorn's own path sent for the same request (only the Date line may differ, when
the second turns between the two).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import uvicorn
from cryptography.x509 import ocsp as x509_ocsp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from responder.answer_sources import FilterSource
from responder.app import Responder, create_app, uvicorn_options
from responder.fast_lane import FastLaneProtocol, protocol_for, self_check
from responder.ocsp_endpoint import Receive, Scope, Send
from revoc import admin
from revoc.clock import FixedClock
from revoc.der.ocsp import cert_id_der, encode_ocsp_request
from revoc.model import HashAlgorithm, Reason
from tests.bounds import within
from tests.responder_world import (
    GOOD,
    LATER,
    NEVER,
    REVOKED,
    World,
    lint,
    presign,
    wait_until,
)

OPENSSL = shutil.which("openssl")


class Counting:
    """ASGI middleware counting the HTTP requests that reach the app."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.calls = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.calls += 1
        await self.app(scope, receive, send)


@dataclass
class Served:
    port: int
    counter: Counting
    responder: Responder

    async def exchange(self, raw: bytes, count: int = 1, *,
                       pause_after: int | None = None) -> list[tuple[list[bytes], bytes]]:
        """Send `raw` on a fresh connection (optionally in two parts, split at `pause_after`),
        read `count` responses: (head lines, body)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            if pause_after is None:
                writer.write(raw)
            else:
                writer.write(raw[:pause_after])
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(raw[pause_after:])
            await writer.drain()
            return [await read_response(reader) for _ in range(count)]
        finally:
            writer.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[list[bytes], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head[:-4].split(b"\r\n")
    length = 0
    for line in lines[1:]:
        name, _sep, value = line.partition(b": ")
        if name == b"content-length":
            length = int(value)
    body = await asyncio.wait_for(reader.readexactly(length), 5) if length else b""
    return lines, body


def without_date(lines: list[bytes]) -> list[bytes]:
    """The head without what depends on the second it was sent in: uvicorn's Date header, and
    the max-age counted down to nextUpdate (two answers a second boundary apart differ by 1)."""
    dates = [line for line in lines if line.startswith(b"date: ")]
    assert len(dates) == 1, lines  # uvicorn's Date header, on both paths
    return [re.sub(rb"max-age=\d+", b"max-age=N", line) for line in lines
            if not line.startswith(b"date: ")]


def get(path: str, *extra: str, version: str = "1.1") -> bytes:
    headers = "".join(f"{line}\r\n" for line in ("host: responder.test", *extra))
    return f"GET {path} HTTP/{version}\r\n{headers}\r\n".encode()


def post(body: bytes, *extra: str, version: str = "1.1") -> bytes:
    headers = "".join(f"{line}\r\n" for line in (
        "host: responder.test", "content-type: application/ocsp-request",
        f"content-length: {len(body)}", *extra))
    return f"POST /ocsp HTTP/{version}\r\n{headers}\r\n".encode() + body


def chunked_post(body: bytes) -> bytes:
    return (b"POST /ocsp HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")


def get_path(der: bytes) -> str:
    return "/ocsp/" + base64.b64encode(der).decode()


@pytest_asyncio.fixture(loop_scope="session")
async def served(world: World) -> AsyncIterator[Served]:
    async with serve_uvicorn(world) as handle:
        yield handle


class serve_uvicorn:
    """`revoc serve`'s uvicorn options (FastLaneProtocol) on a free port, in this loop."""

    def __init__(self, world: World, clock: FixedClock | None = None, *, lane: bool = True,
                 **options: Any) -> None:
        self.app = create_app(world.settings, pool=world.pool, clock=clock)
        self.counter = Counting(self.app)
        self.lane = lane
        self.options = options

    async def __aenter__(self) -> Served:
        options = uvicorn_options(replace(self.world_settings(), port=0, fast_lane=self.lane))
        del options["loop"]  # this test's loop is pytest-asyncio's
        options["log_level"] = "warning"
        options.update(self.options)
        config = uvicorn.Config(self.counter, **options)
        self.server = uvicorn.Server(config)
        self.task = asyncio.create_task(self.server.serve())
        await wait_until(lambda: self.server.started or self.task.done())
        assert not self.task.done(), "uvicorn did not start"
        port = self.server.servers[0].sockets[0].getsockname()[1]
        responder: Responder = self.app.state.responder
        await wait_until(responder.ready)
        return Served(port, self.counter, responder)

    def world_settings(self) -> Any:
        return self.app.state.responder.settings

    async def __aexit__(self, *exc: object) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 10)


def check_with_openssl(world: World, der: bytes, serial: int, tmp_path: Path,
                       expect: str) -> None:
    """`openssl ocsp -respin` verifies the signature chain and prints the status."""
    assert OPENSSL is not None
    path = tmp_path / f"lane-{serial:x}.der"
    path.write_bytes(der)
    result = subprocess.run(
        [OPENSSL, "ocsp", "-respin", str(path), "-issuer", str(world.ca_pem),
         "-CAfile", str(world.root_pem), "-serial", hex(serial)],
        capture_output=True, text=True, timeout=30, check=False)
    output = result.stdout + result.stderr
    assert "Response verify OK" in output, output
    assert f"{hex(serial)}: {expect}" in output, output


# ------------------------------------------------------------------ the lane answers


def test_self_check_passes_on_the_installed_uvicorn() -> None:
    assert self_check() == [], f"uvicorn {uvicorn.__version__}"
    assert protocol_for(True) is FastLaneProtocol
    assert protocol_for(False) == "httptools"


@pytest_asyncio.fixture(loop_scope="session")
async def plain(world: World) -> AsyncIterator[Served]:
    """The same app behind plain uvicorn (fast_lane off): what uvicorn's own path sends."""
    async with serve_uvicorn(world, lane=False) as handle:
        yield handle


@pytest.mark.skipif(OPENSSL is None, reason="openssl not installed")
async def test_lane_sends_the_bytes_uvicorn_sent(served: Served, plain: Served, world: World,
                                                 tmp_path: Path) -> None:
    """OCSP-HTTP-1/5/7: the lane's answers, miss and memo hit, equal plain uvicorn's, headers
    included; no request reaches the ASGI app of the lane's server."""
    for raw in (get(get_path(world.request(GOOD))), post(world.request(GOOD))):
        calls = served.counter.calls
        first = (await served.exchange(raw))[0]  # a miss: the lane awaits the pipeline
        memo_before = served.responder.metrics.sources[0]
        second = (await served.exchange(raw))[0]  # a memo hit
        assert served.counter.calls == calls, "the lane should have answered both"
        assert served.responder.metrics.sources[0] == memo_before + 1
        for _time in (1, 2):  # uvicorn's path: a miss, then a memo hit
            expected = (await plain.exchange(raw))[0]
            assert first[1] == second[1] == expected[1]
            assert without_date(first[0]) == without_date(second[0]) == without_date(expected[0])
        assert second[0][0] == b"HTTP/1.1 200 OK"
        assert any(line.startswith(b"cache-control: max-age=") for line in second[0])
        check_with_openssl(world, second[1], GOOD, tmp_path, "good")
        lint(second[1], tmp_path)
    # An HTTP client (h11 checks the framing) sees a well-formed 200 from the lane.
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{served.port}") as client:
        calls = served.counter.calls
        response = await client.get(get_path(world.request(GOOD)))
        assert served.counter.calls == calls
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/ocsp-response"
        single = x509_ocsp.load_der_ocsp_response(response.content)
        assert single.certificate_status == x509_ocsp.OCSPCertStatus.GOOD


def miss_cases(world: World) -> list[tuple[str, bytes]]:
    """Requests the lane answers without ASGI, one per kind of answer (CONFORMANCE IDs)."""
    stranger = cert_id_der(HashAlgorithm.SHA1, b"0\x00", b"not our CA", GOOD)
    too_large = base64.b64encode(b"\x30" * (world.settings.max_request_bytes + 1)).decode()
    return [
        ("revoked, from the store (OCSP-RESP-2)", post(world.request(REVOKED))),
        ("good, SHA-256 CertID, GET", get(get_path(world.request(GOOD, HashAlgorithm.SHA256)))),
        ("never issued: unauthorized (OCSP-RESP-11)", post(world.request(NEVER))),
        ("unknown issuer: unauthorized (OCSP-REQ-4)",
         post(encode_ocsp_request([stranger]))),
        ("several CertIDs: malformedRequest (OCSP-REQ-7)", post(encode_ocsp_request(
            [world.cert_id(GOOD), world.cert_id(REVOKED)]))),
        ("nonce, no live signing: the pre-signed answer (OCSP-RESP-14)",
         post(world.request(REVOKED, nonce=b"0123456789abcdef"))),
        ("not DER: malformedRequest (OCSP-REQ-1)", post(b"\x30\x03\x02\x01")),
        ("GET, not base64: malformedRequest (OCSP-HTTP-2)", get("/ocsp/!!notbase64")),
        ("GET, base64url and no padding (OCSP-HTTP-4)", get("/ocsp/" + base64.urlsafe_b64encode(
            world.request(GOOD)).decode().rstrip("="))),
        ("GET, decoded past the cap: 414", get("/ocsp/" + too_large)),
        ("HTTP/1.0: connection: close", post(world.request(LATER), version="1.0")),
        ("connection: close", get(get_path(world.request(LATER)), "connection: close")),
    ]


async def test_lane_misses_and_errors_send_the_bytes_uvicorn_sent(
        served: Served, plain: Served, world: World) -> None:
    """Every kind of miss and OCSP error the lane answers: byte for byte what plain uvicorn
    sends for it (the same pipeline decides, only the HTTP machinery differs), and the ASGI app
    of the lane's server is never called."""
    calls = served.counter.calls
    for name, raw in miss_cases(world):
        got = (await served.exchange(raw))[0]
        expected = (await plain.exchange(raw))[0]
        assert got[1] == expected[1], name
        assert without_date(got[0]) == without_date(expected[0]), name
    assert served.counter.calls == calls


async def test_lane_try_later_and_internal_error(served: Served, plain: Served, world: World,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A revocation the presigner has not signed yet: tryLater from the lane as from uvicorn,
    never the old `good` (invariant 1); an exception in the pipeline: internalError, logged,
    never a 5xx (OCSP-HTTP-8)."""
    async with world.pool.acquire() as conn:
        await admin.revoke(conn, admin.RevokeRequest(
            issuer="ca", serial=LATER, reason=Reason.superseded,
            revoked_at=datetime.now(UTC).replace(microsecond=0)))
    calls = served.counter.calls
    raw = post(world.request(LATER))
    got = (await served.exchange(raw))[0]
    expected = (await plain.exchange(raw))[0]
    assert x509_ocsp.load_der_ocsp_response(got[1]).response_status == (
        x509_ocsp.OCSPResponseStatus.TRY_LATER)
    assert got[1] == expected[1] and without_date(got[0]) == without_date(expected[0])

    async def boom(self: Any, query: Any) -> Any:
        raise RuntimeError("a fault the tests cannot cause otherwise")

    monkeypatch.setattr(FilterSource, "answer", boom)
    raw = post(world.request(GOOD, HashAlgorithm.SHA256))
    got = (await served.exchange(raw))[0]
    expected = (await plain.exchange(raw))[0]
    assert got[0][0] == b"HTTP/1.1 200 OK"
    assert x509_ocsp.load_der_ocsp_response(got[1]).response_status == (
        x509_ocsp.OCSPResponseStatus.INTERNAL_ERROR)
    assert got[1] == expected[1] and without_date(got[0]) == without_date(expected[0])
    assert served.counter.calls == calls
    assert sum("internal error answering" in r.getMessage() for r in caplog.records) == 2


async def test_lane_pipelined_misses_stay_in_order(served: Served, world: World) -> None:
    """Two misses and a hit pipelined on one connection: the second miss waits behind the
    first (uvicorn's queue), the answers come back in request order."""
    hit = post(world.request(GOOD))
    await served.exchange(hit)
    raw = (get(get_path(world.request(REVOKED))) + post(world.request(LATER)) + hit
           + get(get_path(world.request(NEVER))))
    answers = await served.exchange(raw, 4)
    parsed = [x509_ocsp.load_der_ocsp_response(body) for _lines, body in answers]
    assert [p.serial_number for p in parsed[:3]] == [REVOKED, LATER, GOOD]
    assert parsed[3].response_status == x509_ocsp.OCSPResponseStatus.UNAUTHORIZED


async def test_lane_keeps_pipelined_answers_in_order(served: Served, world: World) -> None:
    good_get = get(get_path(world.request(GOOD)))
    good_post = post(world.request(GOOD))
    await served.exchange(good_get)
    await served.exchange(good_post)  # both memoized now
    revoked = get(get_path(world.request(REVOKED)))
    # A hit, a miss that goes to the app, then two hits that must wait for it.
    answers = await served.exchange(good_get + revoked + good_post + good_get, 4)
    statuses = [x509_ocsp.load_der_ocsp_response(body).certificate_status
                for _lines, body in answers]
    assert statuses == [x509_ocsp.OCSPCertStatus.GOOD, x509_ocsp.OCSPCertStatus.REVOKED,
                        x509_ocsp.OCSPCertStatus.GOOD, x509_ocsp.OCSPCertStatus.GOOD]


async def test_lane_post_body_in_pieces(served: Served, world: World) -> None:
    hit = post(world.request(GOOD))
    await served.exchange(hit)
    calls = served.counter.calls
    # Headers first, body later: the lane waits for the body, then answers from the memo.
    lines, body = (await served.exchange(hit, pause_after=hit.index(b"\r\n\r\n") + 4))[0]
    assert served.counter.calls == calls
    assert x509_ocsp.load_der_ocsp_response(body).certificate_status == (
        x509_ocsp.OCSPCertStatus.GOOD)
    # A body the memo does not know, in pieces: collected, then answered by the lane too.
    miss = post(world.request(LATER))
    lines, body = (await served.exchange(miss, pause_after=len(miss) - 7))[0]
    assert served.counter.calls == calls
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert x509_ocsp.load_der_ocsp_response(body).serial_number == LATER


async def test_lane_http10_and_connection_close(served: Served, world: World) -> None:
    """Like uvicorn: `connection: close` added last, then the connection is closed."""
    der = world.request(GOOD)
    await served.exchange(post(der))
    calls = served.counter.calls
    for raw in (post(der, version="1.0"), get(get_path(der), "connection: close")):
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(raw)
        await writer.drain()
        lines, body = await read_response(reader)
        assert lines[-1] == b"connection: close"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        writer.close()
        assert x509_ocsp.load_der_ocsp_response(body).serial_number == GOOD
    assert served.counter.calls == calls  # the GET's first time, a miss, too


async def test_what_the_lane_leaves_to_uvicorn(served: Served, world: World) -> None:
    der = world.request(GOOD)
    path = get_path(der)
    lines, _body = (await served.exchange(get(path)))[0]
    etag = next(line for line in lines if line.startswith(b"etag: "))[6:].decode()
    cases = [
        (get(path, f"if-none-match: {etag}"), b"HTTP/1.1 304 Not Modified"),
        (get(path + "?x=1"), b"HTTP/1.1 200 OK"),  # not the exact memo key
        (f"HEAD {path} HTTP/1.1\r\nhost: x\r\n\r\n".encode(), b"HTTP/1.1 200 OK"),
        (chunked_post(der), b"HTTP/1.1 200 OK"),
    ]
    for raw, status in cases:
        calls = served.counter.calls
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(raw)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
        assert head.split(b"\r\n")[0] == status, raw
        assert served.counter.calls == calls + 1, raw
    # Expect: 100-continue is uvicorn's to answer: the client gets 100, then the response.
    calls = served.counter.calls
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    raw = post(der, "expect: 100-continue")
    split = raw.index(b"\r\n\r\n") + 4
    writer.write(raw[:split])
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(
        b"HTTP/1.1 100 Continue")
    writer.write(raw[split:])
    lines, body = await read_response(reader)
    writer.close()
    assert lines[0] == b"HTTP/1.1 200 OK" and served.counter.calls == calls + 1
    assert x509_ocsp.load_der_ocsp_response(body).serial_number == GOOD


async def test_bad_http_after_a_lane_answer(served: Served, world: World) -> None:
    """Garbage after a lane answer gets uvicorn's 400; the server keeps answering."""
    hit = get(get_path(world.request(GOOD)))
    await served.exchange(hit)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(hit + b"\x00\x01 NOT HTTP\r\n\r\n")
    await writer.drain()
    lines, _body = await read_response(reader)
    assert lines[0] == b"HTTP/1.1 200 OK"
    lines, _body = await read_response(reader)
    assert lines[0] == b"HTTP/1.1 400 Bad Request"
    writer.close()
    lines, _body = (await served.exchange(hit))[0]
    assert lines[0] == b"HTTP/1.1 200 OK"


@pytest.mark.parametrize("bound", within(1.0))
async def test_lane_forgets_a_revoked_answer(served: Served, world: World, bound: float) -> None:
    """OCSP-RESP-2: after `revoc cert revoke` the lane's memo hit is dropped within 1 s."""
    hit = post(world.request(LATER))
    await served.exchange(hit)
    _lines, body = (await served.exchange(hit))[0]
    assert x509_ocsp.load_der_ocsp_response(body).certificate_status == (
        x509_ocsp.OCSPCertStatus.GOOD)
    async with world.pool.acquire() as conn:
        await admin.revoke(conn, admin.RevokeRequest(
            issuer="ca", serial=LATER, reason=Reason.superseded,
            revoked_at=datetime.now(UTC).replace(microsecond=0)))
    await presign(world)

    async def revoked() -> bool:
        _lines, body = (await served.exchange(hit))[0]
        status = x509_ocsp.load_der_ocsp_response(body).certificate_status
        return status == x509_ocsp.OCSPCertStatus.REVOKED

    deadline = asyncio.get_running_loop().time() + bound
    while not await revoked():
        assert asyncio.get_running_loop().time() < deadline, f"still good after {bound} s"
        await asyncio.sleep(0.02)


async def test_lane_never_serves_past_next_update(world: World) -> None:
    """OCSP-RESP-16: once the clock passes nextUpdate the lane stops; nothing fresh ->
    tryLater, from the pipeline."""
    clock = FixedClock(datetime.now(UTC))
    async with serve_uvicorn(world, clock=clock) as served:
        hit = get(get_path(world.request(GOOD)))
        await served.exchange(hit)
        calls = served.counter.calls
        await served.exchange(hit)
        assert served.counter.calls == calls
        clock.advance(timedelta(days=30))
        _lines, body = (await served.exchange(hit))[0]
        assert served.counter.calls == calls  # the lane's miss path: the pipeline says so
        assert x509_ocsp.load_der_ocsp_response(body).response_status == (
            x509_ocsp.OCSPResponseStatus.TRY_LATER)


async def test_plain_apps_run_unchanged() -> None:
    """Without a responder app below, FastLaneProtocol is uvicorn's protocol."""

    async def hello(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"hi"})

    config = uvicorn.Config(hello, port=0, http=FastLaneProtocol, lifespan="off",
                            log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started or task.done())
    try:
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient() as client:
            response = await client.post(f"http://127.0.0.1:{port}/ocsp", content=b"x")
        assert response.status_code == 200 and response.content == b"hi"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def test_mangled_requests_never_get_5xx(served: Served, world: World,
                                              caplog: pytest.LogCaptureFixture) -> None:
    """OCSP-HTTP-8: requests mangled at random (seeded) get no 5xx, raise nothing in the
    protocol (asyncio would log it and drop the connection) and stop nothing."""
    rng = random.Random(5019)
    der = world.request(GOOD)
    seeds = [get(get_path(der)), post(der), post(der, version="1.0"),
             get(get_path(der), "if-none-match: *"), chunked_post(der)]
    for seed in seeds:
        await served.exchange(seed)  # memoize what can be memoized
    for _case in range(200):
        raw = bytearray(rng.choice(seeds))
        for _edit in range(rng.randint(1, 4)):
            where = rng.randrange(len(raw))
            action = rng.randrange(3)
            if action == 0:
                raw[where] = rng.randrange(256)
            elif action == 1:
                del raw[where:where + rng.randint(1, 8)]
            else:
                raw[where:where] = rng.choice([b"\r\n", b" ", b"%", b"content-length: 9\r\n",
                                               b"0", b"/", b"\x00"])
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(bytes(raw))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        try:
            reply = await asyncio.wait_for(reader.read(65536), 0.25)
        except (TimeoutError, ConnectionError):
            reply = b""  # waiting for more body, or closed: both fine
        writer.close()
        assert b"HTTP/1.1 5" not in reply, (bytes(raw), reply[:200])
    errors = [record.getMessage() for record in caplog.records if record.levelno >= 40]
    assert not errors, errors[:3]
    lines, body = (await served.exchange(seeds[0]))[0]
    assert lines[0] == b"HTTP/1.1 200 OK"
    assert x509_ocsp.load_der_ocsp_response(body).serial_number == GOOD


async def test_fallback_to_asgi_when_uvicorn_lacks_something(
        world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A uvicorn release without an attribute the adapter relies on (simulated: the protocol no
    longer sets `expect_100_continue` in __init__): one warning naming it, and `revoc serve` runs
    on plain httptools, every request through ASGI, answers unchanged."""
    original = HttpToolsProtocol.__init__

    def without_attribute(self: HttpToolsProtocol, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        del self.expect_100_continue  # uvicorn's on_message_begin sets it before any use

    monkeypatch.setattr(HttpToolsProtocol, "__init__", without_attribute)
    assert self_check() == ["protocol.expect_100_continue"]
    caplog.set_level(logging.WARNING, logger="revoc.responder")
    async with serve_uvicorn(world) as served:
        warnings = [r.getMessage() for r in caplog.records if "fast lane off" in r.getMessage()]
        assert len(warnings) == 1 and "expect_100_continue" in warnings[0], warnings
        hit = post(world.request(GOOD))
        first = (await served.exchange(hit))[0]
        calls = served.counter.calls
        second = (await served.exchange(hit))[0]
        assert served.counter.calls == calls + 1  # the ASGI path answered the memo hit
        assert second[1] == first[1]
        assert without_date(second[0]) == without_date(first[0])
        assert x509_ocsp.load_der_ocsp_response(second[1]).serial_number == GOOD


async def test_lane_keep_alive_timeout(world: World) -> None:
    """An idle keep-alive connection is closed after `timeout_keep_alive` since the last lane
    answer, and not while lane answers keep coming (the timer is not re-armed per answer, it
    looks again when it fires)."""
    async with serve_uvicorn(world, timeout_keep_alive=1) as served:
        hit = get(get_path(world.request(GOOD)))
        await served.exchange(hit)  # memoized
        calls = served.counter.calls
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            while loop.time() - started < 2.0:  # twice the timeout, one connection
                writer.write(hit)
                lines, _body = await read_response(reader)
                assert lines[0] == b"HTTP/1.1 200 OK"
                await asyncio.sleep(0.2)
            assert served.counter.calls == calls  # all lane answers
            # Now idle: closed by the server (read gives EOF) well before the deadline.
            assert await asyncio.wait_for(reader.read(), 10) == b""
        finally:
            writer.close()


def known_requests(served: Served) -> dict[bytes, Any]:
    """The lane's known requests (responder/lane_worker.py) of the test server's worker."""
    workers = list(served.responder.fast_path.adapter.values())
    assert len(workers) == 1, workers
    known: dict[bytes, Any] = workers[0].known
    return known


async def test_known_request_answered_like_its_parse(served: Served, plain: Served,
                                                     world: World) -> None:
    """A request the lane took is remembered by its head; the same head (and a body of the same
    length) alone in a read is answered without parsing, with the bytes uvicorn sends (checked on
    one connection and on fresh ones, hits and misses); bytes that differ, or more than one
    request in a read, are parsed."""
    for raw in (get(get_path(world.request(GOOD, HashAlgorithm.SHA256))),
                post(world.request(GOOD, HashAlgorithm.SHA256))):
        head = raw[:raw.index(b"\r\n\r\n") + 4]
        known = known_requests(served) if served.responder.fast_path.adapter else {}
        assert head not in known
        await served.exchange(raw)  # a miss, answered later: remembered all the same
        known = known_requests(served)
        assert head in known
        calls = served.counter.calls
        memo = served.responder.metrics.sources[0]
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        try:
            answers = []
            for _time in range(3):  # one request per read: replayed
                writer.write(raw)
                answers.append(await read_response(reader))
            writer.write(raw + raw)  # two in one read: parsed, answered in order
            answers += [await read_response(reader), await read_response(reader)]
        finally:
            writer.close()
        assert served.counter.calls == calls
        assert served.responder.metrics.sources[0] == memo + 5
        expected = (await plain.exchange(raw))[0]
        for lines, body in answers:
            assert body == expected[1]
            assert without_date(lines) == without_date(expected[0])
    # Never remembered: a request with garbage behind it, nor HTTP/1.0 (closes).
    hit = get(get_path(world.request(GOOD)))
    await served.exchange(hit)
    await served.exchange(hit)
    garbage = hit + b"\x00\x01 NOT HTTP\r\n\r\n"
    answers = await served.exchange(garbage, 2)
    assert [lines[0] for lines, _body in answers] == [b"HTTP/1.1 200 OK",
                                                      b"HTTP/1.1 400 Bad Request"]
    http10 = post(world.request(GOOD), version="1.0")
    await served.exchange(http10)
    await served.exchange(http10)
    known = known_requests(served)
    assert garbage not in known and hit in known
    assert not any(key.startswith(b"POST /ocsp HTTP/1.0") for key in known)
    # A POST miss whose head is known: its body (another certificate) is answered, not parsed.
    await served.exchange(post(world.request(GOOD)))
    revoked = post(world.request(REVOKED))
    assert revoked[:revoked.index(b"\r\n\r\n") + 4] in known  # same head: same length
    lines, body = (await served.exchange(revoked))[0]
    expected = (await plain.exchange(revoked))[0]
    assert body == expected[1] and without_date(lines) == without_date(expected[0])
    assert x509_ocsp.load_der_ocsp_response(body).certificate_status == (
        x509_ocsp.OCSPCertStatus.REVOKED)
    assert served.counter.calls == calls


@pytest.mark.parametrize("bound", within(1.0))
async def test_known_request_never_answers_good_after_revocation(
        served: Served, world: World, bound: float) -> None:
    """OCSP-RESP-2 on the replay path: a known request whose certificate is revoked is answered
    `revoked` (or `tryLater`) on the same keep-alive connection, never the old `good`: the
    replay only asks `FastPath.lookup` again, whose memo entry the invalidation killed."""
    serial = LATER
    raw = get(get_path(world.request(serial)))
    await served.exchange(raw)
    await served.exchange(raw)
    assert raw in known_requests(served)  # a GET's head is the whole request
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    try:
        writer.write(raw)
        _lines, body = await read_response(reader)
        assert x509_ocsp.load_der_ocsp_response(body).certificate_status == (
            x509_ocsp.OCSPCertStatus.GOOD)
        async with world.pool.acquire() as conn:
            await admin.revoke(conn, admin.RevokeRequest(
                issuer="ca", serial=serial, reason=Reason.keyCompromise,
                revoked_at=datetime.now(UTC).replace(microsecond=0)))
        await presign(world)
        deadline = asyncio.get_running_loop().time() + bound
        while True:
            writer.write(raw)
            _lines, body = await read_response(reader)
            answer = x509_ocsp.load_der_ocsp_response(body)
            if (answer.response_status == x509_ocsp.OCSPResponseStatus.SUCCESSFUL
                    and answer.certificate_status == x509_ocsp.OCSPCertStatus.REVOKED):
                break
            assert asyncio.get_running_loop().time() < deadline, f"still good after {bound} s"
            await asyncio.sleep(0.02)
    finally:
        writer.close()


async def test_held_answers_keep_their_order(world: World) -> None:
    """Lane answers are held until the end of the loop's pass; whatever else is written on the
    connection meanwhile comes after them: the edge's 431 behind a hit in the same read, and a
    request uvicorn answers (HEAD) between two hits."""
    settings = replace(world.settings, max_headers=3)
    async with serve_uvicorn(replace(world, settings=settings)) as served:
        hit = get(get_path(world.request(GOOD)))
        await served.exchange(hit)
        await served.exchange(hit)
        too_many = get("/ocsp/x", *(f"x-{n}: {n}" for n in range(6)))
        answers = await served.exchange(hit + hit + too_many, 3)
        assert [lines[0] for lines, _body in answers] == [
            b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK", b"HTTP/1.1 431 Request Header Fields Too Large"]
        head = f"HEAD {get_path(world.request(GOOD))} HTTP/1.1\r\nhost: x\r\n\r\n".encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        try:
            writer.write(hit + head + hit)
            first = await read_response(reader)
            head_reply = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            third = await read_response(reader)
        finally:
            writer.close()
        assert first[0][0] == third[0][0] == b"HTTP/1.1 200 OK" and first[1] == third[1]
        assert head_reply.startswith(b"HTTP/1.1 200 OK") and b"content-length" in head_reply
