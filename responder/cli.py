"""Subcommands this package adds to `revoc` (see revoc/cli.py)."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from revoc.settings import Settings

log = logging.getLogger("revoc")


def register(commands: argparse._SubParsersAction[Any]) -> None:
    """Add this package's subcommands; each sets `run(settings, args)` as its default."""
    from revoc.runtime import add_settings

    serve = commands.add_parser(
        "serve", help="run the OCSP responder (HTTP)",
        description="Answer OCSP over HTTP (POST /ocsp, GET /ocsp/{base64}) from pre-signed "
        "responses, plus /healthz, /readyz and /metrics.")
    add_settings(serve, "serve", "serve_workers")
    serve.set_defaults(run=_run_serve)

    presign = commands.add_parser(
        "presign", help="pre-sign OCSP responses for every known certificate",
        description="Sign a response per certificate and CertID hash, re-sign each before "
        "refresh time, and at once on a revocation (LISTEN cert_changed, NOTIFY ocsp_changed).")
    presign.add_argument("--once", action="store_true",
                         help="sign queued changes and what is missing or due, then exit (1 if an "
                         "issuer failed or a row was quarantined)")
    add_settings(presign, "presign")
    presign.set_defaults(run=_run_presign)


def _run_presign(settings: Settings, args: argparse.Namespace) -> None:
    """`revoc presign`: one start-up line, then responder/presign_loop.py's command."""
    from responder.presign_loop import presign_command
    from revoc.runtime import describe_database
    from revoc.settings import format_duration

    log.info("revoc presign%s: pre-signing OCSP responses (%s CertIDs, valid %s, refreshed "
             "after %s, %d signing process(es)) for every issuer in %s",
             " --once" if args.once else "",
             ",".join(h.name.lower() for h in settings.ocsp_hashes),
             format_duration(settings.ocsp_validity), format_duration(settings.refresh_after),
             settings.presign_processes, describe_database(settings))
    presign_command(settings, args)


def _run_serve(settings: Settings, args: argparse.Namespace) -> None:
    """`revoc serve`: uvicorn with the responder app; an embedded database when no URL is set.

    The address is checked first (one line and a hint instead of uvicorn's exit), and a
    SIGINT/SIGTERM that stopped uvicorn in order ends the command with 130/143.
    """
    import asyncio
    import dataclasses

    from responder.app import serve
    from revoc.runtime import (
        UNREACHABLE,
        check_listen,
        check_schema,
        database_url,
        describe_database,
        exit_on_stop_signals,
    )

    check_listen(settings)
    with exit_on_stop_signals(), database_url(settings) as dsn:
        # The responder opens its own pool in the app's lifespan; here only migrate or check.
        # A database that cannot be reached now (down, or failing over) does not stop it: the
        # lifespan starts without it, answers tryLater and keeps trying (a responder restarted
        # during a failover must come up). A schema found not current still ends the command.
        try:
            asyncio.run(check_schema(settings, dsn))
        except UNREACHABLE as exc:
            log.warning("revoc serve: database unreachable at start (%s: %s); starting anyway, "
                        "the responder connects when it can", type(exc).__name__, exc)
        log.info("revoc serve: answering OCSP (POST /ocsp, GET /ocsp/...) and CRLs (/crl/...) on "
                 "http://%s:%d with %d worker(s), %s, from %s", settings.host, settings.port,
                 settings.workers, "live signing on" if settings.live_signing
                 else "pre-signed answers only", describe_database(settings))
        serve(dataclasses.replace(settings, database_url=dsn))
