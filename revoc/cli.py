"""The `revoc` command: parses flags, loads settings, opens the database, runs one operation.

Exit status: 0 success, 1 an operation refused or failed (revoc.admin.AdminError: already
revoked, no such issuer, ...; the database; the address to serve on cannot be used), 2 bad
usage (unknown option, a malformed value: revoc.admin.InputError; one line on stderr, never a
traceback for a user mistake, never a password), 128 + the signal (130, 143) for a
long-running command stopped in order by SIGINT or SIGTERM.

Without a database URL every command uses the embedded server of --home, shared with every
other revoc process and started by whichever needs it first (revoc/embedded_pg.py).

This module composes the command line and is the only one that imports both applications
(responder/, crl_publisher/: they register `serve`, `presign`, `publish`). The database and admin
commands live in revoc/commands.py; what every command shares (settings flags, the database URL
or embedded server, the schema check, stop signals, exit-status errors) in revoc/runtime.py,
which the applications import instead of this module (tests/test_layering.py).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import asyncpg

from revoc import commands as cmd
from revoc import db
from revoc.admin import AdminError, InputError
from revoc.audit import DEFAULT_GRACE, DEFAULT_WORKER_THRESHOLD
from revoc.embedded_pg import EmbeddedPostgresError
from revoc.model import Profile, reason_names
from revoc.partition import PartitionError
from revoc.runtime import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    Interrupted,
    ListenError,
    UsageError,
    add_settings,
    check_listen,
    database_url,
    describe_database,
    flag_type,
)
from revoc.settings import SPECS, Settings, SettingsError, default_text, load_settings
from revoc.signing import SigningError

log = logging.getLogger("revoc")


class _OneLineErrors(logging.Filter):
    """asyncpg's pool logs a whole traceback each time it fails to reconnect during a database
    outage (e.g. while the embedded server restarts); one line with the error says as much."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = f"{record.getMessage()} ({type(exc).__name__}: {exc})"
            record.args = None
            record.exc_info = None
            record.exc_text = None
        return True


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (try: {self.prog} --help)\n")
        raise SystemExit(EXIT_USAGE)


