"""The embedded PostgreSQL as seen by every revoc process: find it, start it, stop it.

One server per base directory (``REVOC_HOME/pg``), shared by every revoc process. It is run by a
small detached supervisor (``revoc/embedded_supervisor.py``), not by the command that needed it
first, so it outlives that command: ``revoc serve``, ``presign``, ``publish`` and admin commands
in other shells all connect to the same server.

How a client finds it, with no pid trusted on its own (zombies and reused pids look alive):

* ``base`` is ``flock``-ed by the supervisor and by the postmaster (and its backends) for as long
  as any of them lives; the kernel drops the lock on any death, so it is never stale.
* ``base/state.json`` says where the server listens (written by the supervisor once it is ready).
* a real connection proves it answers.

Starting is guarded by ``base/start.lock``: two commands racing to start start one supervisor.
The server needs a password (SCRAM) kept in ``base/pgpass`` (mode 0600) and listens on a Unix
socket in a 0700 directory; the DSN clients get names that file (``passfile=``), so it carries no
secret and can be printed. TCP is only on request (``REVOC_PG_LISTEN``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import asyncpg

from revoc.embedded_layout import (
    DATABASE,
    SUPERUSER,
    EmbeddedPostgresError,
    Layout,
    Running,
    ServerOptions,
    parse_listen,
)

__all__ = [
    "DATABASE",
    "SUPERUSER",
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "Layout",
    "Running",
    "ServerOptions",
    "Watchdog",
    "ensure_server",
    "find_server",
    "parse_listen",
    "stop_server",
]

log = logging.getLogger("revoc.embedded")

# --------------------------------------------------------------------------- probes


def lock_held(layout: Layout) -> bool:
    """Whether a supervisor or a postmaster of this base directory is alive (the flock test)."""
    try:
        fd = os.open(layout.base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the shared lock we may have taken
    return False


def read_state(layout: Layout) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(layout.state.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return state


def run_in_own_loop(make: Callable[[], Any]) -> Any:
    """Run a coroutine to completion on a fresh loop in a short-lived thread, so callers work
    whether or not an event loop is running in theirs."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(asyncio.run(make()))
        except BaseException as exc:  # handed to the caller
            errors.append(exc)

    worker = threading.Thread(target=run, name="revoc-embedded-probe")
    worker.start()
    worker.join()
    if errors:
        raise errors[0]
    return result[0]


def answers(dsn: str, timeout: float = 3.0) -> bool:
    """A real connection and ``SELECT 1``: the only liveness proof trusted here."""

    async def probe() -> bool:
        conn = await asyncpg.connect(dsn, timeout=timeout)
        try:
            return bool(await conn.fetchval("SELECT 1") == 1)
        finally:
            await conn.close()

    try:
        return bool(run_in_own_loop(probe))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return False


def _log_tail(path: Path, lines: int = 1) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "no log"
    return " / ".join(line.strip() for line in text[-lines:]) if text else "no log"


# --------------------------------------------------------------------------- find and start


def find_server(base: Path, *, wait: float = 0.0) -> Running | None:
    """The running server of `base`, or None when no supervisor holds it.

    While a supervisor is (re)starting postgres, wait up to `wait` seconds for it to answer; a
    postmaster left by a killed supervisor holds the lock while it shuts down, which this also
    waits out. Raises when something holds the directory but never answers in time.
    """
    layout = Layout.of(base)
    deadline = time.monotonic() + wait
    while True:
        if not lock_held(layout):
            return None
        state = read_state(layout)
        if state is not None and state.get("status") == "ready":
            running = Running.from_state(layout.base, state)
            if answers(running.dsn):
                return running
        if time.monotonic() >= deadline:
            if wait <= 0:
                return None
            raise EmbeddedPostgresError(
                f"the embedded PostgreSQL in {layout.base} is held by a process but does not "
                f"answer (supervisor log: {_log_tail(layout.supervisor_log)})")
        time.sleep(0.05)


@contextlib.contextmanager
def _start_lock(layout: Layout, deadline: float) -> Iterator[None]:
    fd = os.open(layout.start_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EmbeddedPostgresError(
                        f"another revoc process has been starting the embedded PostgreSQL in "
                        f"{layout.base} for too long ({layout.start_lock})") from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)


def ensure_server(options: ServerOptions, *, timeout: float = 120.0,
                  announce: Callable[[str], None] | None = None) -> Running:
    """The running server of ``options.base``, started (with its supervisor) if none runs.

    Safe from any thread: the server belongs to its detached supervisor, not to the caller.
    """
    layout = Layout.of(options.base)
    deadline = time.monotonic() + timeout
    running = find_server(layout.base, wait=min(timeout, 30.0))
    if running is not None:
        return running
    _make_base(layout)
    with _start_lock(layout, deadline):
        running = find_server(layout.base, wait=min(timeout, 30.0))
        if running is not None:
            return running
        if announce is not None:
            first = not (layout.data / "PG_VERSION").is_file()
            announce(f"starting the embedded PostgreSQL in {layout.base}"
                     + (" (first run: creating the cluster, a few seconds)" if first else ""))
        return _spawn_supervisor(layout, options, deadline)


