"""The `revoc` command: parses flags, loads settings, opens the database, runs one operation.

Exit status: 0 success, 1 an operation refused or failed (revoc.admin.AdminError: already
revoked, no such issuer, ...; the database; the address to serve on cannot be used), 2 bad
usage (unknown option, a malformed value: revoc.admin.InputError; one line on stderr, never a
traceback for a user mistake, never a password), 128 + the signal (130, 143) for a
long-running command stopped in order by SIGINT or SIGTERM.

Without a database URL every command uses the embedded server of --home, shared with every
other revoc process and started by whichever needs it first (revoc/embedded_pg.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import asyncpg

from revoc import admin, db
from revoc.admin import AdminError, InputError
from revoc.audit import DEFAULT_GRACE, DEFAULT_WORKER_THRESHOLD, AuditReport, audit, database_now
from revoc.embedded_pg import (
    EmbeddedPostgresError,
    Running,
    ServerOptions,
    Watchdog,
    ensure_server,
    find_server,
    stop_server,
)
from revoc.model import Profile, Reason, reason_names
from revoc.settings import (
    SPECS,
    Settings,
    SettingsError,
    Spec,
    default_text,
    load_settings,
    parse_duration,
    redact_dsn,
)
from revoc.signing import SigningError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
T = TypeVar("T")
log = logging.getLogger("revoc")


class UsageError(Exception):
    """Bad usage found after parsing: exit 2 with this one line."""


class ListenError(Exception):
    """The address to serve on cannot be used (taken port, unknown host): exit 1, one line."""


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


def _flag_type(spec: Spec) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return spec.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None

    parse.__name__ = spec.name
    return parse


def _count(text: str) -> int:
    """A decimal count: ASCII digits only (int() would also take '1_0', '+4' or ' 4')."""
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a decimal number")
    return int(text)


def _add_settings(parser: argparse.ArgumentParser, *groups: str, database: bool = True) -> None:
    """The settings flags of `groups` (plus log level, and the database's unless told not to);
    only settings the command uses, each with its default and environment variable."""
    wanted = {"global", *groups, *(("db", "embedded") if database else ())}
    section = parser.add_argument_group("settings (each also from REVOC_<NAME>; flags win)")
    for spec in SPECS:
        if wanted.intersection(spec.groups):
            section.add_argument(spec.flag, dest=f"setting_{spec.name}", type=_flag_type(spec),
                                 metavar=spec.metavar,
                                 help=f"{spec.help} (default: {default_text(spec)}; "
                                      f"env {spec.env})")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="revoc", description="OCSP responder and CRL distribution service.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=_Parser)

    demo = commands.add_parser("demo", help="run a complete demo on an embedded database",
                               description="Start an embedded PostgreSQL, create a demo PKI "
                               "under --home, import it and say what was made.")
    _add_settings(demo, "serve", "presign", "publish", "urls")
    demo.set_defaults(run=_run_demo)

    database = commands.add_parser("db", help="database schema and the embedded server")
    db_commands = database.add_subparsers(dest="db_command", metavar="ACTION", required=True,
                                          parser_class=_Parser)
    upgrade = db_commands.add_parser("upgrade", help="create or migrate the schema (idempotent)")
    _add_settings(upgrade)
    upgrade.set_defaults(run=_run_db_upgrade)
    start = db_commands.add_parser(
        "start", help="start the embedded PostgreSQL in the background",
        description="Start the embedded PostgreSQL of --home (if it does not run yet) under a "
        "supervisor that outlives this command, and say how to reach it. Any command that needs "
        "it starts it too; every revoc process using --home shares it.")
    _add_settings(start)
    start.set_defaults(run=_run_db_start)
    stop = db_commands.add_parser("stop", help="stop the embedded PostgreSQL",
                                  description="Stop the embedded PostgreSQL of --home in order. "
                                  "Running services keep retrying until a command starts it "
                                  "again.")
    _add_db_location(stop)
    stop.set_defaults(run=_run_db_stop)
    status = db_commands.add_parser(
        "status", help="whether the embedded PostgreSQL runs, its pid and DSN",
        description="Say whether the embedded PostgreSQL of --home runs, its pids and a DSN to "
        "reach it (the password stays in the 0600 file the DSN names). Exit 0 when it runs, "
        "1 when not.")
    _add_db_location(status)
    status.set_defaults(run=_run_db_status)

    issuer = commands.add_parser("issuer", help="register issuing CAs")
    issuer_commands = issuer.add_subparsers(dest="issuer_command", metavar="ACTION",
                                            required=True, parser_class=_Parser)
    add = issuer_commands.add_parser(
        "add", help="register an issuing CA and its signing keys",
        description="Register an issuing CA. --key is the CA's key (signs CRLs, and OCSP "
        "unless a delegated responder is given). Keys stay in files; only paths are stored.")
    add.add_argument("--name", required=True, help="short name used in CRL URLs")
    add.add_argument("--cert", required=True, help="the CA certificate (PEM or DER)")
    add.add_argument("--key", help="the CA's private key (PEM, mode 0600, or a pkcs11: URI; "
                     "default: none, then CRLs are signed elsewhere)")
    add.add_argument("--ocsp-cert", help="delegated OCSP responder certificate (default: none, "
                     "the CA signs OCSP)")
    add.add_argument("--ocsp-key", help="delegated OCSP responder key (PEM, mode 0600; "
                     "default: none)")
    add.add_argument("--crl-shards", type=_count, default=0, metavar="K",
                     help="partition CRLs into K shards (default: 0, one CRL)")
    add.add_argument("--profile", choices=[p.value for p in Profile], default="private",
                     help="br: CA/B Forum Baseline Requirements (no holds, fewer reasons) "
                     "(default: private)")
    add.add_argument("--replace", action="store_true", help="update an existing issuer")
    _add_settings(add)
    add.set_defaults(run=_run_issuer_add)
    listing = issuer_commands.add_parser("list", help="show registered issuers")
    _add_settings(listing)
    listing.set_defaults(run=_run_issuer_list)

    cert = commands.add_parser("cert", help="record, import, revoke and release certificates")
    cert_commands = cert.add_subparsers(dest="cert_command", metavar="ACTION", required=True,
                                        parser_class=_Parser)
    cert_add = cert_commands.add_parser("add", help="record issued certificates (status good)")
    cert_add.add_argument("--issuer", required=True, help="registered issuer name (required)")
    cert_add.add_argument("certs", nargs="+", metavar="CERT.pem",
                          help="issued certificates (PEM or DER)")
    _add_settings(cert_add)
    cert_add.set_defaults(run=_run_cert_add)

    cert_import = cert_commands.add_parser("import", help="bulk import an OpenSSL CA database")
    cert_import.add_argument("--issuer", required=True, help="registered issuer name (required)")
    cert_import.add_argument("--openssl-index", required=True, type=Path, metavar="index.txt",
                             help="the CA database of `openssl ca` (required)")
    _add_settings(cert_import)
    cert_import.set_defaults(run=_run_cert_import)

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
    _add_settings(revoke)
    revoke.set_defaults(run=_run_cert_revoke)

    release = cert_commands.add_parser("unhold", help="release a certificateHold")
    release.add_argument("--issuer", required=True, help="registered issuer name (required)")
    release.add_argument("--serial", required=True, metavar="HEX",
                         help="certificate serial number in hex (required)")
    _add_settings(release)
    release.set_defaults(run=_run_cert_unhold)

    shard = cert_commands.add_parser(
        "shard", help="print the CRL distribution point URL for a new serial",
        description="For a sharded issuer: the CRL URL a CA should write into the certificate "
        "with this serial (shard = serial mod K, the rule index.txt imports use too).")
    shard.add_argument("--issuer", required=True, help="registered issuer name (required)")
    shard.add_argument("--serial", required=True, metavar="HEX",
                       help="certificate serial number in hex (required)")
    _add_settings(shard, "urls")
    shard.set_defaults(run=_run_cert_shard)

    audit_parser = commands.add_parser(
        "audit", help="check that every revocation is visible in OCSP and CRLs",
        description="Check, in one database snapshot, that every revoked certificate is on the "
        "CRLs of its scope and answered `revoked` by its pre-signed OCSP responses, that no "
        "response is older than its certificate's last change, and list quarantined or "
        "implausible rows and dead workers. One line per finding on stdout, exit 1 if any; "
        "exit 0 with a summary line when there is none.")
    audit_parser.add_argument("--grace", type=_seconds, default=DEFAULT_GRACE,
                              metavar="DURATION",
                              help="a change younger than this is pending, not a finding "
                              f"(default {DEFAULT_GRACE:g}s; 90, 90s, 15m, 1h)")
    audit_parser.add_argument("--worker-threshold", type=_seconds,
                              default=DEFAULT_WORKER_THRESHOLD, metavar="DURATION",
                              help="a worker kind without a heartbeat this recent is dead "
                              f"(default {DEFAULT_WORKER_THRESHOLD:g}s)")
    _add_settings(audit_parser)
    audit_parser.set_defaults(run=_run_audit)

    status = commands.add_parser(
        "status", help="workers' heartbeats, latest CRLs, presign backlog, quarantine",
        description="Print the workers' heartbeats, the latest CRL of every scope, the presign "
        "backlog and the quarantine counts. Exit 0, or 1 when the database is unreachable.")
    status.add_argument("--json", action="store_true", help="JSON instead of tables")
    status.add_argument("--worker-threshold", type=_seconds, default=DEFAULT_WORKER_THRESHOLD,
                        metavar="DURATION", help="a worker silent this long is shown as silent "
                        f"(default {DEFAULT_WORKER_THRESHOLD:g}s)")
    _add_settings(status)
    status.set_defaults(run=_run_status)

    # The long-running services register their own commands (serve, presign, publish).
    from crl_publisher.cli import register as register_publisher
    from crl_publisher.crl_commands import register as register_crl
    from responder.cli import register as register_responder

    register_responder(commands)
    register_publisher(commands)
    register_crl(commands)
    return parser


def _add_db_location(parser: argparse.ArgumentParser) -> None:
    """`db stop` / `db status` only need to know where the server is."""
    section = parser.add_argument_group("settings (each also from REVOC_<NAME>; flags win)")
    for spec in SPECS:
        if spec.name in {"database_url", "home", "log_level"}:
            section.add_argument(spec.flag, dest=f"setting_{spec.name}", type=_flag_type(spec),
                                 metavar=spec.metavar,
                                 help=f"{spec.help} (default: {default_text(spec)}; "
                                      f"env {spec.env})")


# ---------------------------------------------------------------- database access


def embedded_options(settings: Settings) -> ServerOptions:
    """How to run the embedded server of --home (REVOC_HOME/pg)."""
    return ServerOptions(settings.home.resolve() / "pg", listen=settings.pg_listen,
                         server_user=settings.pg_user)


def _announce(message: str) -> None:
    sys.stderr.write(f"revoc: {message}\n")
    sys.stderr.flush()


def describe_database(settings: Settings) -> str:
    """Where the data lives, for start-up lines (no password)."""
    if settings.database_url:
        return f"database {redact_dsn(settings.database_url)}"
    return f"the embedded PostgreSQL in {settings.home.resolve() / 'pg'}"


@contextlib.contextmanager
def database_url(settings: Settings, *, stop_if_started: bool = False) -> Iterator[str]:
    """The configured DSN, or the DSN of the embedded server of --home, started if needed.

    The embedded server is shared by every revoc process using --home and outlives this block;
    while the block runs, a watchdog restarts it should its supervisor die (a command that ends
    within a second never gets to look). `stop_if_started`: stop it at the end when this call
    started it (`revoc demo`).
    """
    if settings.database_url:
        yield settings.database_url
        return
    options = embedded_options(settings)
    running = ensure_server(options, announce=_announce)
    try:
        with Watchdog(options):
            yield running.dsn
    finally:
        if stop_if_started and running.started:
            stop_server(options.base)


async def _connect(settings: Settings, dsn: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await asyncpg.connect(dsn)
    try:
        await db.ensure_schema(conn, owned=settings.database_url is None)
    except BaseException:
        await conn.close()
        raise
    return conn


async def check_schema(settings: Settings, dsn: str) -> None:
    """Migrate the embedded database, or check a given one is current (else SchemaNotCurrent)."""
    await (await _connect(settings, dsn)).close()


async def open_pool(settings: Settings, dsn: str, *, max_size: int = 4) -> asyncpg.Pool:
    """A pool on a current schema, for the long-running commands (presign, publish)."""
    await check_schema(settings, dsn)
    return await db.create_pool(dsn, min_size=1, max_size=max_size)


def _with_connection(
    operation: Callable[[Settings, argparse.Namespace, asyncpg.Connection], Awaitable[None]],
) -> Callable[[Settings, argparse.Namespace], None]:
    def run(settings: Settings, args: argparse.Namespace) -> None:
        async def session(dsn: str) -> None:
            conn = await _connect(settings, dsn)
            try:
                await operation(settings, args, conn)
            finally:
                await conn.close()

        with database_url(settings) as dsn:
            asyncio.run(session(dsn))

    return run


# ---------------------------------------------------------------- commands


def _no_database_url(settings: Settings, action: str) -> None:
    if settings.database_url:
        raise UsageError(f"REVOC_DATABASE_URL is set ({redact_dsn(settings.database_url)}): "
                         f"revoc uses that server and has no embedded one to {action}")


def _describe_running(running: Running) -> str:
    lines = [f"embedded PostgreSQL running in {running.base} (supervisor pid "
             f"{running.supervisor_pid}, postgres pid {running.postmaster_pid})",
             f"dsn: {running.dsn}"]
    if running.tcp_dsn:
        lines.append(f"tcp: {running.tcp_dsn}")
    lines.append(f"password: in {running.pgpass} (mode 0600); logs: {running.base}/"
                 f"postgres.log, {running.base}/supervisor.log")
    return "\n".join(lines)


def _run_db_start(settings: Settings, args: argparse.Namespace) -> None:
    _no_database_url(settings, "start")
    running = ensure_server(embedded_options(settings), announce=_announce)
    print(_describe_running(running) if running.started
          else "already running\n" + _describe_running(running))
    if not running.started and settings.pg_listen and running.tcp_host is None:
        print("note: it runs without TCP; REVOC_PG_LISTEN applies when it starts "
              "(`revoc db stop`, then `revoc db start`)")


def _run_db_stop(settings: Settings, args: argparse.Namespace) -> None:
    _no_database_url(settings, "stop")
    base = settings.home.resolve() / "pg"
    print(f"stopped the embedded PostgreSQL in {base}" if stop_server(base)
          else f"the embedded PostgreSQL in {base} was not running")


def _run_db_status(settings: Settings, args: argparse.Namespace) -> None:
    if settings.database_url:
        from revoc.embedded_pg import answers

        reachable = answers(settings.database_url)
        print(f"external server {redact_dsn(settings.database_url)}: "
              f"{'answers' if reachable else 'does not answer'}")
        if not reachable:
            raise SystemExit(EXIT_FAILURE)
        return
    base = settings.home.resolve() / "pg"
    running = find_server(base, wait=10.0)
    if running is None:
        print(f"the embedded PostgreSQL in {base} is not running (any command that needs it, "
              f"or `revoc db start`, starts it)")
        raise SystemExit(EXIT_FAILURE)
    print(_describe_running(running))


def _run_db_upgrade(settings: Settings, args: argparse.Namespace) -> None:
    async def upgrade(dsn: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            applied = await db.upgrade(conn)
        finally:
            await conn.close()
        print(f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}"
                                                          if applied else "; schema is current"))

    with database_url(settings) as dsn:
        asyncio.run(upgrade(dsn))


@_with_connection
async def _run_issuer_add(settings: Settings, args: argparse.Namespace,
                          conn: asyncpg.Connection) -> None:
    request = admin.IssuerRequest(
        name=args.name, cert_path=args.cert, key_path=args.key, ocsp_cert_path=args.ocsp_cert,
        ocsp_key_path=args.ocsp_key, crl_shards=args.crl_shards, profile=Profile(args.profile),
        replace=args.replace)
    issuer_id = await admin.add_issuer(conn, request)
    print(f"issuer {args.name} registered (id {issuer_id}, profile {args.profile}, "
          f"{'delegated OCSP responder' if args.ocsp_cert else 'CA signs OCSP'}, "
          f"{args.crl_shards or 'no'} CRL shards)")


@_with_connection
async def _run_issuer_list(settings: Settings, args: argparse.Namespace,
                           conn: asyncpg.Connection) -> None:
    for issuer in await admin.list_issuers(conn):
        print(f"{issuer.name}\tid={issuer.id}\tprofile={issuer.profile.value}\t"
              f"shards={issuer.crl_shards}\tcrl_key={'yes' if issuer.key_path else 'no'}\t"
              f"ocsp={'delegated' if issuer.ocsp_cert_der else 'ca'}")


@_with_connection
async def _run_cert_add(settings: Settings, args: argparse.Namespace,
                        conn: asyncpg.Connection) -> None:
    results = await admin.add_certificates(conn, args.issuer, args.certs)
    added = sum(r.added for r in results)
    print(f"{added} certificate(s) added, {len(results) - added} already known")


@_with_connection
async def _run_cert_import(settings: Settings, args: argparse.Namespace,
                           conn: asyncpg.Connection) -> None:
    from revoc.importer import import_openssl_index

    result = await import_openssl_index(conn, args.issuer, args.openssl_index)
    print(f"{result.lines} line(s) read: {result.inserted} certificate(s) added, "
          f"{result.updated} updated")
    if result.sharded:
        print("shards were assigned as serial mod K (no certificates to read distribution "
              "points from); `revoc cert shard` prints the URL for a serial")


@_with_connection
async def _run_cert_revoke(settings: Settings, args: argparse.Namespace,
                           conn: asyncpg.Connection) -> None:
    try:
        reason = Reason.from_name(args.reason)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if args.serials_file is not None:
        from revoc.mass_revoke import revoke_serials_file

        await revoke_serials_file(conn, args, reason)
        return
    request = admin.RevokeRequest(
        issuer=args.issuer, serial=admin.parse_serial(args.serial), reason=reason,
        revoked_at=admin.parse_time(args.revoked_at, "--revoked-at") if args.revoked_at else None,
        invalidity_date=(admin.parse_time(args.invalidity_date, "--invalidity-date")
                         if args.invalidity_date else None))
    await admin.revoke(conn, request)
    print(f"revoked serial {args.serial} of {args.issuer} ({reason.name})")


@_with_connection
async def _run_cert_unhold(settings: Settings, args: argparse.Namespace,
                           conn: asyncpg.Connection) -> None:
    await admin.unhold(conn, args.issuer, admin.parse_serial(args.serial))
    print(f"released the hold on serial {args.serial} of {args.issuer}")


@_with_connection
async def _run_cert_shard(settings: Settings, args: argparse.Namespace,
                          conn: asyncpg.Connection) -> None:
    issuer = await admin.get_issuer(conn, args.issuer)
    if not issuer.crl_shards:
        raise AdminError(f"issuer {issuer.name} is not sharded; its CRL is "
                         f"{settings.public_url}/crl/{issuer.name}.crl")
    shard = admin.shard_of_serial(admin.parse_serial(args.serial), issuer.crl_shards)
    print(admin.shard_url(settings.public_url, issuer.name, shard))


def _seconds(text: str) -> float:
    """A --grace style duration: 90, 90s, 15m, 2h or 1d; not negative."""
    try:
        value = parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (90, 90s, 15m, 2h)") \
            from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative")
    return float(value)


def _in_session(settings: Settings, operation: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run `operation` on one connection to a current schema and return its result."""
    async def session(dsn: str) -> T:
        conn = await _connect(settings, dsn)
        try:
            return await operation(conn)
        finally:
            await conn.close()

    with database_url(settings) as dsn:
        return asyncio.run(session(dsn))


def _run_audit(settings: Settings, args: argparse.Namespace) -> None:
    async def run(conn: asyncpg.Connection) -> AuditReport:
        # The database's clock: every time the audit compares with was stamped by it.
        return await audit(conn, now=await database_now(conn), grace=args.grace,
                           worker_threshold=args.worker_threshold)

    report = _in_session(settings, run)
    for note in report.notes:
        sys.stderr.write(f"revoc: note: {note}\n")
    if report.ok:
        print(report.summary())
        return
    for finding in report.findings:
        print(finding)
    sys.stdout.flush()
    sys.stderr.write(f"revoc: {report.summary()}\n")
    raise SystemExit(EXIT_FAILURE)


def _run_status(settings: Settings, args: argparse.Namespace) -> None:
    from revoc.status import format_json, format_text, read_status

    async def run(conn: asyncpg.Connection) -> str:
        status = await read_status(conn, worker_threshold=args.worker_threshold)
        return format_json(status) if args.json else format_text(status)

    print(_in_session(settings, run))


def check_listen(settings: Settings) -> None:
    """Fail with one line and a hint when --host/--port cannot be served: a clear message now
    beats uvicorn's exit, in six lines of log, once everything else has started."""
    where = f"{settings.host}:{settings.port}"
    try:
        socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {where}: unknown host ({exc.strerror}); check "
                          "--host / REVOC_HOST") from None
    try:
        with socket.create_server((settings.host, settings.port)):
            pass
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            hint = "another process uses it; pick another with --port / REVOC_PORT"
        elif exc.errno == errno.EACCES:
            hint = "ports below 1024 need root; pick another with --port / REVOC_PORT"
        else:
            hint = "check --host / REVOC_HOST (an address of this machine)"
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ListenError(f"cannot listen on {where} ({reason}); {hint}") from None