def _count(text: str) -> int:
    """A decimal count: ASCII digits only (int() would also take '1_0', '+4' or ' 4')."""
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a decimal number")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="revoc", description="OCSP responder and CRL distribution service.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=_Parser)

    demo = commands.add_parser("demo", help="run a complete demo on an embedded database",
                               description="Start an embedded PostgreSQL, create a demo PKI "
                               "under --home, import it and say what was made.")
    add_settings(demo, "serve", "presign", "publish", "urls")
    demo.set_defaults(run=_run_demo)

    database = commands.add_parser("db", help="database schema and the embedded server")
    db_commands = database.add_subparsers(dest="db_command", metavar="ACTION", required=True,
                                          parser_class=_Parser)
    upgrade = db_commands.add_parser("upgrade", help="create or migrate the schema (idempotent)")
    add_settings(upgrade, "partition")
    upgrade.set_defaults(run=cmd.run_db_upgrade)
    part = db_commands.add_parser(
        "partition", help="hash-partition the per-certificate tables by (issuer, serial)",
        description="Convert certificates, ocsp_responses and ocsp_pending into tables "
        "partitioned by hash of (issuer_id, serial), COUNT partitions each, in one transaction "
        "(writers wait for it). Indexes, constraints, triggers, foreign keys, views, grants and "
        "owners are re-created from the catalog. Refused if already partitioned.")
    part.add_argument("--count", type=int, required=True, metavar="COUNT",
                      help="partitions per table (2 to 1024)")
    add_settings(part)
    part.set_defaults(run=cmd.run_db_partition)
    start = db_commands.add_parser(
        "start", help="start the embedded PostgreSQL in the background",
        description="Start the embedded PostgreSQL of --home (if it does not run yet) under a "
        "supervisor that outlives this command, and say how to reach it. Any command that needs "
        "it starts it too; every revoc process using --home shares it.")
    add_settings(start)
    start.set_defaults(run=cmd.run_db_start)
    stop = db_commands.add_parser("stop", help="stop the embedded PostgreSQL",
                                  description="Stop the embedded PostgreSQL of --home in order. "
                                  "Running services keep retrying until a command starts it "
                                  "again.")
    _add_db_location(stop)
    stop.set_defaults(run=cmd.run_db_stop)
    status = db_commands.add_parser(
        "status", help="whether the embedded PostgreSQL runs, its pid and DSN",
        description="Say whether the embedded PostgreSQL of --home runs, its pids and a DSN to "
        "reach it (the password stays in the 0600 file the DSN names). Exit 0 when it runs, "
        "1 when not.")
    _add_db_location(status)
    status.set_defaults(run=cmd.run_db_status)

    issuer = commands.add_parser("issuer", help="register issuing CAs")
    issuer_commands = issuer.add_subparsers(dest="issuer_command", metavar="ACTION",
                                            required=True, parser_class=_Parser)
    add = issuer_commands.add_parser(
        "add", help="register an issuing CA and its signing keys",
        description="Register an issuing CA. --key is the CA's key (signs CRLs, and OCSP "
        "unless a delegated responder is given). Keys stay in files or an HSM; only paths and "
        "pkcs11: URIs are stored (the HSM PIN comes from REVOC_PKCS11_PIN or "
        "REVOC_PKCS11_PIN_FILE, the module from REVOC_PKCS11_MODULE).")
    add.add_argument("--name", required=True, help="short name used in CRL URLs")
    add.add_argument("--cert", required=True, help="the CA certificate (PEM or DER)")
    add.add_argument("--key", help="the CA's private key (PEM, mode 0600, or a pkcs11: URI; "
                     "default: none, then CRLs are signed elsewhere)")
    add.add_argument("--ocsp-cert", help="delegated OCSP responder certificate (default: none, "
                     "the CA signs OCSP)")
    add.add_argument("--ocsp-key", help="delegated OCSP responder key (PEM, mode 0600, or a "
                     "pkcs11: URI; default: none)")
    add.add_argument("--crl-shards", type=_count, default=0, metavar="K",
                     help="partition CRLs into K shards (default: 0, one CRL)")
    add.add_argument("--profile", choices=[p.value for p in Profile], default="private",
                     help="br: CA/B Forum Baseline Requirements (no holds, fewer reasons) "
                     "(default: private)")
    add.add_argument("--replace", action="store_true", help="update an existing issuer")
    add_settings(add)
    add.set_defaults(run=cmd.run_issuer_add)
    listing = issuer_commands.add_parser("list", help="show registered issuers")
    add_settings(listing)
    listing.set_defaults(run=cmd.run_issuer_list)

    cert = commands.add_parser("cert", help="record, import, revoke and release certificates")
    cert_commands = cert.add_subparsers(dest="cert_command", metavar="ACTION", required=True,
                                        parser_class=_Parser)
    cert_add = cert_commands.add_parser("add", help="record issued certificates (status good)")
    cert_add.add_argument("--issuer", required=True, help="registered issuer name (required)")
    cert_add.add_argument("certs", nargs="+", metavar="CERT.pem",
                          help="issued certificates (PEM or DER)")
    add_settings(cert_add)
    cert_add.set_defaults(run=cmd.run_cert_add)

    cert_import = cert_commands.add_parser("import", help="bulk import an OpenSSL CA database")
    cert_import.add_argument("--issuer", required=True, help="registered issuer name (required)")
    cert_import.add_argument("--openssl-index", required=True, type=Path, metavar="index.txt",
                             help="the CA database of `openssl ca` (required)")
    add_settings(cert_import)
    cert_import.set_defaults(run=cmd.run_cert_import)

    revoke = cert_commands.add_parser("revoke", help="revoke a certificate")
    revoke.add_argument("--issuer", required=True, help="registered issuer name (required)")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("--serial", metavar="HEX",
                       help="certificate serial number in hex (default: none; this or "
                       "--serials-file)")
    which.add_argument("--serials-file", metavar="FILE",
                       help="revoke every serial in FILE (one hex serial a line, '-' for "
                       "stdin) in one transaction; all or nothing (default: none)")
    revoke.add_argument("--reason", required=True, metavar="R",
                        help=f"RFC 5280 reason: {reason_names()}")
    revoke.add_argument("--revoked-at", metavar="ISO8601", help="when (default: now)")
    revoke.add_argument("--invalidity-date", metavar="ISO8601",
                        help="when the key is known or suspected to have been compromised "
                        "(default: none)")
    add_settings(revoke)
    revoke.set_defaults(run=cmd.run_cert_revoke)

    release = cert_commands.add_parser("unhold", help="release a certificateHold")
    release.add_argument("--issuer", required=True, help="registered issuer name (required)")
    release.add_argument("--serial", required=True, metavar="HEX",
                         help="certificate serial number in hex (required)")
    add_settings(release)
    release.set_defaults(run=cmd.run_cert_unhold)

    shard = cert_commands.add_parser(
        "shard", help="print the CRL distribution point URL for a new serial",
        description="For a sharded issuer: the CRL URL a CA should write into the certificate "
        "with this serial (shard = serial mod K, the rule index.txt imports use too).")
    shard.add_argument("--issuer", required=True, help="registered issuer name (required)")
    shard.add_argument("--serial", required=True, metavar="HEX",
                       help="certificate serial number in hex (required)")
    add_settings(shard, "urls")
    shard.set_defaults(run=cmd.run_cert_shard)

    audit_parser = commands.add_parser(
        "audit", help="check that every revocation is visible in OCSP and CRLs",
        description="Check, in one database snapshot, that every revoked certificate is on the "
        "CRLs of its scope and answered `revoked` by its pre-signed OCSP responses, that no "
        "response is older than its certificate's last change, and list quarantined or "
        "implausible rows and dead workers. One line per finding on stdout, exit 1 if any; "
        "exit 0 with a summary line when there is none.")
    audit_parser.add_argument("--grace", type=cmd.seconds, default=DEFAULT_GRACE,
                              metavar="DURATION",
                              help="a change younger than this is pending, not a finding "
                              f"(default {DEFAULT_GRACE:g}s; 90, 90s, 15m, 1h)")
    audit_parser.add_argument("--worker-threshold", type=cmd.seconds,
                              default=DEFAULT_WORKER_THRESHOLD, metavar="DURATION",
                              help="a worker kind without a heartbeat this recent is dead "
                              f"(default {DEFAULT_WORKER_THRESHOLD:g}s)")
    add_settings(audit_parser)
    audit_parser.set_defaults(run=cmd.run_audit)

    status = commands.add_parser(
        "status", help="workers' heartbeats, latest CRLs, presign backlog, quarantine",
        description="Print the workers' heartbeats, the latest CRL of every scope, the presign "
        "backlog and the quarantine counts. Exit 0, or 1 when the database is unreachable.")
    status.add_argument("--json", action="store_true", help="JSON instead of tables")
    status.add_argument("--worker-threshold", type=cmd.seconds,
                        default=DEFAULT_WORKER_THRESHOLD, metavar="DURATION",
                        help="a worker silent this long is shown as silent "
                        f"(default {DEFAULT_WORKER_THRESHOLD:g}s)")
    add_settings(status)
    status.set_defaults(run=cmd.run_status)

    # The long-running services register their own commands (serve, presign, publish).
    from crl_publisher.cli import register as register_publisher
    from crl_publisher.crl_commands import register as register_crl
    from responder.cli import register as register_responder

    register_responder(commands)
    register_publisher(commands)
    from admin_api.cli import register as register_admin_api  # admin-api, token, audit-log
    register_admin_api(commands)

    register_crl(commands)
    return parser


