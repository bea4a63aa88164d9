"""A delegated responder's certificate stored once (migration 0007, revoc/der/ocsp_certs.py):
rows hold stems, the responder splices the certs element back in, byte for byte what was signed,
and what it serves verifies with `openssl ocsp` (OCSP-SIGNER-8). Rows stored before 0007 (the
whole response, certs_id NULL) stay servable through the upgrade.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from responder.cache import CacheKey, ResponseCache
from responder.cache_warm import CacheWarmer, WarmState
from responder.presign_queue import presign_once
from responder.sources import PENDING, ResponseStore
from revoc.db import upgrade
from revoc.der.ocsp import ResponseTemplate, SingleResponse, cert_id_der
from revoc.der.ocsp_certs import certs_block, certs_id, splice_certs, split_certs
from revoc.model import CertStatus, HashAlgorithm, Reason
from revoc.settings import Settings
from revoc.signing import FileKeySigner
from tests.pki import cached_key, make_ca, make_ocsp_responder
from tests.presign_pki import CA_SIGNED, DELEGATED, Pki, openssl_check

SETTINGS = Settings(presign_processes=1)
NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)


def _template(certs: list[bytes]) -> ResponseTemplate:
    # RSA PKCS#1 v1.5 signs deterministically: the same tbs gives the same signature, so a
    # response built with its certs and one built without can be compared byte for byte.
    return ResponseTemplate(signer=FileKeySigner(cached_key("rsa2048", 3)),
                            responder_key_hash=b"\x01" * 20, certs=certs)


@pytest.mark.parametrize("count", [1, 2, 5, 150])
@pytest.mark.parametrize("serial", [1, 0x7F, 0x1234567890ABCDEF1234567890ABCDEF12345])
def test_splice_gives_back_the_signed_response(count: int, serial: int) -> None:
    """OCSP-SIGNER-8: the stem plus the certs element is exactly the response signed with the
    certificate(s) in it, for certs small and large enough to change every enclosing length's
    form (150 certificates: more than 64 KiB)."""
    ca = make_ca("Splice Root", key=cached_key("p256", 4))
    certs = [make_ocsp_responder(ca, name=f"R{n}", key=cached_key("p256", 5)).cert_der
             for n in range(count)]
    cert_id = cert_id_der(HashAlgorithm.SHA1, b"\x30\x00", b"\x04\x01", serial)
    singles = [SingleResponse(cert_id, CertStatus.REVOKED, NOW, NOW + timedelta(days=4),
                              revocation_time=NOW - timedelta(days=1),
                              revocation_reason=Reason.keyCompromise)]
    whole = _template(certs).build_many(singles, NOW)
    stem = _template([]).build_many(singles, NOW)
    block = certs_block(certs)
    assert splice_certs(stem, block) == whole
    assert split_certs(whole) == (stem, block)
    assert split_certs(stem) == (stem, None)
    assert len(whole) - len(stem) >= len(block)


def test_splice_refuses_what_is_not_a_successful_response() -> None:
    with pytest.raises(ValueError):
        splice_certs(b"\x30\x03\x0a\x01\x01", b"\xa0\x02\x30\x00")
    with pytest.raises(ValueError):
        splice_certs(b"\x04\x00", b"\xa0\x02\x30\x00")


async def _stored(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT r.issuer_id, r.serial, r.hash_alg, r.der AS stored, r.certs_id, s.der AS served,"
        "       c.certs_block"
        "  FROM ocsp_responses r JOIN ocsp_responses_served s USING (issuer_id, serial, hash_alg)"
        "  LEFT JOIN responder_certs c ON c.id = r.certs_id ORDER BY 1, 2, 3")


async def _served(pool: asyncpg.Pool, rows: list[asyncpg.Record]) -> list[bytes]:
    store = ResponseStore(pool, 10.0)
    try:
        got = []
        for row in rows:
            answer = await store.response(row["issuer_id"], bytes(row["serial"]), row["hash_alg"])
            assert answer is not None and answer is not PENDING
            got.append(answer[0])
        return got
    finally:
        await store.close()


def _check_all(pki: Pki, rows: list[asyncpg.Record], served: list[bytes], tag: str) -> None:
    names = {v: k for k, v in pki.ids.items()}
    for row, der in zip(rows, served, strict=True):
        serial = int.from_bytes(row["serial"], "big")
        openssl_check(pki, der, names[row["issuer_id"]], serial,
                      HashAlgorithm(row["hash_alg"]), f"{tag}-{serial:x}-{row['hash_alg']}")


async def test_delegated_certificate_stored_once_and_served_whole(pki: Pki,
                                                                  clean_db: asyncpg.Pool) -> None:
    """OCSP-SIGNER-8 after 0007: each delegated row holds a stem and names the one stored certs
    element; the responder's store, the SQL view and Python's splice give the same bytes, and
    `openssl ocsp` verifies them with only the CA certificate (the responder's certificate
    travels in the response)."""
    report = await presign_once(clean_db, SETTINGS)
    assert report.ok
    block = certs_block([pki.responder.cert_der])
    assert await clean_db.fetch("SELECT id, certs_block FROM responder_certs") == [
        (certs_id(block), block)]
    rows = await _stored(clean_db)
    delegated = [r for r in rows if r["issuer_id"] == pki.ids[DELEGATED]]
    assert delegated and all(r["certs_id"] == certs_id(block) for r in delegated)
    assert all(r["certs_id"] is None and r["stored"] == r["served"]
               for r in rows if r["issuer_id"] == pki.ids[CA_SIGNED])
    for row in delegated:
        assert row["served"] == splice_certs(row["stored"], block)
        assert len(row["served"]) - len(row["stored"]) >= len(block)  # what a row saves
    served = await _served(clean_db, rows)
    assert served == [r["served"] for r in rows]
    _check_all(pki, rows, served, "stored-once")


async def test_upgrade_from_0006_keeps_whole_rows_servable(pki: Pki, clean_db: asyncpg.Pool,
                                                           database_url: str) -> None:
    """A database with pre-signed rows from before 0007 (whole responses, certificate in each)
    upgrades in place: the rows are served unchanged, and the next re-sign stores stems."""
    assert (await presign_once(clean_db, SETTINGS)).ok
    # Back to the 0006 shape with data in it: whole responses, no 0007 objects.
    async with clean_db.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE ocsp_responses r SET der = s.der FROM ocsp_responses_served s"
                           " WHERE (s.issuer_id, s.serial, s.hash_alg) ="
                           "       (r.issuer_id, r.serial, r.hash_alg)")
        await conn.execute("DROP VIEW ocsp_responses_served; DROP FUNCTION revoc_ocsp_der;"
                           " DROP FUNCTION revoc_der_length; DROP TABLE responder_certs;"
                           " ALTER TABLE ocsp_responses DROP COLUMN certs_id;"
                           " DELETE FROM schema_migrations WHERE version = '0007_responder_certs'")
    before = await clean_db.fetch("SELECT issuer_id, serial, hash_alg, der FROM ocsp_responses"
                                  " ORDER BY 1, 2, 3")
    try:
        async with clean_db.acquire() as conn:
            assert await upgrade(conn) == ["0007_responder_certs"]
    finally:
        await clean_db.expire_connections()  # statement caches of the dropped objects
    rows = await _stored(clean_db)
    assert [r["certs_id"] for r in rows] == [None] * len(before)
    assert [r["served"] for r in rows] == [r["der"] for r in before]
    assert await _served(clean_db, rows) == [r["der"] for r in before]
    # The next round that re-signs them (made due here) stores stems (the merge's UPDATE).
    await clean_db.execute("UPDATE ocsp_responses SET this_update = now() - interval '30 days'")
    assert (await presign_once(clean_db, SETTINGS)).ok
    rows = await _stored(clean_db)
    assert {r["certs_id"] is None for r in rows if r["issuer_id"] == pki.ids[DELEGATED]} == {
        False}
    _check_all(pki, rows, await _served(clean_db, rows), "upgraded")


async def test_a_lost_certs_element_is_never_served(pki: Pki, clean_db: asyncpg.Pool,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Invariant 1: a row naming a certs element that is not there is unservable (tryLater or a
    live signature upstream), never a response without its signer's certificate or a guess."""
    assert (await presign_once(clean_db, SETTINGS)).ok
    await clean_db.execute("DELETE FROM responder_certs")
    rows = await _stored(clean_db)
    store = ResponseStore(clean_db, 10.0)
    try:
        with caplog.at_level(logging.ERROR, logger="revoc.responder"):
            for row in rows:
                answer = await store.response(row["issuer_id"], bytes(row["serial"]),
                                              row["hash_alg"])
                if row["issuer_id"] == pki.ids[DELEGATED]:
                    assert answer is PENDING
                else:
                    assert answer is not None and answer[0] == row["stored"]
    finally:
        await store.close()
    assert "responder_certs lacks" in caplog.text


async def test_bulk_warm_up_caches_whole_responses(pki: Pki, clean_db: asyncpg.Pool) -> None:
    """OCSP-SIGNER-8 on the warm-up path (responder/cache_warm.py): a new responder's cache
    holds the spliced response, byte for byte what the store serves and `openssl ocsp` verifies,
    never the stem without the responder's certificate."""
    assert (await presign_once(clean_db, SETTINGS)).ok
    cache = ResponseCache(1000, 1 << 30)
    warmer = CacheWarmer(cache, 1000, enabled=True)
    await warmer.run(clean_db)
    assert warmer.state is WarmState.DONE, warmer.how_it_ended
    rows = await _stored(clean_db)
    assert any(r["certs_id"] is not None for r in rows)
    cached = []
    for row in rows:
        entry = cache.get(CacheKey(row["issuer_id"], bytes(row["serial"]), row["hash_alg"]))
        assert entry is not None
        cached.append(entry.der)
    assert cached == [r["served"] for r in rows]
    _check_all(pki, rows, cached, "warmed")
