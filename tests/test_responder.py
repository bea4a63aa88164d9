"""OCSP responder (`revoc serve`) through ASGI, against real PostgreSQL.

Responses are pre-signed by the presigner's `presign_once` (see `presign`); every successful
answer is re-parsed with cryptography/asn1crypto and linted with pkilint.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import asyncpg
import httpx
import pytest
import pytest_asyncio
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp as x509_ocsp
from starlette.applications import Starlette

from responder.app import Responder, create_app, settings_from_env, settings_to_env
from responder.cache import CachedResponse, ResponseCache
from responder.ocsp_endpoint import decode_get_path
from responder.presign_queue import presign_once
from revoc import admin
from revoc.clock import FixedClock
from revoc.der.asn1 import DER_NULL, der_integer, der_octet_string, der_oid, der_sequence
from revoc.der.ocsp import (
    ERROR_RESPONSES,
    SingleResponse,
    build_ocsp_response,
    cert_id_der,
    encode_ocsp_request,
    responder_key_hash,
)
from revoc.model import CertStatus, HashAlgorithm, OcspResponseStatus, Reason
from revoc.settings import Settings
from revoc.signing import FileKeySigner, subject_public_key_bits
from tests.pki import Party, make_ca, make_leaf, write_pem_certs

GOOD, REVOKED, LATER, NEVER = 0x1001, 0x1002, 0x1003, 0xDEAD
OCSP_TYPE = "application/ocsp-response"
NO_CACHE = "no-cache, no-store, max-age=0"


@dataclass
class World:
    root: Party
    ca: Party
    leaves: dict[int, Party]
    directory: Path
    settings: Settings
    pool: asyncpg.Pool

    @property
    def root_pem(self) -> Path:
        return self.directory / "root.pem"

    @property
    def ca_pem(self) -> Path:
        return self.directory / f"{self.ca.name}.pem"

    def leaf_pem(self, serial: int) -> Path:
        return self.directory / f"{self.leaves[serial].name}.pem"

    def cert_id(self, serial: int, algorithm: HashAlgorithm = HashAlgorithm.SHA1, *,
                null_params: bool = True) -> bytes:
        return cert_id_der(algorithm, self.ca.cert.subject.public_bytes(),
                           subject_public_key_bits(self.ca.cert), serial,
                           null_params=null_params)

    def request(self, serial: int, algorithm: HashAlgorithm = HashAlgorithm.SHA1,
                nonce: bytes | None = None, *, null_params: bool = True) -> bytes:
        return encode_ocsp_request([self.cert_id(serial, algorithm, null_params=null_params)],
                                   nonce=nonce)


_PKI: dict[str, Party] = {}


def _pki() -> tuple[Party, Party, dict[int, Party]]:
    """One PKI per test session: key generation is the slow part."""
    if not _PKI:
        _PKI["root"] = make_ca("Responder Root")
        _PKI["ca"] = make_ca("Responder CA", issuer=_PKI["root"])
        for serial in (GOOD, REVOKED, LATER):
            _PKI[f"leaf{serial}"] = make_leaf(_PKI["ca"], serial)
    leaves = {serial: _PKI[f"leaf{serial}"] for serial in (GOOD, REVOKED, LATER)}
    return _PKI["root"], _PKI["ca"], leaves


async def presign(world: World) -> None:
    """Fill ocsp_responses with the presigner's own round (it NOTIFYs ocsp_changed for what
    changed, as `revoc presign` does)."""
    report = await presign_once(world.pool, replace(world.settings, presign_processes=1))
    assert not report.failed_issuers


async def setup_world(pool: asyncpg.Pool, database_url: str, directory: Path,
                      **settings: object) -> World:
    root, ca, leaves = _pki()
    directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - test setup
    _cert_path, key_path = ca.write(directory)
    write_pem_certs(directory / "root.pem", root)
    for leaf in leaves.values():
        leaf.write(directory)
    async with pool.acquire() as conn:
        await admin.add_issuer(conn, admin.IssuerRequest(
            name="ca", cert_path=str(directory / f"{ca.name}.pem"), key_path=str(key_path)))
        await admin.add_certificates(conn, "ca", [str(directory / f"{leaf.name}.pem")
                                                  for leaf in leaves.values()])
        await admin.revoke(conn, admin.RevokeRequest(
            issuer="ca", serial=REVOKED, reason=Reason.keyCompromise,
            revoked_at=datetime(2025, 6, 1, 12, 0, tzinfo=UTC)))
    base = Settings(database_url=database_url, ocsp_hashes=(HashAlgorithm.SHA1,
                                                             HashAlgorithm.SHA256))
    world = World(root, ca, leaves, directory, replace(base, **settings), pool)  # type: ignore[arg-type]
    await presign(world)
    return world


@pytest_asyncio.fixture(loop_scope="session")
async def world(clean_db: asyncpg.Pool, database_url: str, tmp_path: Path) -> World:
    return await setup_world(clean_db, database_url, tmp_path / "pki")


@pytest_asyncio.fixture(loop_scope="session")
async def live_world(clean_db: asyncpg.Pool, database_url: str, tmp_path: Path) -> World:
    return await setup_world(clean_db, database_url, tmp_path / "pki", live_signing=True)


async def wait_until(predicate: object, deadline_seconds: float = 5.0) -> None:
    deadline = time.monotonic() + deadline_seconds
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.01)


@pytest_asyncio.fixture(loop_scope="session")
async def running(world: World) -> AsyncIterator[tuple[Starlette, httpx.AsyncClient]]:
    async with serve_asgi(world) as pair:
        yield pair


class serve_asgi:
    """Run the app's lifespan and hand out an httpx client bound to it through ASGI."""

    def __init__(self, world: World, clock: FixedClock | None = None,
                 **settings: object) -> None:
        self.app = create_app(replace(world.settings, **settings),  # type: ignore[arg-type]
                              pool=world.pool, clock=clock)

    async def __aenter__(self) -> tuple[Starlette, httpx.AsyncClient]:
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()
        responder: Responder = self.app.state.responder
        await wait_until(responder.ready)
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app),
                                         base_url="http://responder.test")
        return self.app, self._client

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()
        await self._lifespan.__aexit__(None, None, None)