def _add_db_location(parser: argparse.ArgumentParser) -> None:
    """`db stop` / `db status` only need to know where the server is."""
    section = parser.add_argument_group("settings (each also from REVOC_<NAME>; flags win)")
    for spec in SPECS:
        if spec.name in {"database_url", "home", "log_level"}:
            section.add_argument(spec.flag, dest=f"setting_{spec.name}", type=flag_type(spec),
                                 metavar=spec.metavar,
                                 help=f"{spec.help} (default: {default_text(spec)}; "
                                      f"env {spec.env})")


def _run_demo(settings: Settings, args: argparse.Namespace) -> None:
    default = Settings()
    if settings.public_url == default.public_url and settings.port != default.port:
        settings = dataclasses.replace(settings, public_url=f"http://{settings.host}:"
                                                          f"{settings.port}")
    check_listen(settings)
    # A server the demo started, it stops on the way out; one that ran already (`revoc db
    # start`, or other revoc processes) it leaves running.
    with database_url(settings, stop_if_started=True) as dsn:
        asyncio.run(_demo(settings, dsn))


async def _demo(settings: Settings, dsn: str) -> None:
    """Everything of `revoc demo` in one process: import, presign, publish, then serve while
    the presigner and the publisher keep running, until Ctrl-C."""
    import uvicorn

    from crl_publisher.publisher import publish_round
    from crl_publisher.scheduler import run_forever
    from responder.app import EmbeddedServer, create_app, uvicorn_options
    from responder.presign_loop import run_presigner
    from responder.presign_queue import presign_once
    from revoc.demo import check_commands, describe, import_demo, leaf_statuses

    pool = await db.create_pool(dsn, min_size=2, max_size=10)
    stop = asyncio.Event()
    background: list[asyncio.Task[None]] = []
    try:
        async with pool.acquire() as conn:
            pki = await import_demo(conn, settings)
        presigned = await presign_once(pool, settings)
        published = await publish_round(pool, settings)
        if not (presigned.ok and published.ok):
            raise UsageError("the demo could not sign its responses or CRLs; see the log above")
        options = uvicorn_options(settings) | {"log_level": "warning"}
        server = EmbeddedServer(uvicorn.Config(create_app(settings, pool=pool), **options))
        loop = asyncio.get_running_loop()

        received: list[int] = []

        def on_signal(signum: int) -> None:
            # Stop everything in order. Not uvicorn's force_exit on a second signal: it skips
            # the app's lifespan shutdown, whose LISTEN connection would then hold the pool open.
            received.append(signum)
            server.should_exit = True
            stop.set()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, on_signal, signum)
        background = [asyncio.create_task(run_presigner(pool, settings, stop=stop)),
                      asyncio.create_task(run_forever(pool, settings, stop=stop))]
        serving = asyncio.create_task(server.serve())
        while not server.started and not serving.done():  # noqa: ASYNC110 (uvicorn has no event)
            await asyncio.sleep(0.05)
        if serving.done():
            await serving
            return
        async with pool.acquire() as conn:
            statuses = await leaf_statuses(conn, pki)
        print(describe(pki, statuses))
        print(f"CRLs in {settings.crl_out.resolve()}, {describe_database(settings)}")
        if not settings.database_url:
            print(f"  (other shells: revoc commands with --home {settings.home} use it too; "
                  f"`revoc db status --home {settings.home}` shows how to reach it)")
        print(f"serving on {settings.public_url} (Ctrl-C stops everything)")
        print(check_commands(pki, settings, statuses), flush=True)
        await serving
        if received:
            raise Interrupted(received[0])
    finally:
        stop.set()
        if background:
            await asyncio.wait(background, timeout=15)
        try:  # a connection still checked out would make close() wait forever
            await asyncio.wait_for(pool.close(), timeout=10)
        except TimeoutError:
            pool.terminate()


