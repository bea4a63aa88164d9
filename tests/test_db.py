"""Migrations against a real server, the schema the code relies on, and the query loader."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import pytest_asyncio

from revoc.db import migration_files, sql_dir, upgrade
from revoc.queries import Queries, QueryFileError, UnknownQueryError, queries

MIGRATIONS = [name for name, _ in migration_files()]

# Columns the code reads or writes; a migration that drops or renames one must
# update this list and the code together.
EXPECTED_COLUMNS = {
    "issuers": {
        "id", "name", "cert_der", "subject_der", "key_id",
        "name_sha1", "key_sha1", "name_sha256", "key_sha256",
        "name_sha384", "key_sha384", "name_sha512", "key_sha512",
        "key_path", "ocsp_cert_der", "ocsp_key_path", "crl_shards", "profile", "created_at",
    },
    "certificates": {
        "issuer_id", "serial", "not_after", "status", "revoked_at", "reason",
        "invalidity_date", "hold_released", "change_seq", "crl_entry", "crl_url", "shard",
        "created_at",
    },
    "ocsp_responses": {
        "issuer_id", "serial", "hash_alg", "der", "produced_at", "this_update",
        "next_update", "cert_change_seq", "certs_id",
    },
    "responder_certs": {"id", "certs_block", "created_at"},
    "crls": {
        "id", "issuer_id", "shard", "kind", "number", "base_number", "this_update",
        "next_update", "max_change_seq", "entries", "der", "sha256", "url", "created_at",
    },
    "schema_migrations": {"version", "applied_at"},
}  # fmt: skip


@pytest_asyncio.fixture(loop_scope="session")
async def empty_database(server_url: str) -> AsyncIterator[str]:
    """A brand-new database with no migrations, dropped afterwards."""
    name = f"revoc_test_empty_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield urlunsplit(urlsplit(server_url)._replace(path="/" + name))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def test_migration_files_are_found_in_order() -> None:
    assert sql_dir() == Path(__file__).resolve().parent.parent / "sql"
    assert MIGRATIONS[0] == "0001_initial"
    assert sorted(MIGRATIONS) == MIGRATIONS


async def test_upgrade_is_idempotent(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        assert await upgrade(conn) == []
        rows = await conn.fetch(queries().schema_versions)
    assert [row["version"] for row in rows] == MIGRATIONS


async def test_concurrent_upgrades_apply_each_migration_once(empty_database: str) -> None:
    first, second = await asyncio.gather(
        asyncpg.connect(empty_database), asyncpg.connect(empty_database)
    )
    try:
        applied = await asyncio.gather(upgrade(first), upgrade(second))
        # One of them did all the work, the other waited on the lock and found none.
        assert sorted(applied, key=len) == [[], MIGRATIONS]
        count = await first.fetchval("SELECT count(*) FROM schema_migrations")
        assert count == len(MIGRATIONS)
        assert await upgrade(first) == []
    finally:
        await asyncio.gather(first.close(), second.close())


async def test_schema_has_the_columns_the_code_expects(pool: asyncpg.Pool) -> None:
    rows = await pool.fetch(
        "SELECT table_name, column_name FROM information_schema.columns"
        " WHERE table_schema = current_schema() AND table_name = ANY($1::text[])",
        list(EXPECTED_COLUMNS),
    )
    found: dict[str, set[str]] = {}
    for row in rows:
        found.setdefault(row["table_name"], set()).add(row["column_name"])
    for table, columns in EXPECTED_COLUMNS.items():
        assert table in found, f"table {table} is missing"
        assert columns <= found[table], f"{table} lacks {sorted(columns - found[table])}"


async def test_status_lookup_uses_the_primary_key(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        # Enough rows, analyzed, that the planner has a real choice; all rolled back.
        transaction = conn.transaction()
        await transaction.start()
        try:
            issuer_id = await conn.fetchval(
                "INSERT INTO issuers (name, cert_der, subject_der, key_id, name_sha1, key_sha1,"
                " name_sha256, key_sha256, name_sha384, key_sha384, name_sha512, key_sha512)"
                " SELECT 'explain-ca', x, x, x, x, x, x, x, x, x, x, x FROM (SELECT '\\x00'::bytea)"
                " AS t(x) RETURNING id"
            )
            await conn.execute(
                "INSERT INTO certificates (issuer_id, serial, not_after)"
                " SELECT $1, '\\x01'::bytea || int8send(i), now() + interval '1 year'"
                " FROM generate_series(1, 5000) AS i",
                issuer_id,
            )
            await conn.execute("ANALYZE certificates")
            plan = await conn.fetch(
                "EXPLAIN SELECT status, revoked_at, reason FROM certificates"
                " WHERE issuer_id = $1 AND serial = $2",
                issuer_id,
                b"\x01" + (1234).to_bytes(8, "big"),
            )
        finally:
            await transaction.rollback()
    text = "\n".join(row[0] for row in plan)
    assert "certificates_pkey" in text, text
    assert "Seq Scan" not in text, text


# --------------------------------------------------------------------------- queries


def write(directory: Path, name: str, text: str) -> None:
    (directory / name).write_text(text)


def test_queries_load_named_blocks(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a.sql",
        "-- header comment\n\n-- name: first\n-- why it exists\nSELECT 1;\n\n"
        "-- name: second\nSELECT\n  2;\n",
    )
    loaded = Queries.load(tmp_path)
    assert dict(loaded) == {"first": "-- why it exists\nSELECT 1;", "second": "SELECT\n  2;"}
    assert loaded.second == loaded["second"]


def test_unknown_query_name_is_a_clear_key_error(tmp_path: Path) -> None:
    write(tmp_path, "a.sql", "-- name: first\nSELECT 1;\n")
    loaded = Queries.load(tmp_path)
    with pytest.raises(KeyError, match="no SQL query named 'nope'"):
        _ = loaded["nope"]
    with pytest.raises(UnknownQueryError):
        _ = loaded.nope
    assert not hasattr(loaded, "nope")


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"a.sql": "-- name: q\nSELECT 1;\n", "b.sql": "-- name: q\nSELECT 2;\n"}, "defined twice"),
        ({"a.sql": "-- name: q\nSELECT 1;\n-- name: q\nSELECT 2;\n"}, "defined twice"),
        ({"a.sql": "SELECT 0;\n-- name: q\nSELECT 1;\n"}, "before the first"),
        ({"a.sql": "-- name: q\n-- only a comment\n"}, "has no SQL"),
        ({"a.sql": "-- name: Bad-Name\nSELECT 1;\n"}, "lower_snake_case"),
    ],
)
def test_malformed_query_files_are_rejected(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    for name, text in files.items():
        write(tmp_path, name, text)
    with pytest.raises(QueryFileError, match=message):
        Queries.load(tmp_path)


async def test_project_queries_load_and_run(pool: asyncpg.Pool) -> None:
    versions = await pool.fetch(queries().schema_versions)
    assert [row["version"] for row in versions] == MIGRATIONS
