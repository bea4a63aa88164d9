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

from revoc.settings import Settings

EXIT_FAILURE = 1
log = logging.getLogger("revoc")
# A round holds two connections, the LISTEN connection a third, the heartbeat a fourth.
POOL_SIZE = 6


def register(commands: argparse._SubParsersAction[Any]) -> None:
    """Add this package's subcommands; each sets `run(settings, args)` as its default."""
    from revoc.runtime import add_settings

    publish = commands.add_parser(
        "publish", help="build full and delta CRLs on a schedule",
        description="Publish full and delta CRLs (per shard for sharded issuers) into the "
        "database and as files under --out. With --once: one round, then exit 0, or 1 when an "
        "issuer failed (the reason on stderr).")
    publish.add_argument("--once", action="store_true", help="run one round and exit")
    publish.add_argument("--force-full", action="store_true",
                         help="re-sign every full CRL now instead of at its interval")
    publish.add_argument("--out", dest="setting_crl_out", type=Path, metavar="DIR",
                         help="directory the CRL files are written to (same as --crl-out; "
                         "default: $REVOC_HOME/crl; env REVOC_CRL_OUT)")
    add_settings(publish, "publish", "urls")
    publish.set_defaults(run=run_publish)


def run_publish(settings: Settings, args: argparse.Namespace) -> None:
    from crl_publisher.memory import keep_large_blocks_mapped
    from revoc.runtime import (
        UNREACHABLE,
        UsageError,
        close_pool,
        database_url,
        describe_database,
        open_pool,
        run_until_stopped,
    )
    from revoc.settings import format_duration, profile_problem

    keep_large_blocks_mapped()

    async def main(dsn: str) -> int:
        from crl_publisher.scheduler import Backoff, FailureLog

        # During an outage asyncpg's pool logs a traceback on each reconnection attempt; the
        # publisher's own one line per failure says it already.
        logging.getLogger("asyncpg.pool").setLevel(logging.ERROR)
        stop = asyncio.Event()
        received: list[int] = []

        def on_signal(signum: int) -> None:
            received.append(signum)
            stop.set()

        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        # The continuous mode waits for a database that is not up yet; bad settings (a schema
        # that is not current, a refused login) end the command at start, as does --once.
        backoff, failures = Backoff(), FailureLog()
        while True:
            try:
                pool = await open_pool(settings, dsn, max_size=POOL_SIZE)
                break
            except UNREACHABLE as exc:
                if args.once:
                    raise
                delay = backoff.next()
                failures.failed(f"database unreachable ({type(exc).__name__}: {exc})", delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                if stop.is_set():
                    for signum in (signal.SIGINT, signal.SIGTERM):
                        loop.remove_signal_handler(signum)
                    return 128 + received[0] if received else 0
        try:
            from revoc.admin import list_issuers

            async with pool.acquire() as conn:
                issuers = await list_issuers(conn)
            problem = profile_problem(settings, {i.profile.value for i in issuers})
            if problem:
                raise UsageError(problem)
            deltas = (f"delta every {format_duration(settings.crl_delta_interval)} (valid "
                      f"{format_duration(settings.crl_delta_validity)})"
                      + (" and on each revocation" if settings.crl_delta_on_change else "")
                      if settings.crl_delta_interval else "no deltas")
            log.info("revoc publish%s: publishing CRLs of %d issuer(s): full every %s (valid "
                     "%s), %s; files in %s, URLs under %s, rows in %s",
                     " --once" if args.once else "", len(issuers),
                     format_duration(settings.crl_full_interval),
                     format_duration(settings.crl_full_validity), deltas,
                     settings.crl_out.resolve(), settings.public_url,
                     describe_database(settings))
            if args.once:
                from crl_publisher.publisher import describe_failures
                from crl_publisher.scheduler import run_once

                finished, report = await run_until_stopped(
                    run_once(pool, settings, force_full=args.force_full), stop, grace=0)
                if not finished or report is None:
                    return 128 + received[0] if received else EXIT_FAILURE
                for line in describe_failures(report):
                    sys.stderr.write(f"revoc: error: {line}\n")
                return 0 if report.ok else EXIT_FAILURE
            from crl_publisher.scheduler import run_forever

            # Stops within STOP_GRACE_SECONDS (x2) of the signal even with a round stuck in
            # PostgreSQL (a commit waiting for a lost synchronous standby).
            await run_until_stopped(
                run_forever(pool, settings, force_full=args.force_full, stop=stop), stop)
            return 128 + received[0] if received else 0
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            await close_pool(pool)

    with database_url(settings) as dsn:
        code = asyncio.run(main(dsn))
    if code:
        raise SystemExit(code)
