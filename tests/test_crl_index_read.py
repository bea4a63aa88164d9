"""Issue 13 point 9: a full CRL's entries come from an index alone (migration 0011), and every
revoked certificate is still on its CRLs whichever way they are read.

- Plans, after a VACUUM: a shard's entries, and an unsharded issuer's, are one index-only range
  scan of certificates_revoked in serial order (no sort, no heap page); which shards an issuer's
  certificates carry and the URLs per shard are index probes, not a scan of every certificate.
- The one rule: the CRLs of an unsharded issuer, of a sharded one (one query per shard, and the
  one pass in serial order after a bulk change), and of a sharded issuer whose certificates
  without a shard keep the issuer-wide CRL (read by the primary key, or by the index while no
  revoked certificate of the issuer has a shard) list exactly the revoked rows of their scope,
  including rows revoked while the publication that missed them ran: the next one lists them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from cryptography import x509

from crl_publisher import issuer_round
from crl_publisher.entries import stream_full_entries
from crl_publisher.scheduler import run_once
from revoc.crl_paths import UNSHARDED
from revoc.der.asn1 import integer_content
from revoc.der.crl import encode_crl_entry
from revoc.model import Reason
from revoc.queries import queries
from tests.crl_fixtures import PUBLIC_URL, START, clock, crl_of, register_pki, settings_for

NEVER = datetime(1, 1, 1, tzinfo=UTC)


async def _issuer_id(conn: asyncpg.Connection, name: str) -> int:
    issuer_id: int = await conn.fetchval("SELECT id FROM issuers WHERE name = $1", name)
    return issuer_id


async def _bulk(conn: asyncpg.Connection, name: str, serials: Iterable[int], *, shards: int,
                revoked: Callable[[int], bool], without_shard: Callable[[int], bool] = (
                    lambda _serial: False)) -> None:
    """Certificates of issuer `name` straight into the table (as an import writes them): shard
    serial % shards (none when `without_shard(serial)` or unsharded), revoked when
    `revoked(serial)`, with the stored entry a revocation writes."""
    issuer_id = await _issuer_id(conn, name)
    at = START - timedelta(days=1)

    def rows() -> Iterable[tuple[Any, ...]]:
        for serial in serials:
            shard = None if not shards or without_shard(serial) else serial % shards
            url = (f"{PUBLIC_URL}/crl/{name}.crl" if shard is None
                   else f"{PUBLIC_URL}/crl/{name}/{shard}.crl")
            if revoked(serial):
                when = at - timedelta(seconds=serial % 86_400)
                yield (issuer_id, integer_content(serial), START + timedelta(days=365), url,
                       shard, "revoked", when, int(Reason.keyCompromise),
                       encode_crl_entry(serial, when, Reason.keyCompromise))
            else:
                yield (issuer_id, integer_content(serial), START + timedelta(days=365), url,
                       shard, "good", None, None, None)

    await conn.copy_records_to_table(
        "certificates", records=list(rows()),
        columns=["issuer_id", "serial", "not_after", "crl_url", "shard", "status", "revoked_at",
                 "reason", "crl_entry"])


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *[n for child in plan.get("Plans", []) for n in _nodes(child)]]


async def _explain(conn: asyncpg.Connection, query: str, *args: object) -> list[dict[str, Any]]:
    text = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {query}", *args)
    return _nodes(json.loads(text)[0]["Plan"])


async def test_entries_and_scopes_are_read_from_indexes(clean_db: asyncpg.Pool,
                                                        tmp_path: Path) -> None:
    q = queries()
    async with clean_db.acquire() as conn:
        await register_pki(conn, tmp_path / "flat", "flat")
        await register_pki(conn, tmp_path / "sh", "sh", shards=16)
        await _bulk(conn, "flat", range(1, 20_001), shards=0, revoked=lambda s: s % 3 != 0)
        await _bulk(conn, "sh", range(1, 20_001), shards=16, revoked=lambda s: s % 3 != 0)
        await conn.execute("VACUUM (ANALYZE) certificates")
        flat, sharded = await _issuer_id(conn, "flat"), await _issuer_id(conn, "sh")

        for query, args, rows in ((q["crl_full_entries_unsharded"], (flat, NEVER), 13_334),
                                  (q["crl_full_entries_shard"], (sharded, NEVER, 3), 833)):
            nodes = await _explain(conn, query, *args)
            scans = [n for n in nodes if n.get("Relation Name") == "certificates"]
            assert [(n["Node Type"], n["Index Name"], n["Heap Fetches"], n["Actual Rows"])
                    for n in scans] == [("Index Only Scan", "certificates_revoked", 0, rows)]
            assert not [n for n in nodes if "Sort" in n["Node Type"]]

        for query, args in ((q["crl_shard_urls"], (sharded,)), (q["crl_shard_urls"], (flat,)),
                            (q["crl_carried_shards"], (sharded, START)),
                            (q["crl_revoked_with_shard"], (flat,)),
                            (q["crl_revoked_with_shard"], (sharded,))):
            nodes = await _explain(conn, query, *args)
            scans = [n for n in nodes if n.get("Relation Name") == "certificates"]
            assert scans and all(n["Node Type"] != "Seq Scan" for n in scans), query
            # Probes: each reads a row or two, however many certificates there are.
            assert all(n["Actual Rows"] <= 1 for n in scans), [
                (n["Node Type"], n["Actual Rows"], n["Actual Loops"]) for n in scans]

        assert sorted(tuple(r) for r in await conn.fetch(q["crl_shard_urls"], sharded)) == [
            (k, f"{PUBLIC_URL}/crl/sh/{k}.crl") for k in range(16)]
        assert await conn.fetch(q["crl_shard_urls"], flat) == []
        assert sorted(r["shard"] for r in await conn.fetch(q["crl_carried_shards"], sharded,
                                                           START)) == list(range(16))
        assert [r["shard"] for r in await conn.fetch(q["crl_carried_shards"], flat, START)] == [
            None]


async def test_shard_urls_list_every_pair_and_certificates_without_one(
        clean_db: asyncpg.Pool, tmp_path: Path) -> None:
    """The probes find every distinct (shard, URL), a certificate without a stored URL as NULL
    (the default URL then goes into the shard's IDP), and nothing of other issuers."""
    q = queries()
    async with clean_db.acquire() as conn:
        await register_pki(conn, tmp_path / "u", "u", shards=3)
        await register_pki(conn, tmp_path / "other", "other", shards=3)
        await _bulk(conn, "u", range(1, 301), shards=3, revoked=lambda s: s % 2 == 0)
        await _bulk(conn, "other", range(1, 31), shards=3, revoked=lambda s: False)
        issuer_id = await _issuer_id(conn, "u")
        await conn.execute("UPDATE certificates SET crl_url = 'http://b.example/' || shard "
                           "WHERE issuer_id = $1 AND serial = $2", issuer_id, integer_content(4))
        await conn.execute("UPDATE certificates SET crl_url = NULL WHERE issuer_id = $1 AND "
                           "serial = ANY($2::bytea[])", issuer_id,
                           [integer_content(5), integer_content(8)])
        await conn.execute("UPDATE certificates SET shard = 7, crl_url = 'http://a.example/7' "
                           "WHERE issuer_id = $1 AND serial = $2", issuer_id, integer_content(9))
        got = sorted((r["shard"], r["crl_url"] or "") for r in
                      await conn.fetch(q["crl_shard_urls"], issuer_id))
        want = sorted({(r["shard"], r["crl_url"] or "") for r in await conn.fetch(
            "SELECT DISTINCT shard, crl_url FROM certificates WHERE issuer_id = $1 "
            "AND shard IS NOT NULL", issuer_id)})
        assert got == want
        assert {(1, "http://b.example/1"), (2, ""), (7, "http://a.example/7")} <= set(got)
        assert sorted(r["shard"] for r in await conn.fetch(q["crl_carried_shards"], issuer_id,
                                                           START)) == [0, 1, 2, 7]


async def test_unsharded_read_by_the_index_equals_the_primary_key_read(
        clean_db: asyncpg.Pool, tmp_path: Path) -> None:
    """The issuer-wide entries of an issuer without sharded revoked rows, read by
    certificates_revoked, are byte for byte those read by the primary key, in serial order."""
    async with clean_db.acquire() as conn:
        await register_pki(conn, tmp_path / "flat", "flat")
        await _bulk(conn, "flat", [*range(1, 400), 2**100 + 3, 2**150 + 1],
                    shards=0, revoked=lambda s: s % 4 != 1)
        issuer_id = await _issuer_id(conn, "flat")
        await conn.execute("UPDATE certificates SET not_after = $2 WHERE issuer_id = $1 AND "
                           "serial = ANY($3::bytea[])", issuer_id, START - timedelta(days=2),
                           [integer_content(s) for s in (2, 3, 6)])
        q = queries()
        async with conn.transaction(isolation="repeatable_read"):
            for cutoff in (NEVER, START - timedelta(days=3), START - timedelta(days=1)):
                indexed = _Entries()
                count = await stream_full_entries(conn, issuer_id, UNSHARDED, cutoff,
                                                  indexed, "test")  # type: ignore[arg-type]
                by_key = await conn.fetch(q["crl_full_entries_issuer"], issuer_id, cutoff)
                assert bytes(indexed.data) == b"".join(bytes.fromhex(r[0]) for r in by_key)
                assert count == len(by_key)
        assert count == 299 - 2  # 2, 3 and 6 expired before the cutoff (1 is good)


class _Entries:
    def __init__(self) -> None:
        self.data = bytearray()

    def add(self, entries: bytes) -> None:
        self.data += entries


def _serials(path: Path) -> list[int]:
    return sorted(r.serial_number for r in crl_of(path))


async def _revoked(conn: asyncpg.Connection, name: str, shard: int) -> list[int]:
    """The serials a scope's full CRL must list: revoked, in the shard (every one for the
    issuer-wide scope)."""
    rows = await conn.fetch(
        "SELECT c.serial FROM certificates c JOIN issuers i ON i.id = c.issuer_id "
        "WHERE i.name = $1 AND c.status = 'revoked' AND ($2 = -1 OR c.shard = $2)", name, shard)
    return sorted(int.from_bytes(bytes(r["serial"]), "big") for r in rows)


@pytest.mark.parametrize("one_pass", [False, True], ids=["per-shard", "one-pass"])
async def test_every_revoked_row_is_on_its_crls_even_when_revoked_during_the_round(
        clean_db: asyncpg.Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        one_pass: bool) -> None:
    # Which way the shards are read depends on the table's churn: force each.
    monkeypatch.setattr(issuer_round, "CHURN_ROWS", -1 if one_pass else 10**15)
    monkeypatch.setattr(issuer_round, "CHURN_FRACTION", -1.0 if one_pass else 10.0**15)
    async with clean_db.acquire() as conn:
        await register_pki(conn, tmp_path / "flat", "flat")
        await register_pki(conn, tmp_path / "sh", "sh", shards=4)
        # Sharded, with certificates without a shard (issued before it was): an issuer-wide
        # scope too, read by the primary key.
        await register_pki(conn, tmp_path / "mixed", "mixed", shards=4)
        # Sharded, whose only revoked certificates have no shard: its issuer-wide scope is
        # read by the index until a sharded certificate is revoked (during the round, below).
        await register_pki(conn, tmp_path / "late", "late", shards=4)
        await _bulk(conn, "flat", range(1, 601), shards=0, revoked=lambda s: s % 3 == 0)
        await _bulk(conn, "sh", range(1, 601), shards=4, revoked=lambda s: s % 3 == 0)
        await _bulk(conn, "mixed", range(1, 601), shards=4, revoked=lambda s: s % 3 == 0,
                    without_shard=lambda s: s % 5 == 0)
        await _bulk(conn, "late", range(1, 601), shards=4, revoked=lambda s: s % 5 == 0,
                    without_shard=lambda s: s % 5 == 0)
        await conn.execute("VACUUM (ANALYZE) certificates")

    # While the round reads its entries, another session revokes a good certificate of every
    # issuer (in a shard where there is one) and commits.
    during = {"flat": 1, "sh": 2, "mixed": 7, "late": 11}
    done: list[str] = []

    def revoking(read: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not done:
                done.append("yes")
                async with clean_db.acquire() as other:
                    for name, serial in during.items():
                        status = await other.execute(
                            "UPDATE certificates c SET status = 'revoked', revoked_at = $3, "
                            "reason = 1, crl_entry = $4, change_seq = nextval('cert_change_seq')"
                            " FROM issuers i WHERE i.id = c.issuer_id AND i.name = $1 "
                            "AND c.serial = $2 AND c.status = 'good'", name,
                            integer_content(serial), START,
                            encode_crl_entry(serial, START, Reason.keyCompromise))
                        assert status == "UPDATE 1"
            return await read(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(issuer_round, "_stream_entries",
                        revoking(issuer_round._stream_entries))
    monkeypatch.setattr(issuer_round, "stream_shard_entries",
                        revoking(issuer_round.stream_shard_entries))
    settings = settings_for(tmp_path)
    fixed = clock()
    report = await run_once(clean_db, settings, clock=fixed)
    assert report.ok and done
    scopes = {"flat": [UNSHARDED], "sh": [0, 1, 2, 3], "mixed": [UNSHARDED, 0, 1, 2, 3],
              "late": [UNSHARDED, 0, 1, 2, 3]}
    published = {(p.issuer, p.shard) for p in report.publications if p.kind == "full"}
    assert published == {(name, s) for name, shards in scopes.items() for s in shards}

    def path(name: str, shard: int) -> Path:
        return settings.crl_out / (f"{name}.crl" if shard == UNSHARDED
                                   else f"{name}/{shard}.crl")

    async with clean_db.acquire() as conn:
        for name, shards in scopes.items():
            for shard in shards:
                want = await _revoked(conn, name, shard)
                late = during[name]
                in_scope = shard == UNSHARDED or late % 4 == shard
                # This round's snapshot was taken before the revocation: not on its CRLs...
                assert _serials(path(name, shard)) == [s for s in want if s != late], (
                    name, shard)
                assert (late in want) == in_scope
    # ...and the next `revoc publish --once` puts it on every CRL of its scope.
    fixed.advance(timedelta(minutes=1))
    report = await run_once(clean_db, settings, clock=fixed)
    assert report.ok
    async with clean_db.acquire() as conn:
        for name, shards in scopes.items():
            for shard in shards:
                assert _serials(path(name, shard)) == await _revoked(conn, name, shard), (
                    name, shard)
    assert during["late"] in _serials(path("late", UNSHARDED))
    assert x509.load_der_x509_crl(path("sh", 2).read_bytes()).issuer is not None


@pytest.mark.parametrize("lines", [50, 3])
async def test_a_large_import_leaves_the_entries_readable_from_the_index_alone(
        clean_db: asyncpg.Pool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        lines: int) -> None:
    """`revoc cert import` of at least VACUUM_FROM_ROWS rows ends with VACUUM (ANALYZE): the
    first full CRL after it reads no heap page (hint bits and visibility map set); a smaller
    one leaves that to autovacuum."""
    from revoc import importer

    monkeypatch.setattr(importer, "VACUUM_FROM_ROWS", 10)
    index = tmp_path / "index.txt"
    index.write_text("".join(
        f"R\t300101000000Z\t250601000000Z,keyCompromise\t{serial:X}\tunknown\t/CN=c{serial}\n"
        for serial in range(1, lines + 1)))
    async with clean_db.acquire() as conn:
        await register_pki(conn, tmp_path / "imp", "imp")
        result = await importer.import_openssl_index(conn, "imp", index)
        assert result.vacuumed == (lines >= 10)
        async with conn.transaction():
            # A table this small is read sequentially: ask for the plan 20,000 rows get
            # (test_entries_and_scopes_are_read_from_indexes), to see what it would visit.
            await conn.execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off")
            nodes = await _explain(conn, queries()["crl_full_entries_unsharded"],
                                   await _issuer_id(conn, "imp"), NEVER)
    scans = [n for n in nodes if n.get("Relation Name") == "certificates"]
    assert [(n["Node Type"], n["Heap Fetches"] == 0, n["Actual Rows"]) for n in scans] == [
        ("Index Only Scan", lines >= 10, lines)]


async def test_shards_are_read_in_one_pass_after_a_bulk_change_until_vacuumed(
        clean_db: asyncpg.Pool, tmp_path: Path) -> None:
    """The statistics behind the choice (crl_certificates_churn) see rows written since the
    last VACUUM, of a plain table as of a partitioned one, and a VACUUM clears them."""
    async with clean_db.acquire() as conn:
        await register_pki(conn, tmp_path / "sh", "sh", shards=4)
        await conn.execute("VACUUM certificates")
        assert not await issuer_round.heap_churned(conn)
        await _bulk(conn, "sh", range(1, 20_001), shards=4, revoked=lambda s: s % 2 == 0)
        await conn.execute("SELECT pg_stat_force_next_flush()")  # at this statement's end
    deadline = asyncio.get_running_loop().time() + 30
    async with clean_db.acquire() as conn:
        while not await issuer_round.heap_churned(conn):
            assert asyncio.get_running_loop().time() < deadline, "statistics never arrived"
            await asyncio.sleep(0.05)  # polling the statistics collector, with a deadline
        churn = await conn.fetchval(queries()["crl_certificates_churn"])
        assert churn >= 20_000
        await conn.execute("VACUUM certificates")
        assert not await issuer_round.heap_churned(conn)
