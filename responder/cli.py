"""Subcommands this package adds to `revoc` (see revoc/cli.py)."""

from __future__ import annotations

import argparse
from typing import Any


def register(commands: argparse._SubParsersAction[Any]) -> None:
    """Add this package's subcommands; each sets `run(settings, args)` as its default."""
    from revoc.cli import _add_settings

    serve = commands.add_parser(
        "serve", help="run the OCSP responder (HTTP)",
        description="Answer OCSP over HTTP (POST /ocsp, GET /ocsp/{base64}) from pre-signed "
        "responses, plus /healthz, /readyz and /metrics.")
    _add_settings(serve, "serve")
    serve.set_defaults(run=_run_serve)

    from responder.presign_loop import presign_command

    presign = commands.add_parser(
        "presign", help="pre-sign OCSP responses for every known certificate",
        description="Sign a response per certificate and CertID hash, re-sign each before "
        "refresh time, and at once on a revocation (LISTEN cert_changed, NOTIFY ocsp_changed).")
    presign.add_argument("--once", action="store_true",
                         help="sign queued changes and what is missing or due, then exit (1 if an "
                         "issuer failed or a row was quarantined)")
    _add_settings(presign, "presign")
    presign.set_defaults(run=presign_command)


def _run_serve(settings: Any, args: argparse.Namespace) -> None:
    """`revoc serve`: uvicorn with the responder app; an embedded database when no URL is set."""
    import asyncio
    import dataclasses

    from responder.app import serve
    from revoc.cli import check_schema, database_url

    with database_url(settings) as dsn:
        # The responder opens its own pool in the app's lifespan; here only migrate or check.
        asyncio.run(check_schema(settings, dsn))
        serve(dataclasses.replace(settings, database_url=dsn))
