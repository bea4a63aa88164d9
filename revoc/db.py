"""Connections, the pool and schema migrations.

Connections (`connect`, and every pool's) go host by host through a multi-host DSN, each host
with its own timeout (`connect_timeout` in the DSN, seconds, as in libpq; 5 s by default when
there are several hosts): asyncpg alone spends its whole connect timeout on a first host that
hangs (a crashed or frozen machine) and never tries the next, which would stall every revoc
process through a failover. `target_session_attrs` is checked on each host as asyncpg does.

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
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from revoc.queries import queries, sql_dir  # sql_dir re-exported: migrations live there too

__all__ = ["MigrationError", "NoUsableHost", "connect", "create_pool", "migration_files", "sql_dir",
           "upgrade"]

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


# Per-host connect timeout when a DSN names several hosts and sets no connect_timeout.
HOST_CONNECT_TIMEOUT = 5.0


def dsn_hosts(dsn: str) -> tuple[list[str], float | None, str]:
    """(the hosts of a URL DSN as `host[:port]`, its connect_timeout, the DSN without it).
    A DSN that is not a postgres URL (keywords, a bare name) comes back with no hosts."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgres", "postgresql"):
        return [], None, dsn
    query = parse_qsl(parts.query, keep_blank_values=True)
    timeouts = [value for key, value in query if key == "connect_timeout"]
    rest = urlencode([(key, value) for key, value in query if key != "connect_timeout"])
    hosts = parts.netloc.rpartition("@")[2]
    timeout = float(timeouts[-1]) if timeouts and float(timeouts[-1]) > 0 else None
    return ([h for h in hosts.split(",") if h],
            timeout, urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment)))


def _with_host(dsn: str, host: str) -> str:
    parts = urlsplit(dsn)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@{host}" if user else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class NoUsableHost(ConnectionError):
    """Every host of a multi-host DSN is down, hung, starting or not writable (a failover in
    progress): a connection error like any other, waited out by the daemons."""


class HostOrder:
    """The hosts of one DSN in the order to try them: as written, except that a host that
    failed, timed out or was given up on (a pool acquire that timed out cancels the attempt)
    goes last, so the next attempt starts with the others. One per pool."""

    def __init__(self, dsn: str) -> None:
        self.hosts, self.timeout, self.base = dsn_hosts(dsn)

    async def connect(self, *, host_timeout: float | None = None,
                      **kwargs: Any) -> asyncpg.Connection:
        if len(self.hosts) <= 1:
            conn: asyncpg.Connection = await asyncpg.connect(
                self.base, timeout=host_timeout or self.timeout or 60.0, **kwargs)
            return conn
        per_host = host_timeout or self.timeout or HOST_CONNECT_TIMEOUT
        failures: list[tuple[str, Exception]] = []
        for host in list(self.hosts):
            done = False
            try:
                conn = await asyncpg.connect(_with_host(self.base, host), timeout=per_host,
                                             **kwargs)
                done = True
                return conn
            except Exception as exc:  # as libpq: any failure of one host moves on to the next
                failures.append((host, exc))
            finally:
                if not done and host in self.hosts:
                    self.hosts.remove(host)
                    self.hosts.append(host)
        for _host, error in failures:  # bad settings (a refused login, no such database)
            if (isinstance(error, asyncpg.PostgresError)
                    and not isinstance(error, asyncpg.CannotConnectNowError)):
                raise error
        raise NoUsableHost("no host of the database URL is usable now: " + "; ".join(
            f"{host}: {type(error).__name__}: {error}" for host, error in failures)
        ) from failures[-1][1]


async def connect(dsn: str, *, host_timeout: float | None = None,
                  **kwargs: Any) -> asyncpg.Connection:
    """asyncpg.connect, host by host for a multi-host DSN (see the module docstring): the
    first host that accepts and matches target_session_attrs wins; the last error is raised
    when none does. `host_timeout` bounds each host (default: the DSN's connect_timeout, else
    HOST_CONNECT_TIMEOUT with several hosts, else asyncpg's 60 s)."""
    return await HostOrder(dsn).connect(host_timeout=host_timeout, **kwargs)


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """An asyncpg pool whose connections come from a `HostOrder` of its own; the caller (an
    app lifespan, a CLI command) closes it."""
    order = HostOrder(dsn)

    async def pool_connect(_dsn: str, **kwargs: Any) -> asyncpg.Connection:
        return await order.connect(**kwargs)

    return await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size,
                                     connect=pool_connect)


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
