"""Connection pool and schema migrations.

Migrations are plain ``sql/migrations/NNNN_name.sql`` files applied in name
order, each in its own transaction together with its row in
``schema_migrations``: a migration is either fully applied and recorded, or not
at all. A session advisory lock serializes upgrades, so several workers (or two
test processes) starting at once apply each migration exactly once.
Migrations stay PostgreSQL 15 compatible: CI runs 15, the embedded server 18.
"""

from __future__ import annotations

import contextlib
import re

import asyncpg

from revoc.queries import queries, sql_dir  # sql_dir re-exported: migrations live there too

__all__ = ["MigrationError", "create_pool", "migration_files", "sql_dir", "upgrade"]

_MIGRATION_NAME = re.compile(r"^(?P<number>\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(RuntimeError):
    """The migration files are inconsistent (bad name, duplicate number, no files)."""


def migration_files() -> list[tuple[str, str]]:
    """(name, sql) for every migration, sorted; the name is the file stem, e.g. ``0001_initial``.

    Two files with one number would apply in an order nobody chose, so that is
    an error, as is any ``.sql`` file whose name does not follow ``NNNN_name``.
    """
    directory = sql_dir() / "migrations"
    result: list[tuple[str, str]] = []
    numbers: dict[str, str] = {}
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise MigrationError(f"{path}: migration files are named NNNN_lower_snake.sql")
        number = match["number"]
        if number in numbers:
            raise MigrationError(
                f"migrations {numbers[number]} and {path.stem} share number {number}"
            )
        numbers[number] = path.stem
        result.append((path.stem, path.read_text(encoding="utf-8")))
    if not result:
        raise MigrationError(f"no migrations in {directory}")
    return result


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """An asyncpg pool; the caller (an app lifespan, a CLI command) closes it."""
    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size)


async def upgrade(conn: asyncpg.Connection) -> list[str]:
    """Apply the migrations this database lacks; return the names applied now.

    Idempotent. Other upgrades of the same database wait on the advisory lock,
    then find everything applied and return ``[]``. The lock is session-level
    (held across the per-migration transactions) and released in ``finally``;
    if the connection dies, the server drops it.
    """
    q = queries()
    migrations = migration_files()
    await conn.execute(q.migration_lock)
    try:
        await conn.execute(q.create_schema_migrations)
        applied = {row["version"] for row in await conn.fetch(q.schema_versions)}
        done: list[str] = []
        for name, sql in migrations:
            if name in applied:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(q.record_migration, name)
            done.append(name)
    except BaseException:
        # Keep the original error visible: on a broken connection the unlock
        # fails too, and the server releases the lock with the session anyway.
        with contextlib.suppress(Exception):
            await conn.execute(q.migration_unlock)
        raise
    await conn.execute(q.migration_unlock)
    return done


class SchemaNotCurrent(RuntimeError):
    """A database given by URL lacks migrations; the operator runs `revoc db upgrade`."""


async def pending_migrations(conn: asyncpg.Connection) -> list[str]:
    """Names of the migrations this database has not applied yet."""
    q = queries()
    done: set[str] = set()
    if await conn.fetchval(q.schema_table_exists):
        done = {row["version"] for row in await conn.fetch(q.schema_versions)}
    return [name for name, _sql in migration_files() if name not in done]


async def ensure_schema(conn: asyncpg.Connection, *, owned: bool) -> None:
    """Make sure the schema is current before a command uses it.

    An `owned` database (the embedded one revoc started itself) is upgraded in place; a
    database given by URL is only checked, because migrating shared infrastructure is the
    operator's decision.
    """
    if owned:
        await upgrade(conn)
        return
    pending = await pending_migrations(conn)
    if pending:
        raise SchemaNotCurrent(
            f"the database schema is not current ({len(pending)} migration(s) pending): "
            "run `revoc db upgrade`"
        )
