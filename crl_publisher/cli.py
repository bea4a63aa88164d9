"""Subcommands this package adds to `revoc` (see revoc/cli.py): `revoc publish`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import asyncpg

from revoc.settings import Settings

EXIT_FAILURE = 1
# A round holds two connections, the LISTEN connection a third, the heartbeat a fourth.
POOL_SIZE = 6
# Errors of a database that is down or starting: waited out. Anything else at start (a schema
# that is not current, a refused login) is bad settings and ends the command.
UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError,
    asyncpg.AdminShutdownError)


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
    from revoc.cli import database_url, open_pool

    async def once(dsn: str) -> int:
        from crl_publisher.publisher import describe_failures
        from crl_publisher.scheduler import run_once

        pool = await open_pool(settings, dsn, max_size=POOL_SIZE)
        try:
            report = await run_once(pool, settings, force_full=args.force_full)
        finally:
            await pool.close()
        for line in describe_failures(report):
            sys.stderr.write(f"revoc: error: {line}\n")
        return 0 if report.ok else EXIT_FAILURE

    async def forever(dsn: str) -> int:
        from crl_publisher.scheduler import Backoff, FailureLog, run_forever

        # During an outage asyncpg's pool logs a traceback on each reconnection attempt; the
        # publisher's own one line per failure says it already.
        logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)
        # SIGTERM and SIGINT end the loop in order (the heartbeat row says "stopped").
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            # A database that is not up yet is waited for; bad settings (a schema that is not
            # current, a refused login) end the command at start.
            backoff, failures = Backoff(), FailureLog()
            while True:
                try:
                    pool = await open_pool(settings, dsn, max_size=POOL_SIZE)
                    break
                except UNREACHABLE as exc:
                    delay = backoff.next()
                    failures.failed(f"database unreachable ({type(exc).__name__}: {exc})",
                                    delay)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), timeout=delay)
                    if stop.is_set():
                        return 0
            try:
                await run_forever(pool, settings, force_full=args.force_full, stop=stop)
            finally:
                await pool.close()
            return 0
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    with database_url(settings) as dsn:
        code = asyncio.run(once(dsn) if args.once else forever(dsn))
    if code:
        raise SystemExit(code)
