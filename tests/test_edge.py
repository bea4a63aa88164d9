"""Edge limits (responder/edge.py) against a real uvicorn server on loopback (issue 12, point 6).

Each "what was seen" case of issue 12 is reproduced with limits set low: an endless header, a
long request line, many headers, slowloris clients, idle keep-alive connections, and more idle
connections than a worker may hold. Self-contained: the server runs `revoc serve`'s own uvicorn
options (`responder.app.uvicorn_options`) in this test's loop, on an empty database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import resource
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

import asyncpg
import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from responder.app import create_app, uvicorn_options
from responder.edge import ConnectionRegistry, EdgeLimits, EdgeProtocolFactory
from revoc.settings import Settings, SettingsError, load_settings

HEALTHZ = b"GET /healthz HTTP/1.1\r\nhost: responder.test\r\n\r\n"


async def wait_for(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.01)


@dataclass
class Server:
    port: int
    registry: ConnectionRegistry

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def healthz(self) -> bytes:
        """A well-behaved client's request on a fresh connection: the status line."""
        reader, writer = await self.connect()
        try:
            writer.write(HEALTHZ)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            return head.split(b"\r\n")[0]
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def serving(pool: asyncpg.Pool, database_url: str, **limits: Any) -> AsyncIterator[Server]:
    settings = replace(Settings(database_url=database_url, port=0), **limits)
    app = create_app(settings, pool=pool)
    options = uvicorn_options(settings)
    del options["loop"]  # this test's loop is pytest-asyncio's
    options["log_level"] = "warning"
    factory = options["http"]
    assert isinstance(factory, EdgeProtocolFactory) and factory.registry is not None
    server = uvicorn.Server(uvicorn.Config(app, **options))
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: server.started or task.done(), 10)
        assert not task.done(), "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        await wait_for(app.state.responder.ready)
        yield Server(port, factory.registry)  # type: ignore[arg-type]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def read_until_closed(reader: asyncio.StreamReader, seconds: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed)."""
    received = b""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"still open after {seconds} s; got {received[:80]!r}"
        try:
            chunk = await asyncio.wait_for(reader.read(65536), left)
        except ConnectionError:
            return received
        if not chunk:
            return received
        received += chunk


