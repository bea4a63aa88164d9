"""Fuzz targets for revoc's hostile-input surfaces (issue 12, point 7).

Each target takes one input (bytes) and raises `Finding` when the property breaks; any other
exception escaping is a finding too. The same targets run under atheris (bench/fuzz/run.py
--engine atheris), under run.py's own mutation driver, and, bounded, under hypothesis in the test
suite (tests/test_fuzz_targets.py).

- `ocsp_request`: `parse_ocsp_request` raises MalformedRequest or returns a request whose every
  CertID is a slice of the input, 1..MAX_CERT_IDS of them, nonce 1..128 octets or none.
- `get_path`: `decode_get_path` raises MalformedRequest or returns bytes, and what it returns,
  when it is a DER SEQUENCE (as every OCSPRequest), re-encoded as plain base64 decodes to the
  same bytes.
- `HttpEdge`: raw bytes on one connection into `revoc serve`'s own protocol stack (the edge
  limits, the fast lane, uvicorn's httptools protocol, the responder app, a real database),
  in-process over a fake transport, then the client goes away. What the server wrote must be a
  sequence of well-formed HTTP/1.1 responses, none 5xx, every `application/ocsp-response` body a
  DER OCSPResponse that cryptography loads (a successful one with a verifiable signature over
  the request's CertID's issuer), and nothing logged at ERROR (an exception in the protocol or the
  app).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from cryptography.x509 import ocsp as x509_ocsp

from responder.ocsp_endpoint import decode_get_path
from revoc.der.ocsp import MAX_CERT_IDS, MAX_NONCE_LENGTH, MalformedRequest, parse_ocsp_request


class Finding(AssertionError):
    """A property of a target does not hold for an input."""


# ---------------------------------------------------------------------- pure targets


def ocsp_request(data: bytes) -> None:
    try:
        request = parse_ocsp_request(data)
    except MalformedRequest:
        return
    if not 1 <= len(request.cert_ids) <= MAX_CERT_IDS:
        raise Finding(f"{len(request.cert_ids)} CertIDs parsed")
    for cert_id in request.cert_ids:
        if cert_id.raw not in data:
            raise Finding("a CertID's raw bytes are not part of the input")
    if request.nonce is not None and not 1 <= len(request.nonce) <= MAX_NONCE_LENGTH:
        raise Finding(f"nonce of {len(request.nonce)} octets accepted")


def get_path(data: bytes) -> None:
    try:
        der = decode_get_path(b"/ocsp/" + data)
    except MalformedRequest:
        return
    if not isinstance(der, bytes) or not der:
        raise Finding(f"decode_get_path returned {der!r}")
    if der[0] != 0x30:
        return  # not a DER SEQUENCE, so no OCSPRequest: parse_ocsp_request refuses it
    # A request (a SEQUENCE, base64 'M...') survives being re-encoded the plain way. Not asked of
    # other bytes: base64 starting with '/' loses it to the doubled-slash rule (OCSP-HTTP-4).
    again = decode_get_path(b"/ocsp/" + base64.b64encode(der))
    if again != der:
        raise Finding("plain base64 of the decoded request decodes differently")


# ---------------------------------------------------------------------- the HTTP edge


_STATUS = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*")


def split_responses(raw: bytes) -> Iterable[tuple[int, dict[bytes, bytes], bytes | None]]:
    """(status, headers, body or None when bodiless) of each response in `raw`; Finding on
    anything malformed."""
    position = 0
    while position < len(raw):
        end = raw.find(b"\r\n\r\n", position)
        if end < 0:
            raise Finding(f"truncated response head: {raw[position:position + 80]!r}")
        lines = raw[position:end].split(b"\r\n")
        match = _STATUS.fullmatch(lines[0])
        if match is None:
            raise Finding(f"bad status line {lines[0][:80]!r}")
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(b": ")
            if not sep or name != name.lower():
                raise Finding(f"bad header line {line[:80]!r}")
            headers[name] = value
        position = end + 4
        status = int(match.group(1))
        if status == 100:
            continue
        if b"transfer-encoding" in headers:
            raise Finding("chunked response")  # every answer of ours has a Content-Length
        length = int(headers.get(b"content-length", b"0"))
        if status == 304 or position == len(raw) or raw.startswith(b"HTTP/1.1 ", position):
            # 304, or the answer to a HEAD (Content-Length of the GET, no body): what follows is
            # the next response or the end. (A body starting "HTTP/1.1 " is never ours.)
            yield status, headers, None
            continue
        body = raw[position:position + length]
        if len(body) != length:
            raise Finding("truncated response body")
        position += length
        yield status, headers, body


class _ErrorLog(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class FakeTransport(asyncio.Transport):
    """Collects what the protocol writes; `close` calls connection_lost like a real one."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.written = bytearray()
        self.closing = False
        self.protocol: Any = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.closing:
            raise Finding("write after close")
        self.written += data

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        for data in list_of_data:
            self.write(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return not self.closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default)

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


