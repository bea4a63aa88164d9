"""Throwaway databases on the session's server: created, migrated, dropped (shared helpers)."""

from __future__ import annotations

import secrets
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from revoc.db import upgrade


def with_database(dsn: str, database: str) -> str:
    """The same server DSN, pointing at another database (URL form only)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


async def create_migrated(server_url: str, prefix: str = "revoc_test") -> str:
    """Create `<prefix>_<hex>` on the server, apply every migration, return its DSN."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    dsn = with_database(server_url, name)
    conn = await asyncpg.connect(dsn)
    try:
        await upgrade(conn)
    finally:
        await conn.close()
    return dsn


async def drop(server_url: str, dsn: str) -> None:
    """Drop the database of `dsn`; FORCE (PG13+) ends sessions a test leaked."""
    name = urlsplit(dsn).path.lstrip("/")
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
