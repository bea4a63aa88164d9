"""publish_round against a real PostgreSQL: contents, numbers, deltas, shards, expiry, files."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from cryptography import x509

from crl_publisher import publisher
from crl_publisher.entries import stream_full_entries, stream_shard_entries
from crl_publisher.output import write_all_atomically
from crl_publisher.publisher import publish_round
from revoc.der.asn1 import expect
from revoc.model import Reason
from tests.crl_fixtures import (
    PUBLIC_URL,
    START,
    add_leaves,
    clock,
    crl_of,
    register_pki,
    revoke,
    settings_for,
)


def _number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


async def test_unsharded_full_and_delta(clean_db: asyncpg.Pool, tmp_path: Path) -> None:
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "plain")
        await add_leaves(conn, pki, range(1, 6))
        await revoke(conn, pki, 2, Reason.keyCompromise, START - timedelta(hours=1))
    settings = settings_for(tmp_path)
    fixed = clock()
    report = await publish_round(clean_db, settings, clock=fixed)
    assert report.ok, report.failures
    assert [(p.name, p.kind) for p in report.publications] == [
        ("plain.crl", "full"), ("plain-delta.crl", "delta")]
    full = crl_of(settings.crl_out / "plain.crl")
    assert full.is_signature_valid(pki.ca.cert.public_key())
    assert [r.serial_number for r in full] == [2]
    oids = [e.oid.dotted_string for e in full.extensions]
    assert oids == ["2.5.29.35", "2.5.29.20", "2.5.29.46"]  # AKI, number, freshestCRL; no IDP
    freshest = full.extensions.get_extension_for_class(x509.FreshestCRL).value
    assert freshest[0].full_name[0].value == f"{PUBLIC_URL}/crl/plain-delta.crl"
    delta = crl_of(settings.crl_out / "plain-delta.crl")
    assert len(delta) == 0
    assert _number(delta) == _number(full) + 1

    async with clean_db.acquire() as conn:
        await revoke(conn, pki, 4, Reason.certificateHold, START + timedelta(minutes=1))
    fixed.advance(timedelta(minutes=6))
    report = await publish_round(clean_db, settings, clock=fixed)
    # A change re-issues the full CRL too (issue 13 point 1), with a delta of the same number.
    assert [p.kind for p in report.publications] == ["full", "delta"]
    assert [r.serial_number for r in crl_of(settings.crl_out / "plain.crl")] == [2, 4]
    delta2 = crl_of(settings.crl_out / "plain-delta.crl")
    assert [r.serial_number for r in delta2] == [4]
    base = delta2.extensions.get_extension_for_class(x509.DeltaCRLIndicator)
    assert base.critical and base.value.crl_number == _number(full)
    assert _number(delta2) > _number(delta)


def _serials(crl: x509.CertificateRevocationList) -> list[int]:
    return sorted(r.serial_number for r in crl)


async def test_second_full_pairs_with_same_number_delta(clean_db: asyncpg.Pool,
                                                        tmp_path: Path) -> None:
    """RFC 5280 §5.2.3: a delta issued with a full CRL carries its number; base = previous full.
    Full CRLs are re-signed on schedule even when nothing changed (CRL-18)."""
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "pair")
        await add_leaves(conn, pki, range(1, 4))
        await revoke(conn, pki, 1, Reason.keyCompromise, START - timedelta(hours=1))
    settings = settings_for(tmp_path)
    fixed = clock()
    await publish_round(clean_db, settings, clock=fixed)
    first = crl_of(settings.crl_out / "pair.crl")
    fixed.advance(timedelta(minutes=1))  # neither kind is due yet
    assert (await publish_round(clean_db, settings, clock=fixed)).publications == []
    async with clean_db.acquire() as conn:
        await revoke(conn, pki, 3, Reason.superseded, START + timedelta(minutes=90))
    fixed.advance(timedelta(days=1))
    report = await publish_round(clean_db, settings, clock=fixed)
    assert [p.kind for p in report.publications] == ["full", "delta"]
    second = crl_of(settings.crl_out / "pair.crl")
    delta = crl_of(settings.crl_out / "pair-delta.crl")
    assert _number(second) > _number(first)
    assert _number(delta) == _number(second)
    assert delta.extensions.get_extension_for_class(
        x509.DeltaCRLIndicator).value.crl_number == _number(first)
    assert _serials(second) == [1, 3] and _serials(delta) == [3]
    # Nothing changed for a day: the full CRL is re-signed anyway, with a higher number.
    fixed.advance(timedelta(days=1))
    report = await publish_round(clean_db, settings, clock=fixed)
    third = crl_of(settings.crl_out / "pair.crl")
    assert _number(third) > _number(second) and _serials(third) == [1, 3]
    assert third.last_update_utc == fixed.now()
    assert third.next_update_utc == fixed.now() + timedelta(days=7)


async def test_sharded_issuer_publishes_shards_only(clean_db: asyncpg.Pool,
                                                    tmp_path: Path) -> None:
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "shd", shards=3)
        await add_leaves(conn, pki, [3, 4, 7])  # shards 0, 1, 1; shard 2 has no certificate
        await revoke(conn, pki, 4, Reason.keyCompromise, START - timedelta(hours=1))
    settings = settings_for(tmp_path)
    fixed = clock()
    report = await publish_round(clean_db, settings, clock=fixed)
    assert report.ok
    names = sorted(p.name for p in report.publications)
    assert names == [f"shd/{k}{s}" for k in range(3) for s in ("-delta.crl", ".crl")]
    assert not (settings.crl_out / "shd.crl").exists()
    for k in range(3):
        full = crl_of(settings.crl_out / "shd" / f"{k}.crl")
        delta = crl_of(settings.crl_out / "shd" / f"{k}-delta.crl")
        idp = full.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
        assert idp.critical
        assert [n.value for n in idp.value.full_name] == [f"http://crl.test.example/crl/shd/{k}.crl"]
        assert delta.extensions.get_extension_for_class(x509.IssuingDistributionPoint) == idp
        freshest = full.extensions.get_extension_for_class(x509.FreshestCRL).value
        assert freshest[0].full_name[0].value == f"http://crl.test.example/crl/shd/{k}-delta.crl"
        assert _serials(full) == ([4] if k == 1 else [])
    async with clean_db.acquire() as conn:
        await revoke(conn, pki, 7, Reason.superseded, START + timedelta(minutes=1))
    fixed.advance(timedelta(minutes=6))
    report = await publish_round(clean_db, settings, clock=fixed)
    assert sorted(p.name for p in report.publications) == [
        "shd/0-delta.crl", "shd/1-delta.crl", "shd/1.crl", "shd/2-delta.crl"]
    assert _serials(crl_of(settings.crl_out / "shd" / "1.crl")) == [4, 7]
    assert _serials(crl_of(settings.crl_out / "shd" / "1-delta.crl")) == [7]
    assert _serials(crl_of(settings.crl_out / "shd" / "0-delta.crl")) == []


async def test_expired_entry_leaves_after_one_full_crl_past_expiry(
        clean_db: asyncpg.Pool, tmp_path: Path) -> None:
    """CRL-15 / BR-14: listed on the first full CRL issued after notAfter, gone on the next."""
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "exp")
        await add_leaves(conn, pki, [1], not_after=START + timedelta(hours=1))
        await add_leaves(conn, pki, [2])
        await revoke(conn, pki, 1, Reason.superseded, START - timedelta(hours=1))
        await revoke(conn, pki, 2, Reason.superseded, START - timedelta(hours=1))
    settings = settings_for(tmp_path, crl_delta_interval=0)
    fixed = clock()
    await publish_round(clean_db, settings, clock=fixed)
    assert _serials(crl_of(settings.crl_out / "exp.crl")) == [1, 2]
    fixed.advance(timedelta(days=1))  # certificate 1 expired an hour after the previous full CRL
    await publish_round(clean_db, settings, clock=fixed)
    after = crl_of(settings.crl_out / "exp.crl")
    assert after.last_update_utc > START + timedelta(hours=1)
    assert _serials(after) == [1, 2]
    fixed.advance(timedelta(days=1))
    await publish_round(clean_db, settings, clock=fixed)
    assert _serials(crl_of(settings.crl_out / "exp.crl")) == [2]
    assert not (settings.crl_out / "exp-delta.crl").exists()  # deltas off: none, no freshestCRL
    assert all(e.oid != x509.FreshestCRL.oid
               for e in crl_of(settings.crl_out / "exp.crl").extensions)


async def test_issuer_without_key_is_skipped(clean_db: asyncpg.Pool, tmp_path: Path) -> None:
    async with clean_db.acquire() as conn:
        await register_pki(conn, tmp_path / "pki", "nokey", with_key=False)
    report = await publish_round(clean_db, settings_for(tmp_path), clock=clock())
    assert report.ok and report.publications == []
    assert "no CA key" in report.skipped["nokey"]


async def test_failing_crl_is_never_published(clean_db: asyncpg.Pool, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A signature the CA certificate does not verify: nothing stored, files untouched."""
    from crl_publisher import publisher
    from revoc.signing import FileKeySigner
    from tests.pki import new_key

    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "bad")
        await add_leaves(conn, pki, [1])
    settings = settings_for(tmp_path)
    fixed = clock()
    assert (await publish_round(clean_db, settings, clock=fixed)).ok
    before = (settings.crl_out / "bad.crl").read_bytes()
    async with clean_db.acquire() as conn:
        rows_before = await conn.fetchval("SELECT count(*) FROM crls")
    monkeypatch.setattr(publisher, "load_signer",
                        lambda issuer, **_kw: FileKeySigner(new_key("p256")))
    fixed.advance(timedelta(days=1))
    report = await publish_round(clean_db, settings, clock=fixed)
    assert "signature does not verify" in report.failures["bad"]
    assert report.publications == []
    assert (settings.crl_out / "bad.crl").read_bytes() == before
    async with clean_db.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM crls") == rows_before


