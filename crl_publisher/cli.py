"""Subcommands this package adds to `revoc` (see revoc/cli.py): `revoc publish`."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

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
    from revoc.cli import database_url, open_pool

    async def main(dsn: str) -> int:
        # A round holds two connections, the LISTEN connection a third, the heartbeat a fourth.
        pool = await open_pool(settings, dsn, max_size=6)
        try:
            if args.once:
                from crl_publisher.scheduler import run_once

                report = await run_once(pool, settings, force_full=args.force_full)
                for name, reason in sorted(report.failures.items()):
                    sys.stderr.write(f"revoc: error: issuer {name}: {reason}\n")
                return 0 if report.ok else EXIT_FAILURE
            from crl_publisher.scheduler import run_forever

            # SIGTERM and SIGINT end the loop in order (the heartbeat row says "stopped").
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            try:
                await run_forever(pool, settings, force_full=args.force_full, stop=stop)
            finally:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(signum)
            return 0
        finally:
            await pool.close()

    with database_url(settings) as dsn:
        code = asyncio.run(main(dsn))
    if code:
        raise SystemExit(code)