# ---------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    flags = {key.removeprefix("setting_"): value for key, value in vars(args).items()
             if key.startswith("setting_")}
    try:
        settings = load_settings(os.environ, flags)
    except SettingsError as exc:
        return _fail(EXIT_USAGE, str(exc))
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("asyncpg.pool").addFilter(_OneLineErrors())
    try:
        args.run(settings, args)
    except (InputError, SigningError, UsageError, db.SchemaNotCurrent, PartitionError) as exc:
        return _fail(EXIT_USAGE, str(exc))
    except AdminError as exc:  # after InputError, its subclass
        return _fail(EXIT_FAILURE, str(exc))
    except asyncpg.ClientConfigurationError as exc:
        return _fail(EXIT_USAGE, f"database URL: {exc}")
    except ListenError as exc:
        return _fail(EXIT_FAILURE, str(exc))
    except EmbeddedPostgresError as exc:
        return _fail(EXIT_FAILURE, f"embedded PostgreSQL: {exc}")
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        return _fail(EXIT_FAILURE, f"{type(exc).__name__}: {exc}")
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except Interrupted as exc:
        return 128 + exc.signum
    return EXIT_OK


def _fail(code: int, message: str) -> int:
    sys.stderr.write(f"revoc: error: {message.splitlines()[0] if message else 'failed'}\n")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