async def test_files_are_repaired_from_the_database(clean_db: asyncpg.Pool,
                                                    tmp_path: Path) -> None:
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "rep")
        await add_leaves(conn, pki, [1])
    settings = settings_for(tmp_path)
    fixed = clock()
    await publish_round(clean_db, settings, clock=fixed)
    good = (settings.crl_out / "rep.crl").read_bytes()
    (settings.crl_out / "rep.crl").write_bytes(good[:100])
    (settings.crl_out / "rep-delta.crl").unlink()
    (settings.crl_out / ".rep.crl.tmp-999999999").write_bytes(b"partial")
    report = await publish_round(clean_db, settings, clock=fixed)
    assert sorted(report.files_repaired) == ["rep-delta.crl", "rep.crl"]
    assert (settings.crl_out / "rep.crl").read_bytes() == good
    assert not (settings.crl_out / ".rep.crl.tmp-999999999").exists()


async def test_numbers_fit_and_never_go_back(clean_db: asyncpg.Pool, tmp_path: Path) -> None:
    """A clock that steps back still yields higher numbers (max + 1), all <= 20 octets."""
    async with clean_db.acquire() as conn:
        await register_pki(conn, tmp_path / "pki", "num")
    settings = settings_for(tmp_path)
    fixed = clock()
    await publish_round(clean_db, settings, clock=fixed, force_full=True)
    first = _number(crl_of(settings.crl_out / "num-delta.crl"))
    fixed.advance(timedelta(days=-3))
    await publish_round(clean_db, settings, clock=fixed, force_full=True)
    second = _number(crl_of(settings.crl_out / "num.crl"))
    assert second > first and second.bit_length() <= 159


