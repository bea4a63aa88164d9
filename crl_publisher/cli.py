"""Subcommands this package adds to `revoc` (see revoc/cli.py): `revoc publish`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import asyncpg

from revoc.settings import Settings

EXIT_FAILURE = 1


def register(commands: argparse._SubParsersAction[Any]) -> None:
    """Add this package's subcommands; each sets `run(settings, args)` as its default."""
    from revoc.cli import _add_settings  # the shared flag builder; imported late (no cycle)

    publish = commands.add_parser(
        "publish", help="build full and delta CRLs on a schedule",
        description="Publish full and delta CRLs (per shard for sharded issuers) into the "
        "database and as files under --out. With --once: one round, then exit 0, or 1 when an "
        "issuer failed (the reason on stderr).")
    publish.add_argument("--once", action="store_true", help="run one round and exit")
    publish.add_argument("--force-full", action="store_true",
                         help="re-sign every full CRL now instead of at its interval")
    publish.add_argument("--out", dest="setting_crl_out", type=Path, metavar="DIR",
                         help="directory the CRL files are written to (same as --crl-out)")
    _add_settings(publish, "publish")
    publish.set_defaults(run=run_publish)


def run_publish(settings: Settings, args: argparse.Namespace) -> None:
    from revoc.cli import UsageError, database_url

    async def main(dsn: str) -> int:
        pool = await _open_pool(settings, dsn, UsageError)
        try:
            if args.once:
                from crl_publisher.scheduler import run_once

                report = await run_once(pool, settings, force_full=args.force_full)
                for name, reason in sorted(report.failures.items()):
                    sys.stderr.write(f"revoc: error: issuer {name}: {reason}\n")
                return 0 if report.ok else EXIT_FAILURE
            from crl_publisher.scheduler import run_forever

            await run_forever(pool, settings, force_full=args.force_full)
            return 0
        finally:
            await pool.close()

    with database_url(settings) as dsn:
        code = asyncio.run(main(dsn))
    if code:
        raise SystemExit(code)


async def _open_pool(settings: Settings, dsn: str, usage_error: type[Exception]) -> asyncpg.Pool:
    """A pool on a current schema: the embedded database is migrated, a given one is checked."""
    from revoc import db
    from revoc.queries import queries

    pool: asyncpg.Pool = await db.create_pool(dsn, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        if settings.database_url is None:
            await db.upgrade(conn)
            return pool
        try:
            done = {row["version"] for row in await conn.fetch(queries()["schema_versions"])}
        except asyncpg.UndefinedTableError:
            done = set()
    pending = [name for name, _sql in db.migration_files() if name not in done]
    if pending:
        await pool.close()
        raise usage_error(f"the database schema is not current ({len(pending)} migration(s) "
                          "pending): run `revoc db upgrade`")
    return pool