async def test_endless_header_gets_431_and_is_no_longer_read(
        clean_db: asyncpg.Pool, database_url: str) -> None:
    """The 256 MB header case, scaled down: the server answers 431 and closes once the head
    passes its limit, long before the client is done sending (it never buffers the rest)."""
    async with serving(clean_db, database_url, max_header_bytes=4096) as server:
        reader, writer = await server.connect()
        writer.write(b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: ")
        sent = 0
        sent_when_answered = -1
        total = 64 * 1024 * 1024

        async def send_endless_header() -> None:
            nonlocal sent
            chunk = b"a" * 65536
            with contextlib.suppress(ConnectionError):
                while sent < total and sent_when_answered < 0:
                    writer.write(chunk)
                    await writer.drain()
                    sent += len(chunk)

        sender = asyncio.create_task(send_endless_header())
        try:
            first = await asyncio.wait_for(reader.read(65536), 10)
            sent_when_answered = sent
            reply = first + await read_until_closed(reader)
        finally:
            sender.cancel()
            writer.close()
        assert reply.startswith(b"HTTP/1.1 431 "), reply[:100]
        assert b"connection: close" in reply
        assert sent_when_answered < total // 4, "answered only after most of the header"
        assert await server.healthz() == b"HTTP/1.1 200 OK"


async def test_long_request_line_and_many_headers(clean_db: asyncpg.Pool,
                                                  database_url: str) -> None:
    async with serving(clean_db, database_url, max_request_line_bytes=1024,
                       max_headers=10) as server:
        cases = [
            (b"GET /ocsp/" + b"M" * 2000 + b" HTTP/1.1\r\nhost: x\r\n\r\n", b"HTTP/1.1 414 "),
            (b"GET /healthz HTTP/1.1\r\n" + b"".join(b"x-%d: 1\r\n" % i for i in range(11))
             + b"\r\n", b"HTTP/1.1 431 "),
            # At the limits: answered.
            (b"GET /healthz?" + b"q" * 1000 + b" HTTP/1.1\r\nhost: x\r\n\r\n", b"HTTP/1.1 200 "),
            (b"GET /healthz HTTP/1.1\r\n" + b"".join(b"x-%d: 1\r\n" % i for i in range(10))
             + b"\r\n", b"HTTP/1.1 200 "),
        ]
        for raw, status in cases:
            reader, writer = await server.connect()
            writer.write(raw)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(status), (raw[:60], head)
            if status != b"HTTP/1.1 200 ":
                await read_until_closed(reader)  # refused requests close the connection
            writer.close()


async def test_slowloris_is_cut_off_and_others_are_answered(clean_db: asyncpg.Pool,
                                                            database_url: str) -> None:
    """400 slowloris connections were held forever: now a request not complete within
    request_timeout gets 408 and is closed, however steadily it trickles; one that sends
    nothing is closed after keepalive_timeout; meanwhile a normal client is answered."""
    async with serving(clean_db, database_url, request_timeout=1,
                       keepalive_timeout=1) as server:
        slow = [await server.connect() for _ in range(20)]
        silent_reader, silent_writer = await server.connect()

        async def trickle(writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                for byte in b"GET /healthz HTTP/1.1\r\nx-slow: " + b"z" * 1000:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.05)

        tricklers = [asyncio.create_task(trickle(writer)) for _reader, writer in slow]
        try:
            assert await server.healthz() == b"HTTP/1.1 200 OK"
            replies = await asyncio.gather(*(read_until_closed(reader) for reader, _w in slow))
            assert all(reply.startswith(b"HTTP/1.1 408 ") for reply in replies), replies[:2]
            assert await read_until_closed(silent_reader) == b""
        finally:
            for task in tricklers:
                task.cancel()
            for _reader, writer in [*slow, (silent_reader, silent_writer)]:
                writer.close()
        assert await server.healthz() == b"HTTP/1.1 200 OK"


async def test_idle_keepalive_connection_is_closed(clean_db: asyncpg.Pool,
                                                   database_url: str) -> None:
    async with serving(clean_db, database_url, keepalive_timeout=1) as server:
        reader, writer = await server.connect()
        writer.write(HEALTHZ)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 ") and b"connection: close" not in head
        await asyncio.wait_for(reader.readexactly(3), 5)  # "ok\n"
        started = time.monotonic()
        assert await read_until_closed(reader, 3.5) == b""
        writer.close()
        assert time.monotonic() - started >= 0.5  # closed for idleness, not at once


async def test_connection_limit_closes_the_oldest_idle_and_logs(
        clean_db: asyncpg.Pool, database_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """~20,000 idle connections used up the descriptors and new clients were reset, silently:
    now past max_connections the longest-idle connection is closed for the newcomer, or, with
    nothing idle, the newcomer gets 503; either is logged."""
    caplog.set_level(logging.WARNING, logger="revoc.responder.edge")
    async with serving(clean_db, database_url, max_connections=16) as server:
        idle = [await server.connect() for _ in range(16)]
        await wait_for(lambda: len(server.registry) == 16)
        assert await server.healthz() == b"HTTP/1.1 200 OK"
        assert await read_until_closed(idle[0][0]) == b""  # the oldest idle one
        assert any("closed the oldest idle connection" in record.getMessage()
                   for record in caplog.records), [r.getMessage() for r in caplog.records]
        for _reader, writer in idle:
            writer.close()
        await wait_for(lambda: len(server.registry) == 0)

        # Sixteen requests in progress, none idle: the newcomer is refused, not a victim.
        busy = [await server.connect() for _ in range(16)]
        for _reader, writer in busy:
            writer.write(b"GET /healthz HTTP/1.1\r\n")
            await writer.drain()
        await wait_for(lambda: len(server.registry.receiving) == 16)
        reader, writer = await server.connect()
        reply = await read_until_closed(reader)
        writer.close()
        assert reply.startswith(b"HTTP/1.1 503 "), reply
        for reader, writer in busy:  # all still there, and still answered
            writer.write(b"host: x\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 ")
            writer.close()


def test_fd_limit_is_raised_to_the_hard_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("hard limit too low to lower the soft one")

    def lower() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    code = ("import resource; from responder.edge import raise_fd_limit; "
            "print(raise_fd_limit(), resource.getrlimit(resource.RLIMIT_NOFILE))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True, preexec_fn=lower)
    before_after, limits = result.stdout.strip().split(") (")
    assert before_after.startswith("(256, ")
    now_soft, now_hard = (int(x) for x in limits.rstrip(")").split(", "))
    assert now_hard == hard
    assert now_soft == hard or hard == resource.RLIM_INFINITY


def test_edge_settings_from_the_environment() -> None:
    settings = load_settings({
        "REVOC_MAX_REQUEST_LINE_BYTES": "2048", "REVOC_MAX_HEADER_BYTES": "8192",
        "REVOC_MAX_HEADERS": "20", "REVOC_REQUEST_TIMEOUT": "30s",
        "REVOC_KEEPALIVE_TIMEOUT": "1m", "REVOC_MAX_CONNECTIONS": "500"})
    assert (settings.max_request_line_bytes, settings.max_header_bytes, settings.max_headers,
            settings.request_timeout, settings.keepalive_timeout,
            settings.max_connections) == (2048, 8192, 20, 30, 60, 500)
    defaults = Settings()
    assert defaults.request_timeout == 10 and defaults.keepalive_timeout == 5
    for name, bad in (("REVOC_MAX_HEADERS", "0"), ("REVOC_REQUEST_TIMEOUT", "0"),
                      ("REVOC_MAX_CONNECTIONS", "many")):
        with pytest.raises(SettingsError, match=name):
            load_settings({name: bad})


def test_a_protocol_without_the_hooks_is_served_plain_and_said_so(
        caplog: pytest.LogCaptureFixture) -> None:
    """A uvicorn release whose protocol lacks what the mixin extends: the factory logs which
    hooks are missing and builds the protocol as it is (the seam's fallback, STYLE habit 11)."""

    class Bare(asyncio.Protocol):
        def __init__(self, **_kwargs: object) -> None:
            pass

    factory = EdgeProtocolFactory(Bare, EdgeLimits())
    with caplog.at_level(logging.ERROR, logger="revoc.responder.edge"):
        protocol = factory(config=None, server_state=None, app_state={})
    assert type(protocol) is Bare and factory.registry is None
    assert "edge limits OFF" in caplog.text and "on_header" in caplog.text
    assert pickle.loads(pickle.dumps(EdgeProtocolFactory(HttpToolsProtocol, EdgeLimits()))
                        ).limits == EdgeLimits()  # what uvicorn hands to worker processes
