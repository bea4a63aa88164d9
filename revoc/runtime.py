"""What every `revoc` command shares: settings flags, the database (configured or embedded),
the schema check, the address check, stop signals and the errors that decide the exit status.

revoc/cli.py composes the commands; responder/cli.py, responder/presign_loop.py and
crl_publisher/cli.py use this module, never revoc/cli.py, so no command module imports the
composer back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import asyncpg

from revoc import db
from revoc.embedded_pg import ServerOptions, Watchdog, ensure_server, stop_server
from revoc.settings import SPECS, Settings, Spec, default_text, redact_dsn

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
# How long a stopping daemon waits for its round to end, then for the cancelled round, then for
# its pool to close: a round can wait forever inside PostgreSQL (a commit waiting for a
# synchronous standby that is gone ends only with its connection).
log = logging.getLogger("revoc")

STOP_GRACE_SECONDS = 5.0

T = TypeVar("T")

# Errors of a database that is down, starting or failing over (no host of a multi-host DSN
# writable yet): waited out by the long-running commands. Anything else at start (a schema that
# is not current, a refused login) is bad settings and ends the command.
UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, asyncpg.CannotConnectNowError, asyncpg.ConnectionDoesNotExistError,
    asyncpg.AdminShutdownError, asyncpg.TargetServerAttributeNotMatched)


class UsageError(Exception):
    """Bad usage found after parsing: exit 2 with this one line."""


class ListenError(Exception):
    """The address to serve on cannot be used (taken port, unknown host): exit 1, one line."""


def flag_type(spec: Spec) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return spec.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None

    parse.__name__ = spec.name
    return parse


def add_settings(parser: argparse.ArgumentParser, *groups: str, database: bool = True) -> None:
    """The settings flags of `groups` (plus log level, and the database's unless told not to);
    only settings the command uses, each with its default and environment variable."""
    wanted = {"global", *groups, *(("db", "embedded") if database else ())}
    section = parser.add_argument_group("settings (each also from REVOC_<NAME>; flags win)")
    for spec in SPECS:
        if wanted.intersection(spec.groups):
            section.add_argument(spec.flag, dest=f"setting_{spec.name}", type=flag_type(spec),
                                 metavar=spec.metavar,
                                 help=f"{spec.help} (default: {default_text(spec)}; "
                                      f"env {spec.env})")


def embedded_options(settings: Settings) -> ServerOptions:
    """How to run the embedded server of --home (REVOC_HOME/pg)."""
    return ServerOptions(settings.home.resolve() / "pg", listen=settings.pg_listen,
                         server_user=settings.pg_user)


def announce(message: str) -> None:
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
    running = ensure_server(options, announce=announce)
    try:
        with Watchdog(options):
            yield running.dsn
    finally:
        if stop_if_started and running.started:
            stop_server(options.base)


async def connect(settings: Settings, dsn: str) -> asyncpg.Connection:
    conn: asyncpg.Connection = await db.connect(dsn)
    try:
        await db.ensure_schema(conn, owned=settings.database_url is None)
    except BaseException:
        await conn.close()
        raise
    return conn


async def run_until_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event, *,
                            grace: float = STOP_GRACE_SECONDS) -> tuple[bool, T | None]:
    """Run `work` (which may watch `stop` between its rounds) until it returns, or until `stop`
    is set and it has not ended within `grace` seconds; then cancel it and wait at most
    STOP_GRACE_SECONDS more. (True, result) when it returned, (False, None) when it was
    cancelled or did not finish. Exceptions of `work` propagate."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            await asyncio.wait({task}, timeout=grace)
        if task.done():
            return True, task.result()
        task.cancel()
        await asyncio.wait({task}, timeout=STOP_GRACE_SECONDS)
        if task.done() and not task.cancelled() and task.exception() is None:
            return True, task.result()
        return False, None
    finally:
        stopper.cancel()


async def close_pool(pool: asyncpg.Pool, *, grace: float = STOP_GRACE_SECONDS) -> None:
    """Close `pool` gracefully within `grace` seconds, else terminate its connections:
    asyncpg's close waits for every acquired connection, and one stuck in a commit that waits
    for a lost synchronous standby is never released. A commit cut off that way was never
    acknowledged to anyone. Then the tasks still running (a round cut off by the stop, whose
    connection was just terminated) are cancelled and their outcome collected here, so a stop
    ends with its one log line, not with asyncio's tracebacks of unretrieved exceptions."""
    current = asyncio.current_task()
    left = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    try:
        await asyncio.wait_for(pool.close(), timeout=grace)
    except TimeoutError:
        pool.terminate()  # (a cancelled close has already terminated them)
    for task in left:
        task.cancel()
    if left:
        await asyncio.wait(left, timeout=grace)
    for task in left:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.debug("stopped task %s ended with %r", task.get_name(), task.exception())


async def check_schema(settings: Settings, dsn: str) -> None:
    """Migrate the embedded database, or check a given one is current (else SchemaNotCurrent)."""
    await (await connect(settings, dsn)).close()


async def open_pool(settings: Settings, dsn: str, *, max_size: int = 4) -> asyncpg.Pool:
    """A pool on a current schema, for the long-running commands (presign, publish)."""
    await check_schema(settings, dsn)
    return await db.create_pool(dsn, min_size=1, max_size=max_size)


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


class Interrupted(Exception):
    """A command stopped cleanly on a signal; it exits 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum
