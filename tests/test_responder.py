"""OCSP responder (`revoc serve`) through ASGI, against real PostgreSQL.

Responses are pre-signed by the presigner's `presign_once` (see `presign`); every successful
answer is re-parsed with cryptography/asn1crypto and linted with pkilint.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp as x509_ocsp
from starlette.applications import Starlette

from responder.app import settings_from_env, settings_to_env
from responder.cache import CachedResponse, ResponseCache
from responder.ocsp_endpoint import decode_get_path
from revoc import admin
from revoc.clock import FixedClock
from revoc.der.asn1 import DER_NULL, der_integer, der_octet_string, der_oid, der_sequence
from revoc.der.ocsp import (
    SingleResponse,
    build_ocsp_response,
    cert_id_der,
    encode_ocsp_request,
    responder_key_hash,
)
from revoc.model import CertStatus, HashAlgorithm, OcspResponseStatus, Reason
from revoc.settings import Settings
from revoc.signing import FileKeySigner, subject_public_key_bits
from tests.bounds import within
from tests.pki import make_ca
from tests.responder_world import (
    GOOD,
    LATER,
    NEVER,
    OCSP_TYPE,
    REVOKED,
    World,
    assert_error,
    b64,
    lint,
    parsed,
    post,
    presign,
    serve_asgi,
)

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


@pytest.mark.parametrize("bound", within(1.0))
async def test_revocation_visible_within_a_second(
        running: tuple[Starlette, httpx.AsyncClient], world: World, bound: float) -> None:
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
        assert time.monotonic() - started < bound, f"revocation not visible within {bound} s"
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