def _listed(entries: bytes | bytearray) -> list[int]:
    """The serials of concatenated revokedCertificates entries, in order."""
    data, pos, serials = bytes(entries), 0, []
    while pos < len(data):
        start, end = expect(data, pos, len(data), 0x30)
        serial_start, serial_end = expect(data, start, end, 0x02)
        serials.append(int.from_bytes(data[serial_start:serial_end], "big"))
        pos = end
    return serials


class _Entries:
    """Collects what a stream adds (stands in for CrlAssembler, which only appends)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def add(self, entries: bytes) -> None:
        self.data += entries


async def test_one_pass_over_shards_equals_one_query_per_shard(clean_db: asyncpg.Pool,
                                                               tmp_path: Path) -> None:
    """Issue 13 point 9: the shards' entries read in one pass (stream_shard_entries, each shard
    with its own expiry cutoff, CRL-15) are byte for byte those of one query per shard, in
    serial order (CRL-6), with the same counts."""
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "one", shards=4)
        await add_leaves(conn, pki, range(1, 9), not_after=START + timedelta(hours=1))
        await add_leaves(conn, pki, range(9, 41))
        for serial in range(1, 41):
            if serial % 5:  # some stay good in every shard
                await revoke(conn, pki, serial, Reason.keyCompromise,
                             START - timedelta(hours=2, seconds=serial))
        issuer_id = await conn.fetchval("SELECT id FROM issuers WHERE name = 'one'")
        never = datetime(1, 1, 1, tzinfo=UTC)
        cutoffs = {0: never, 1: START + timedelta(hours=2), 2: START,
                   3: START + timedelta(hours=2)}
        async with conn.transaction(isolation="repeatable_read"):
            one_pass = {shard: _Entries() for shard in cutoffs}
            counts = await stream_shard_entries(
                conn, issuer_id, {s: (c, one_pass[s]) for s, c in cutoffs.items()},  # type: ignore[misc]
                "test")
            for shard, cutoff in cutoffs.items():
                alone = _Entries()
                count = await stream_full_entries(conn, issuer_id, shard, cutoff,
                                                  alone, "test")  # type: ignore[arg-type]
                assert counts[shard] == count
                assert bytes(one_pass[shard].data) == bytes(alone.data)
                listed = _listed(one_pass[shard].data)
                assert listed == sorted(listed)
                assert all(serial % 4 == shard and serial % 5 for serial in listed)
    assert counts[1] < counts[0] or counts[1] < counts[2]  # the cutoffs did drop entries
    assert sum(counts.values()) > 0


async def test_files_of_a_round_written_together(tmp_path: Path) -> None:
    """write_all_atomically: every file replaced whole (temp + fsync + rename + directory fsync),
    a file that cannot be written reported alone, and no temp file left behind."""
    root = tmp_path / "out"
    (root / "iss").mkdir(parents=True)
    (root / "iss" / "0.crl").write_bytes(b"old")
    (root / "blocked").write_bytes(b"a file where a directory is wanted")
    errors = await write_all_atomically(root, [("iss/0.crl", b"new0"), ("iss/1.crl", b"new1"),
                                               ("top.crl", b"top"), ("blocked/x.crl", b"x")])
    assert set(errors) == {"blocked/x.crl"}
    assert (root / "iss" / "0.crl").read_bytes() == b"new0"
    assert (root / "iss" / "1.crl").read_bytes() == b"new1"
    assert (root / "top.crl").read_bytes() == b"top"
    assert not list(root.rglob(".*.tmp-*"))


async def test_large_crls_are_uploaded_by_copy(clean_db: asyncpg.Pool, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 13 point 9: a CRL over UPLOAD_FROM_BYTES goes to PostgreSQL by COPY in chunks
    (not as one bound parameter); what is stored is byte for byte the file and the CRL built,
    and several in one round each get their own bytes."""
    monkeypatch.setattr(publisher, "UPLOAD_FROM_BYTES", 0)
    monkeypatch.setattr(publisher, "UPLOAD_CHUNK", 7)  # many chunks, none aligned
    async with clean_db.acquire() as conn:
        pki = await register_pki(conn, tmp_path / "pki", "upl", shards=2)
        await add_leaves(conn, pki, range(1, 7))
        for serial in (2, 3, 5):
            await revoke(conn, pki, serial, Reason.keyCompromise, START - timedelta(hours=1))
    settings = settings_for(tmp_path)
    report = await publish_round(clean_db, settings, clock=clock())
    assert report.ok and len(report.publications) == 4
    async with clean_db.acquire() as conn:
        rows = await conn.fetch("SELECT shard, kind, der, sha256, entries FROM crls")
    assert len(rows) == 4
    for row in rows:
        name = f"upl/{row['shard']}{'-delta' if row['kind'] == 'delta' else ''}.crl"
        der = bytes(row["der"])
        assert der == (settings.crl_out / name).read_bytes()
        assert hashlib.sha256(der).digest() == bytes(row["sha256"])
        assert len(x509.load_der_x509_crl(der)) == row["entries"]
    assert sorted(_serials(crl_of(settings.crl_out / "upl" / f"{k}.crl")) for k in (0, 1)) == [
        [2], [3, 5]]
