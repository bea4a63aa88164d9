"""Subcommands this package adds to `revoc` (hooked in revoc/cli.py): `admin-api`, `token`
and `audit-log`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from typing import Any

import asyncpg

from revoc.settings import Settings

log = logging.getLogger("revoc")


def register(commands: argparse._SubParsersAction[Any]) -> None:
    """Add this package's subcommands; each sets `run(settings, args)` as its default."""
    from revoc.runtime import add_settings as _add_settings

    api = commands.add_parser(
        "admin-api", help="serve the authenticated admin API (JSON over HTTP)",
        description="Serve the admin API (revoke, unhold, add certificates, status, issuers, "
        "recent changes, audit trail) on its own listener. Every call needs a bearer token "
        "from `revoc token create`; GET /openapi.json describes it.")
    api.add_argument("--host", dest="setting_admin_host", metavar="H",
                     help="address to listen on (default: 127.0.0.1; env REVOC_ADMIN_HOST)")
    api.add_argument("--port", dest="setting_admin_port", metavar="P", type=_port,
                     help="TCP port (default: 8081; env REVOC_ADMIN_PORT)")
    _add_settings(api, "admin_api")
    api.set_defaults(run=_run_admin_api)

    token = commands.add_parser("token", help="bearer tokens of the admin API")
    token_commands = token.add_subparsers(dest="token_command", metavar="ACTION",
                                          required=True, parser_class=type(token))
    create = token_commands.add_parser(
        "create", help="make a token and print it once",
        description="Make a bearer token for the admin API and print it once on stdout; only "
        "its SHA-256 is stored. Scopes: read (status, issuers, changes, audit), revoke (also "
        "revoke and unhold), admin (also add certificates).")
    create.add_argument("--name", required=True, help="who uses it (shown in the audit trail)")
    create.add_argument("--scope", required=True, choices=["read", "revoke", "admin"],
                        help="what it may do")
    _add_settings(create)
    create.set_defaults(run=_run_token_create)
    listing = token_commands.add_parser("list", help="the tokens (never their secrets)")
    listing.add_argument("--all", action="store_true", help="withdrawn tokens too")
    _add_settings(listing)
    listing.set_defaults(run=_run_token_list)
    withdraw = token_commands.add_parser("revoke", help="withdraw a token at once")
    withdraw.add_argument("--name", required=True, help="the token's name")
    _add_settings(withdraw)
    withdraw.set_defaults(run=_run_token_revoke)

    trail = commands.add_parser(
        "audit-log", help="the audit trail of every change, newest first",
        description="Print the audit trail (who, from where, what, before and after, when), "
        "newest first, one tab-separated line a change (--json: a JSON array).")
    trail.add_argument("--issuer", help="only this issuer (default: all)")
    trail.add_argument("--serial", metavar="HEX", help="only this serial (default: all)")
    trail.add_argument("--actor", help="only this token name or OS user (default: all)")
    trail.add_argument("--since", metavar="ISO8601", help="only changes at or after this "
                       "time (default: all)")
    trail.add_argument("--limit", type=_limit, default=100, metavar="N",
                       help="at most N entries (default: 100)")
    trail.add_argument("--json", action="store_true", help="JSON instead of lines")
    _add_settings(trail)
    trail.set_defaults(run=_run_audit_log)


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port from 1 to 65535")
    return int(text)


def _limit(text: str) -> int:
    from revoc.audit_trail import MAX_LIMIT

    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number from 1 to {MAX_LIMIT}")
    return int(text)


def _run_admin_api(settings: Settings, args: argparse.Namespace) -> None:
    import asyncio

    import uvicorn

    from admin_api.app import create_app, uvicorn_options
    from revoc.runtime import (
        check_listen,
        check_schema,
        database_url,
        describe_database,
        exit_on_stop_signals,
    )

    check_listen(dataclasses.replace(settings, host=settings.admin_host,
                                     port=settings.admin_port))
    scheme = "https" if settings.admin_tls_cert else "http"
    with exit_on_stop_signals(), database_url(settings) as dsn:
        asyncio.run(check_schema(settings, dsn))
        log.info("revoc admin-api: serving the admin API on %s://%s:%d%s, from %s", scheme,
                 settings.admin_host, settings.admin_port,
                 " (client certificates required)" if settings.admin_tls_client_ca else "",
                 describe_database(settings))
        settings = dataclasses.replace(settings, database_url=dsn)
        uvicorn.run(create_app(settings), **uvicorn_options(settings))


def _in_session(settings: Settings, operation: Any) -> Any:
    from revoc.commands import _in_session as session

    return session(settings, operation)


def _run_token_create(settings: Settings, args: argparse.Namespace) -> None:
    from revoc.tokens import Scope, create_token

    async def run(conn: asyncpg.Connection) -> str:
        return await create_token(conn, args.name, Scope[args.scope])

    token = _in_session(settings, run)
    print(token)
    sys.stderr.write(f"revoc: token {args.name!r} (scope {args.scope}) created; it is shown "
                     "only now: keep it secret\n")


def _run_token_list(settings: Settings, args: argparse.Namespace) -> None:
    from revoc.tokens import list_tokens

    async def run(conn: asyncpg.Connection) -> Any:
        return await list_tokens(conn, include_revoked=args.all)

    for token in _in_session(settings, run):
        state = (f"revoked {token.revoked_at.isoformat(timespec='seconds')}"
                 if token.revoked_at else "live")
        print(f"{token.name}\tscope={token.scope}\tcreated="
              f"{token.created_at.isoformat(timespec='seconds')}\tby={token.created_by}\t{state}")


def _run_token_revoke(settings: Settings, args: argparse.Namespace) -> None:
    from revoc.tokens import revoke_token

    async def run(conn: asyncpg.Connection) -> None:
        await revoke_token(conn, args.name)

    _in_session(settings, run)
    print(f"token {args.name!r} withdrawn")


def _run_audit_log(settings: Settings, args: argparse.Namespace) -> None:
    from revoc import admin
    from revoc.audit_trail import AuditFilter, format_entry, list_entries

    wanted = AuditFilter(
        issuer=args.issuer,
        serial=(admin.serial_hex(admin.serial_octets(admin.parse_serial(args.serial)))
                if args.serial else None),
        actor=args.actor,
        since=admin.parse_time(args.since, "--since") if args.since else None,
        limit=args.limit)

    async def run(conn: asyncpg.Connection) -> Any:
        return await list_entries(conn, wanted)

    entries = _in_session(settings, run)
    if args.json:
        print(json.dumps(entries, indent=2))
        return
    for entry in entries:
        print(format_entry(entry))