def _make_base(layout: Layout) -> None:
    """The base directory, private to us (the supervisor adjusts group and mode as root)."""
    layout.base.mkdir(mode=0o700, parents=True, exist_ok=True)


def _spawn_supervisor(layout: Layout, options: ServerOptions, deadline: float) -> Running:
    """Start ``python -m revoc.embedded_supervisor`` detached and wait for its one-line report.

    The supervisor forks once more and its first process exits at once, so it is nobody's child
    and belongs to no terminal: Ctrl-C or a kill -9 of this process leaves it running.
    """
    options = ServerOptions(layout.base, options.durable, options.listen, options.server_user,
                            options.watch_pid)
    read_end, write_end = os.pipe()
    try:
        with open(layout.supervisor_log, "ab") as sink:
            os.chmod(layout.supervisor_log, 0o600)
            launcher = subprocess.Popen(
                [sys.executable, "-m", "revoc.embedded_supervisor", options.to_json(),
                 str(write_end)],
                stdin=subprocess.DEVNULL, stdout=sink, stderr=sink, cwd="/",
                pass_fds=(write_end,), start_new_session=True)
        os.close(write_end)
        write_end = -1
        report = _read_report(read_end, deadline)
        launcher.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    if report is None:
        raise EmbeddedPostgresError(
            f"the embedded PostgreSQL supervisor exited before it was ready: "
            f"{_log_tail(layout.supervisor_log)} (log: {layout.supervisor_log})")
    if "error" in report:
        raise EmbeddedPostgresError(str(report["error"]))
    return Running.from_state(layout.base, report["ready"], started=True)


def _read_report(fd: int, deadline: float) -> dict[str, Any] | None:
    """The supervisor's JSON line, or None when it closed the pipe without one (it died)."""
    buffer = b""
    while b"\n" not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise EmbeddedPostgresError("the embedded PostgreSQL did not start in time")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return None
        buffer += chunk
    report: dict[str, Any] = json.loads(buffer.split(b"\n", 1)[0])
    return report


# --------------------------------------------------------------------------- stop


def _is_supervisor(pid: int, base: Path) -> bool:
    """Whether `pid` is the supervisor of `base` (not a reused pid), judged by its command line."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"revoc.embedded_supervisor" in cmdline and str(base).encode() in cmdline


def stop_server(base: Path, *, timeout: float = 60.0) -> bool:
    """Stop the server of `base` in order (the supervisor shuts postgres down, then exits).

    True when one was stopped, False when none ran. A postmaster whose supervisor was killed is
    already shutting down (its death signal): this waits until it has.
    """
    layout = Layout.of(base)
    deadline = time.monotonic() + timeout
    if not lock_held(layout):
        layout.state.unlink(missing_ok=True)  # left by a supervisor that was killed
        return False
    state = read_state(layout) or {}
    pid = int(state.get("supervisor_pid") or 0)
    if pid and _is_supervisor(pid, layout.base):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    while lock_held(layout):
        if time.monotonic() > deadline:
            raise EmbeddedPostgresError(
                f"the embedded PostgreSQL in {layout.base} did not stop within {timeout:.0f} s")
        time.sleep(0.02)
    layout.state.unlink(missing_ok=True)
    return True


# --------------------------------------------------------------------------- watchdog


class Watchdog:
    """Restarts the server for a long-running command when it died without being stopped.

    A supervisor restarts postgres itself; this covers the supervisor's own death (kill -9, OOM):
    its state file is then left behind, whereas ``revoc db stop`` removes it, so a server stopped
    on purpose stays stopped. Runs in a daemon thread, polling a flock every `interval` seconds.
    """

    def __init__(self, options: ServerOptions, interval: float = 1.0) -> None:
        self._options = options
        self._layout = Layout.of(options.base)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="revoc-embedded-watchdog",
                                        daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            if lock_held(self._layout) or not self._layout.state.exists():
                continue
            try:
                running = ensure_server(self._options, timeout=60)
            except EmbeddedPostgresError as exc:
                log.error("the embedded PostgreSQL stopped and could not be restarted: %s", exc)
                continue
            if running.started:
                log.warning("the embedded PostgreSQL had stopped; restarted it (supervisor "
                            "pid %d)", running.supervisor_pid)


# --------------------------------------------------------------------------- one owner


class EmbeddedPostgres:
    """A server of one's own, for tests and benchmarks: ``start()`` ensures it runs (tied to this
    process through ``watch_pid``) and ``stop()`` stops it if this object started it."""

    def __init__(self, base: Path, *, durable: bool = True, listen: str | None = None) -> None:
        self._options = ServerOptions(Layout.of(base).base, durable=durable, listen=listen,
                                      watch_pid=os.getpid())
        self._running: Running | None = None

    @property
    def base(self) -> Path:
        return self._options.base

    @property
    def running(self) -> Running:
        if self._running is None:
            raise EmbeddedPostgresError("the embedded PostgreSQL server is not started")
        return self._running

    @property
    def dsn(self) -> str:
        return self.running.dsn

    def start(self, timeout: float = 120.0) -> str:
        if self._running is None:
            self._running = ensure_server(self._options, timeout=timeout)
        return self._running.dsn

    def stop(self) -> None:
        running, self._running = self._running, None
        if running is not None and running.started:
            stop_server(self._options.base)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