class HttpEdge:
    """`revoc serve`'s protocol stack in this process, fed one connection's bytes per input.

    Use from one event loop: `await start(settings)`, then `await exchange(data)` per input (or
    the synchronous `__call__` with `run_in(loop)`), then `await stop()`.
    """

    def __init__(self, settings: Any, pool: Any, issuer_key: Any = None) -> None:
        from uvicorn.config import Config
        from uvicorn.server import ServerState

        from responder.app import create_app, uvicorn_options

        # Short timeouts: an input that stops mid-request is cut off by the edge soon.
        self.settings = replace(settings, request_timeout=1, keepalive_timeout=1)
        self.app = create_app(self.settings, pool=pool)
        options = uvicorn_options(self.settings)
        del options["loop"]
        options["log_level"] = "critical"
        self.factory = options.pop("http")
        self.config = Config(self.app, **options)
        self.config.load()
        self.server_state = ServerState()
        self.errors = _ErrorLog()
        self.inputs = 0
        self.successful = 0
        self.issuer_key = issuer_key  # public key that signs the successful answers
        self._lifespan: Any = None

    async def start(self) -> None:
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        responder = self.app.state.responder
        for _ in range(500):
            if responder.ready():
                break
            await asyncio.sleep(0.01)
        else:
            raise RuntimeError("responder not ready")
        for name in ("", "uvicorn", "uvicorn.error", "revoc", "asyncio"):
            logging.getLogger(name).addHandler(self.errors)

    async def stop(self) -> None:
        for name in ("", "uvicorn", "uvicorn.error", "revoc", "asyncio"):
            logging.getLogger(name).removeHandler(self.errors)
        if self._lifespan is not None:
            await self._lifespan.__aexit__(None, None, None)

    async def exchange(self, data: bytes, pieces: int = 1) -> bytes:
        """Feed `data` (in `pieces` parts) on a fresh connection; wait for the app to finish,
        then the client leaves; what the server wrote."""
        loop = asyncio.get_running_loop()
        transport = FakeTransport(loop)
        protocol = self.factory(config=self.config, server_state=self.server_state,
                                app_state={})
        transport.protocol = protocol
        protocol.connection_made(transport)
        step = max(1, -(-len(data) // pieces)) if data else 1
        for start in range(0, max(len(data), 1), step):
            if transport.closing:
                break
            protocol.data_received(data[start:start + step])
            for _ in range(3):
                await asyncio.sleep(0)
        # The client waits for what it asked, then leaves.
        await self._settle(protocol, time_limit=5.0, until_idle=True)
        if not transport.closing:
            transport.close()
        await self._settle(protocol, time_limit=5.0)
        if self.server_state.tasks:
            raise Finding("the app never finished a request after the client left")
        return bytes(transport.written)

    async def _settle(self, protocol: Any, time_limit: float, until_idle: bool = False) -> None:
        """Let the app's tasks run until they are done, or (until_idle) until the request in
        the app waits for body bytes the input never sends."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + time_limit
        while self.server_state.tasks and loop.time() < deadline:
            cycle = getattr(protocol, "cycle", None)
            if (until_idle and cycle is not None and not cycle.response_complete
                    and cycle.more_body and not cycle.message_event.is_set()):
                return
            await asyncio.wait(list(self.server_state.tasks), timeout=0.02)

    def _verify(self, response: x509_ocsp.OCSPResponse) -> None:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric import ec

        self.successful += 1
        response.certificate_status  # noqa: B018 - parses the SingleResponse
        if self.issuer_key is not None:
            algorithm = response.signature_hash_algorithm
            assert algorithm is not None
            try:
                self.issuer_key.verify(response.signature, response.tbs_response_bytes,
                                       ec.ECDSA(algorithm))
            except InvalidSignature as exc:
                raise Finding("a successful OCSPResponse whose signature does not verify") from exc

    async def check(self, data: bytes, pieces: int = 1) -> list[tuple[int, bytes]]:
        """One input: Finding if a property breaks; (status, body) of each answer."""
        self.inputs += 1
        self.errors.records.clear()
        written = await self.exchange(data, pieces)
        if self.errors.records:
            record = self.errors.records[0]
            raise Finding(f"logged at ERROR: {record.getMessage()} {record.exc_info or ''}")
        answers = []
        for status, headers, body in split_responses(written):
            if status >= 500:
                raise Finding(f"HTTP {status}")
            if body is None:
                answers.append((status, b""))
                continue
            if headers.get(b"content-type") == b"application/ocsp-response":
                try:
                    response = x509_ocsp.load_der_ocsp_response(body)
                except ValueError as exc:
                    raise Finding(f"not an OCSPResponse: {exc}: {body[:40]!r}") from exc
                if response.response_status == x509_ocsp.OCSPResponseStatus.SUCCESSFUL:
                    self._verify(response)
            answers.append((status, body))
        return answers
