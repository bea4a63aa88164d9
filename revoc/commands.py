"""The database and administration commands of `revoc` (db, issuer, cert, audit, status): one
function per subcommand, called by revoc/cli.py with the loaded settings and the parsed flags.

Each opens what it needs through revoc/runtime.py and does its work through revoc/admin.py,
revoc/importer.py, revoc/audit.py or revoc/status.py; errors propagate to revoc/cli.py `main`,
which turns them into one line and an exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from revoc import admin, db, partition
from revoc.admin import AdminError, InputError
from revoc.audit import AuditReport, audit, database_now
from revoc.embedded_pg import Running, ensure_server, find_server, stop_server
from revoc.model import Profile, Reason
from revoc.runtime import (
    EXIT_FAILURE,
    UsageError,
    announce,
    connect,
    database_url,
    embedded_options,
)
from revoc.settings import Settings, parse_duration, redact_dsn
from revoc.sync_commit import confirmed

T = TypeVar("T")


# ---------------------------------------------------------------- database access


def _with_connection(
    operation: Callable[[Settings, argparse.Namespace, asyncpg.Connection], Awaitable[None]],
) -> Callable[[Settings, argparse.Namespace], None]:
    def run(settings: Settings, args: argparse.Namespace) -> None:
        async def session(dsn: str) -> None:
            conn = await connect(settings, dsn)
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


def run_db_start(settings: Settings, args: argparse.Namespace) -> None:
    _no_database_url(settings, "start")
    running = ensure_server(embedded_options(settings), announce=announce)
    print(_describe_running(running) if running.started
          else "already running\n" + _describe_running(running))
    if not running.started and settings.pg_listen and running.tcp_host is None:
        print("note: it runs without TCP; REVOC_PG_LISTEN applies when it starts "
              "(`revoc db stop`, then `revoc db start`)")


def run_db_stop(settings: Settings, args: argparse.Namespace) -> None:
    _no_database_url(settings, "stop")
    base = settings.home.resolve() / "pg"
    print(f"stopped the embedded PostgreSQL in {base}" if stop_server(base)
          else f"the embedded PostgreSQL in {base} was not running")


def run_db_status(settings: Settings, args: argparse.Namespace) -> None:
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


def run_db_upgrade(settings: Settings, args: argparse.Namespace) -> None:
    async def upgrade(dsn: str) -> None:
        conn = await db.connect(dsn)
        try:
            applied = await db.upgrade(conn)
            done = f": {', '.join(applied)}" if applied else "; schema is current"
            print(f"applied {len(applied)} migration(s){done}")
            for line in await partition.apply_setting(conn, settings.db_partitions):
                print(f"partitioned {line}")
        finally:
            await conn.close()

    with database_url(settings) as dsn:
        asyncio.run(upgrade(dsn))


def run_db_partition(settings: Settings, args: argparse.Namespace) -> None:
    async def convert(dsn: str) -> None:
        conn = await db.connect(dsn)  # as `db upgrade`: a multi-host DSN, per-host timeouts
        try:
            for line in await partition.partition(conn, args.count):
                print(f"partitioned {line}")
        finally:
            await conn.close()

    with database_url(settings) as dsn:
        asyncio.run(convert(dsn))


@_with_connection
async def run_issuer_add(settings: Settings, args: argparse.Namespace,
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
async def run_issuer_list(settings: Settings, args: argparse.Namespace,
                           conn: asyncpg.Connection) -> None:
    for issuer in await admin.list_issuers(conn):
        print(f"{issuer.name}\tid={issuer.id}\tprofile={issuer.profile.value}\t"
              f"shards={issuer.crl_shards}\tcrl_key={'yes' if issuer.key_path else 'no'}\t"
              f"ocsp={'delegated' if issuer.ocsp_cert_der else 'ca'}")


@_with_connection
async def run_cert_add(settings: Settings, args: argparse.Namespace,
                        conn: asyncpg.Connection) -> None:
    results = await admin.add_certificates(conn, args.issuer, args.certs)
    added = sum(r.added for r in results)
    print(f"{added} certificate(s) added, {len(results) - added} already known")


@_with_connection
async def run_cert_import(settings: Settings, args: argparse.Namespace,
                           conn: asyncpg.Connection) -> None:
    from revoc.importer import import_openssl_index

    result = await import_openssl_index(conn, args.issuer, args.openssl_index)
    print(f"{result.lines} line(s) read: {result.inserted} certificate(s) added, "
          f"{result.updated} updated")
    if result.sharded:
        print("shards were assigned as serial mod K (no certificates to read distribution "
              "points from); `revoc cert shard` prints the URL for a serial")


@_with_connection
async def run_cert_revoke(settings: Settings, args: argparse.Namespace,
                           conn: asyncpg.Connection) -> None:
    try:
        reason = Reason.from_name(args.reason)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    if args.serials_file is not None:
        from revoc.mass_revoke import revoke_serials_file

        async with confirmed(conn, "the revocation"):
            counts = await revoke_serials_file(conn, args, reason)
        print(counts)
        return
    request = admin.RevokeRequest(
        issuer=args.issuer, serial=admin.parse_serial(args.serial), reason=reason,
        revoked_at=admin.parse_time(args.revoked_at, "--revoked-at") if args.revoked_at else None,
        invalidity_date=(admin.parse_time(args.invalidity_date, "--invalidity-date")
                         if args.invalidity_date else None))
    async with confirmed(conn, "the revocation"):
        await admin.revoke(conn, request)
    print(f"revoked serial {args.serial} of {args.issuer} ({reason.name})")


@_with_connection
async def run_cert_unhold(settings: Settings, args: argparse.Namespace,
                           conn: asyncpg.Connection) -> None:
    await admin.unhold(conn, args.issuer, admin.parse_serial(args.serial))
    print(f"released the hold on serial {args.serial} of {args.issuer}")


@_with_connection
async def run_cert_shard(settings: Settings, args: argparse.Namespace,
                          conn: asyncpg.Connection) -> None:
    issuer = await admin.get_issuer(conn, args.issuer)
    if not issuer.crl_shards:
        raise AdminError(f"issuer {issuer.name} is not sharded; its CRL is "
                         f"{settings.public_url}/crl/{issuer.name}.crl")
    shard = admin.shard_of_serial(admin.parse_serial(args.serial), issuer.crl_shards)
    print(admin.shard_url(settings.public_url, issuer.name, shard))


def seconds(text: str) -> float:
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
        conn = await connect(settings, dsn)
        try:
            return await operation(conn)
        finally:
            await conn.close()

    with database_url(settings) as dsn:
        return asyncio.run(session(dsn))


def run_audit(settings: Settings, args: argparse.Namespace) -> None:
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


def run_status(settings: Settings, args: argparse.Namespace) -> None:
    from revoc.status import format_json, format_text, read_status

    async def run(conn: asyncpg.Connection) -> str:
        status = await read_status(conn, worker_threshold=args.worker_threshold)
        return format_json(status) if args.json else format_text(status)

    print(_in_session(settings, run))