@contextlib.contextmanager
def exit_on_stop_signals() -> Iterator[None]:
    """Turn a SIGINT/SIGTERM that ended the block in order into Interrupted (exit 130/143).

    For code that handles the signal itself and returns normally (uvicorn): its handlers
    replace ours while it runs; ours get the signal when uvicorn re-raises it after its
    shutdown, and the wakeup fd records it when a handler of its own swallowed it (uvicorn's
    multi-worker supervisor). Outside uvicorn's run, ours stop at once.
    """
    received: list[int] = []

    def stop(signum: int, _frame: object) -> None:
        raise Interrupted(signum)

    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    old_fd = signal.set_wakeup_fd(write_end)
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_fd)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        with contextlib.suppress(BlockingIOError):
            received.extend(os.read(read_end, 64))
        os.close(read_end)
        os.close(write_end)
    stops = [signum for signum in received if signum in (signal.SIGINT, signal.SIGTERM)]
    if stops:
        raise Interrupted(stops[0])


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


class Interrupted(Exception):
    """A command stopped cleanly on a signal; it exits 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


async def _demo(settings: Settings, dsn: str) -> None:
    """Everything of `revoc demo` in one process: import, presign, publish, then serve while
    the presigner and the publisher keep running, until Ctrl-C."""
    import uvicorn

    from crl_publisher.publisher import publish_round
    from crl_publisher.scheduler import run_forever
    from responder.app import EmbeddedServer, create_app, uvicorn_options
    from responder.presign_loop import run_presigner
    from responder.presigner import presign_once
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
    except (InputError, SigningError, UsageError, db.SchemaNotCurrent) as exc:
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