async def post(client: httpx.AsyncClient, body: bytes) -> httpx.Response:
    return await client.post("/ocsp", content=body,
                             headers={"content-type": "application/ocsp-request"})


def b64(der: bytes) -> str:
    return base64.b64encode(der).decode()


def parsed(response: httpx.Response) -> x509_ocsp.OCSPResponse:
    assert response.status_code == 200
    assert response.headers["content-type"] == OCSP_TYPE
    return x509_ocsp.load_der_ocsp_response(response.content)


def assert_error(response: httpx.Response, status: OcspResponseStatus) -> None:
    """Errors: HTTP 200, bare OCSPResponse, never cacheable (OCSP-RESP-1, OCSP-HTTP-6/8)."""
    assert response.status_code == 200
    assert response.headers["content-type"] == OCSP_TYPE
    assert response.content == ERROR_RESPONSES[status]
    assert response.headers["cache-control"] == NO_CACHE
    assert "etag" not in response.headers


def lint(der: bytes, directory: Path) -> None:
    """pkilint's OCSP linter must find nothing at WARNING or above (exit code = findings)."""
    tool = shutil.which("lint_ocsp_response") or str(
        Path(sys.executable).parent / "lint_ocsp_response")
    path = directory / f"resp-{hashlib.sha256(der).hexdigest()[:12]}.der"
    path.write_bytes(der)
    result = subprocess.run([tool, "lint", "--document-format", "DER", "-s", "WARNING",
                             str(path)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------ answers and headers


async def test_good_revoked_and_never_issued(running: tuple[Starlette, httpx.AsyncClient],
                                             world: World, tmp_path: Path) -> None:
    _app, client = running
    good = parsed(await post(client, world.request(GOOD)))
    assert good.certificate_status == x509_ocsp.OCSPCertStatus.GOOD
    assert good.serial_number == GOOD
    revoked = parsed(await post(client, world.request(REVOKED, HashAlgorithm.SHA256)))
    assert revoked.certificate_status == x509_ocsp.OCSPCertStatus.REVOKED
    assert revoked.revocation_reason == x509.ReasonFlags.key_compromise
    assert revoked.revocation_time_utc == datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    # Never issued, no live signer: unauthorized, never good (OCSP-RESP-11).
    assert_error(await post(client, world.request(NEVER)), OcspResponseStatus.unauthorized)
    for response in (good, revoked):
        lint(response.public_bytes(Encoding.DER), tmp_path)


async def test_cert_id_echoed_exactly(running: tuple[Starlette, httpx.AsyncClient],
                                      world: World) -> None:
    _app, client = running
    for algorithm in (HashAlgorithm.SHA1, HashAlgorithm.SHA256):
        response = await post(client, world.request(GOOD, algorithm))
        basic = asn1_ocsp.OCSPResponse.load(response.content).basic_ocsp_response
        single = basic["tbs_response_data"]["responses"][0]
        assert single["cert_id"].dump() == world.cert_id(GOOD, algorithm)
    # Parameters absent instead of NULL, and SHA-384 (not pre-signed): without a live signer,
    # unauthorized rather than a response whose CertID differs (OCSP-RESP-9).
    assert_error(await post(client, world.request(GOOD, null_params=False)),
                 OcspResponseStatus.unauthorized)
    assert_error(await post(client, world.request(GOOD, HashAlgorithm.SHA384)),
                 OcspResponseStatus.unauthorized)


async def test_headers_etag_and_304(running: tuple[Starlette, httpx.AsyncClient],
                                    world: World) -> None:
    _app, client = running
    der = world.request(GOOD)
    first = await client.get("/ocsp/" + quote(b64(der), safe=""))
    second = await client.get("/ocsp/" + quote(b64(der), safe=""))  # memo hit
    for response in (first, second):
        assert response.status_code == 200
        assert response.headers["content-type"] == OCSP_TYPE
        assert response.headers["content-length"] == str(len(response.content))
        assert response.headers["etag"] == '"' + hashlib.sha256(response.content).hexdigest() + '"'
        resp = x509_ocsp.load_der_ocsp_response(response.content)
        max_age = int(response.headers["cache-control"].split(",")[0].removeprefix("max-age="))
        assert response.headers["cache-control"] == (
            f"max-age={max_age}, public, no-transform, must-revalidate")
        remaining = (resp.next_update_utc - datetime.now(UTC)).total_seconds()
        assert 0 <= max_age <= remaining + 1 and max_age >= remaining - 5
        assert response.headers["last-modified"] == resp.this_update_utc.strftime(
            "%a, %d %b %Y %H:%M:%S GMT")
        assert response.headers["expires"] == resp.next_update_utc.strftime(
            "%a, %d %b %Y %H:%M:%S GMT")
    assert first.content == second.content
    cached = await client.get("/ocsp/" + b64(der), headers={"if-none-match": first.headers["etag"]})
    assert cached.status_code == 304 and cached.content == b""
    assert cached.headers["etag"] == first.headers["etag"]
    other = await client.get("/ocsp/" + b64(der), headers={"if-none-match": '"nope"'})
    assert other.status_code == 200 and other.content == first.content
    post_answer = await post(client, der)
    assert post_answer.content == first.content  # GET and POST give identical bytes
    head = await client.head("/ocsp/" + b64(der))
    assert head.status_code == 200 and head.content == b""


def _encodings(der: bytes) -> dict[str, str]:
    text = b64(der)
    return {
        "percent-encoded": quote(text, safe=""),
        "raw + / =": text,
        "doubled slash": "/" + text,
        "base64url": text.replace("+", "-").replace("/", "_"),
        "no padding": text.rstrip("="),
        "base64url no padding": text.replace("+", "-").replace("/", "_").rstrip("="),
        "%2B %2F %3D only": text.replace("+", "%2B").replace("/", "%2F").replace("=", "%3D"),
        "space for +": text.replace("+", "%20"),
    }


async def test_get_encodings(running: tuple[Starlette, httpx.AsyncClient], world: World) -> None:
    _app, client = running
    # Find a serial whose request's base64 has '/', '+' and padding to make the table bite.
    der = world.request(GOOD)
    expected = (await post(client, der)).content
    text = b64(der)
    for name, path in _encodings(der).items():
        response = await client.get("/ocsp/" + path)
        assert response.content == expected, (name, text)
    # The decoder itself on a request that contains every special character.
    synthetic = bytes([0x30, 0xFB, 0xFF, 0xBF, 0x3E])  # base64 "MPv/vz4=": '/', '+'-free
    assert decode_get_path(b"/ocsp/" + quote(b64(synthetic), safe="").encode()) == synthetic
    assert decode_get_path(b"/ocsp//" + b"MPv_vz4") == synthetic
    assert decode_get_path(b"/ocsp/" + b"+/+/") == base64.b64decode("+/+/")
    assert decode_get_path(b"/ocsp/" + b"%20/%20/") == base64.b64decode("+/+/")


async def test_garbage_never_5xx(running: tuple[Starlette, httpx.AsyncClient],
                                 world: World) -> None:
    _app, client = running
    der = world.request(GOOD)
    bodies = [b"", b"\x30", b"garbage", der[:-1], der + b"\x00", b"\x30\x80" + der[2:] + b"\0\0",
              bytes(range(256)), der.replace(b"\x30", b"\x31", 1)]
    for body in bodies:
        assert_error(await post(client, body), OcspResponseStatus.malformedRequest)
    for path in ("/ocsp/", "/ocsp/!!!!", "/ocsp/%ZZ", "/ocsp/" + b64(b"junk"), "/ocsp"):
        assert_error(await client.get(path), OcspResponseStatus.malformedRequest)
    huge = await post(client, b"\x30" * (world.settings.max_request_bytes + 1))
    assert huge.status_code == 413
    long_get = await client.get("/ocsp/" + "A" * (5 * world.settings.max_request_bytes))
    assert long_get.status_code == 414
    assert (await client.put("/ocsp", content=der)).status_code == 405
    assert (await client.delete("/ocsp/" + b64(der))).status_code == 405
    # The next request still works.
    assert parsed(await post(client, der)).certificate_status == x509_ocsp.OCSPCertStatus.GOOD


async def test_oversized_body_refused_before_reading(
        running: tuple[Starlette, httpx.AsyncClient], world: World) -> None:
    app, _client = running
    limit = world.settings.max_request_bytes
    sent: list[dict[str, object]] = []
    reads = 0

    async def receive() -> dict[str, object]:
        nonlocal reads
        reads += 1
        return {"type": "http.request", "body": b"\x30" * 1000, "more_body": True}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/ocsp", "raw_path": b"/ocsp",
             "headers": [(b"content-length", str(limit + 1).encode())]}
    await app(scope, receive, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == 413 and reads == 0
    # No Content-Length (chunked): refused as soon as the body grows past the cap.
    sent.clear()
    scope["headers"] = []
    await app(scope, receive, send)  # type: ignore[arg-type]
    assert sent[0]["status"] == 413 and reads == limit // 1000 + 1


async def test_nonce_and_multi_without_live_signing(
        running: tuple[Starlette, httpx.AsyncClient], world: World) -> None:
    _app, client = running
    answer = parsed(await post(client, world.request(GOOD, nonce=b"n" * 16)))
    with pytest.raises(x509.ExtensionNotFound):  # pre-signed: no nonce (OCSP-RESP-14)
        answer.extensions.get_extension_for_class(x509.OCSPNonce)
    for size in (0, 129):
        assert_error(await post(client, world.request(GOOD, nonce=b"x" * size)),
                     OcspResponseStatus.malformedRequest)
    for size in (1, 32, 128):
        assert parsed(await post(client, world.request(GOOD, nonce=b"x" * size)))
    multi = encode_ocsp_request([world.cert_id(GOOD), world.cert_id(REVOKED)])
    assert_error(await post(client, multi), OcspResponseStatus.malformedRequest)


async def test_unknown_issuer_and_hash(running: tuple[Starlette, httpx.AsyncClient],
                                       world: World) -> None:
    _app, client = running
    stranger = make_ca("Stranger CA")
    foreign = cert_id_der(HashAlgorithm.SHA1, stranger.cert.subject.public_bytes(),
                          subject_public_key_bits(stranger.cert), GOOD)
    assert_error(await post(client, encode_ocsp_request([foreign])),
                 OcspResponseStatus.unauthorized)
    # An unsupported hash OID (MD5) in an otherwise well-formed CertID.
    md5 = der_sequence(der_sequence(der_oid("1.2.840.113549.2.5"), DER_NULL),
                       der_octet_string(b"\x01" * 16), der_octet_string(b"\x02" * 16),
                       der_integer(GOOD))
    assert_error(await post(client, encode_ocsp_request([md5])), OcspResponseStatus.unauthorized)


async def test_expired_response_never_served(world: World) -> None:
    later = FixedClock(datetime.now(UTC) + timedelta(days=5))
    async with serve_asgi(world, clock=later) as (_app, client):
        assert_error(await post(client, world.request(GOOD)), OcspResponseStatus.tryLater)
    # And a cached entry that expires while cached is not served either.
    clock = FixedClock(datetime.now(UTC))
    async with serve_asgi(world, clock=clock) as (_app, client):
        assert parsed(await post(client, world.request(GOOD)))
        assert parsed(await post(client, world.request(GOOD)))  # memo
        clock.advance(timedelta(days=5))
        assert_error(await post(client, world.request(GOOD)), OcspResponseStatus.tryLater)
        get = await client.get("/ocsp/" + b64(world.request(GOOD)))
        assert_error(get, OcspResponseStatus.tryLater)


async def test_revocation_visible_within_a_second(
        running: tuple[Starlette, httpx.AsyncClient], world: World) -> None:
    _app, client = running
    der = world.request(LATER)
    get_path = "/ocsp/" + b64(der)
    assert parsed(await post(client, der)).certificate_status == x509_ocsp.OCSPCertStatus.GOOD
    assert parsed(await client.get(get_path)).certificate_status == \
        x509_ocsp.OCSPCertStatus.GOOD  # now memoized and cached
    async with world.pool.acquire() as conn:
        await admin.revoke(conn, admin.RevokeRequest(issuer="ca", serial=LATER,
                                                     reason=Reason.superseded))
    started = time.monotonic()
    await presign(world)
    while True:
        got = parsed(await client.get(get_path))
        if got.certificate_status == x509_ocsp.OCSPCertStatus.REVOKED:
            break
        assert time.monotonic() - started < 1.0, "revocation not visible within 1 s"
        await asyncio.sleep(0.01)
    assert got.revocation_reason == x509.ReasonFlags.superseded
    assert parsed(await post(client, der)).certificate_status == x509_ocsp.OCSPCertStatus.REVOKED


async def test_metrics_and_health(running: tuple[Starlette, httpx.AsyncClient],
                                  world: World) -> None:
    _app, client = running
    der = world.request(GOOD)
    await post(client, der)
    await post(client, der)
    await post(client, b"junk")
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200
    text = (await client.get("/metrics")).text
    for needle in ('revoc_ocsp_requests_total{outcome="successful"}',
                   'revoc_ocsp_requests_total{outcome="malformedRequest"} 1.0',
                   'revoc_ocsp_cert_status_total{status="good"}',
                   'revoc_ocsp_source_total{source="memo"} 1.0',
                   'revoc_ocsp_source_total{source="database"} 1.0',
                   "revoc_ocsp_request_duration_seconds_bucket",
                   "revoc_ocsp_cache_entries 1.0", "revoc_ocsp_cache_bytes",
                   "revoc_ocsp_cache_hit_ratio 0.5", "revoc_ocsp_oldest_served_age_seconds",
                   "revoc_ocsp_store_reads_total 1.0", "revoc_ocsp_store_keys_total 1.0"):
        assert needle in text, needle


# ------------------------------------------------------------------ live signing


async def test_live_signing(live_world: World, tmp_path: Path) -> None:
    world = live_world
    async with serve_asgi(world) as (_app, client):
        # Never issued: unknown, signed live (never good).
        never = parsed(await post(client, world.request(NEVER)))
        assert never.certificate_status == x509_ocsp.OCSPCertStatus.UNKNOWN
        assert (await post(client, world.request(NEVER))).headers["cache-control"].startswith(
            "max-age=60,")
        # Nonce echoed (RFC 9654), signed live; the pre-signed answer has none.
        nonce = b"\x01" * 32
        answer = parsed(await post(client, world.request(GOOD, nonce=nonce)))
        assert answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
        assert answer.certificate_status == x509_ocsp.OCSPCertStatus.GOOD
        # CertID variants not pre-signed are signed live and echoed exactly.
        for cid in (world.cert_id(GOOD, null_params=False),
                    world.cert_id(REVOKED, HashAlgorithm.SHA384),
                    world.cert_id(GOOD, HashAlgorithm.SHA512)):
            response = await post(client, encode_ocsp_request([cid]))
            single = asn1_ocsp.OCSPResponse.load(response.content).basic_ocsp_response[
                "tbs_response_data"]["responses"][0]
            assert single["cert_id"].dump() == cid
        # Several CertIDs: one response covering all of them.
        multi = encode_ocsp_request([world.cert_id(GOOD), world.cert_id(REVOKED),
                                     world.cert_id(NEVER, HashAlgorithm.SHA256)], nonce=b"abc")
        response = await post(client, multi)
        basic = asn1_ocsp.OCSPResponse.load(response.content).basic_ocsp_response
        statuses = [s["cert_status"].name for s in basic["tbs_response_data"]["responses"]]
        assert statuses == ["good", "revoked", "unknown"]
        for der in (never.public_bytes(_DER), answer.public_bytes(_DER), response.content):
            lint(der, tmp_path)
        # Expired pre-signed responses are replaced by live ones with a live signer.
    later = FixedClock(datetime.now(UTC) + timedelta(days=5))
    async with serve_asgi(world, clock=later) as (_app, client):
        fresh = parsed(await post(client, world.request(GOOD)))
        assert fresh.next_update_utc > later.now()


_DER = Encoding.DER


# ------------------------------------------------------------------ units


def test_cache_bounds_and_invalidation(world: World) -> None:
    cache = ResponseCache(max_entries=2, max_bytes=1 << 20)
    response = _sample_response(world)
    entries = [CachedResponse(response, 0, 2**31, key=(1, bytes([i]), 1)) for i in range(3)]
    for entry in entries:
        cache.put(entry)
    assert len(cache) == 2 and not entries[0].alive
    cache.remember(cache.post_memo, b"req", entries[2])
    assert cache.post_memo[b"req"] is entries[2]
    assert cache.invalidate(1, bytes([2])) == 1 and not entries[2].alive
    small = ResponseCache(max_entries=100, max_bytes=entries[0].size * 2)
    for i in range(5):
        small.put(CachedResponse(response, 0, 2**31, key=(1, bytes([i]), 1)))
    assert small.size_bytes <= entries[0].size * 2 and len(small) == 2


def _sample_response(world: World) -> bytes:
    now = datetime.now(UTC).replace(microsecond=0)
    return build_ocsp_response(
        [SingleResponse(world.cert_id(GOOD), CertStatus.GOOD, now, now + timedelta(days=1))],
        signer=FileKeySigner(world.ca.key), responder_key_hash=responder_key_hash(world.ca.cert),
        produced_at=now)


def test_settings_round_trip() -> None:
    settings = Settings(database_url="postgresql://x@y/z", workers=3, live_signing=True)
    assert settings_from_env(settings_to_env(settings)) == settings
