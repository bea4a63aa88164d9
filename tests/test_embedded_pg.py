"""The embedded PostgreSQL lifecycle, always exercised (even when REVOC_DATABASE_URL is set).

Every test starts from its own empty directory under /tmp (0711: as root the
server runs as nobody, who cannot enter pytest's 0700 tmp_path). Waits poll with
a deadline; nothing sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest

from revoc import embedded_pg
from revoc.embedded_pg import EmbeddedPostgres, EmbeddedPostgresError, server_base

REPO = Path(__file__).resolve().parent.parent
AS_ROOT = os.geteuid() == 0


@pytest.fixture
def base() -> Iterator[Path]:
    """A not-yet-existing base directory inside a nobody-traversable temp dir."""
    parent = Path(tempfile.mkdtemp(prefix="revoc-epg-", dir="/tmp"))
    parent.chmod(0o711)
    try:
        yield parent / "pg"
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def postmaster_pid(base: Path) -> int:
    return int((base / "data" / "postmaster.pid").read_text().splitlines()[0])


def process_gone(pid: int) -> bool:
    """Exited or a zombie: a zombie holds no files, locks or ports any more."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return "Z" in state.split()[1]


def wait_until(condition: object, timeout: float, what: str) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def query(dsn: str, sql: str) -> object:
    """One statement over a fresh asyncpg connection (TCP, as the DSN says).

    A worker thread with its own loop: asyncio.run on the main thread would
    reset the session event loop that pytest-asyncio runs the other tests on.
    """

    async def fetch() -> object:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    with ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, fetch()).result()


def test_fresh_start_connect_stop_and_restart(base: Path) -> None:
    server = EmbeddedPostgres(base, durable=False)
    started = time.monotonic()
    dsn = server.start()
    first_start = time.monotonic() - started
    try:
        assert dsn.startswith("postgresql://revoc@127.0.0.1:") and dsn.endswith("/revoc")
        assert server.dsn == dsn
        version = query(dsn, "SHOW server_version_num")
        assert isinstance(version, str) and int(version) >= 180000
        query(dsn, "CREATE TABLE kept (x int)")
        pid = postmaster_pid(base)
        if AS_ROOT:
            uid_line = next(
                line
                for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("Uid:")
            )
            assert uid_line.split()[1:] == ["65534"] * 4  # nobody, real..fs
            assert (base.stat().st_mode & 0o777) == 0o711
    finally:
        server.stop()
    assert process_gone(pid)
    assert not (base / "data" / "postmaster.pid").exists()
    with pytest.raises(EmbeddedPostgresError, match="not started"):
        _ = server.dsn

    started = time.monotonic()
    with EmbeddedPostgres(base, durable=False) as again:
        restart = time.monotonic() - started
        assert query(again.dsn, "SELECT count(*) FROM kept") == 0
    print(f"embedded pg: init+start {first_start:.2f} s, restart {restart:.2f} s")
    assert restart < 5


def test_second_instance_on_same_dir_fails_at_once(base: Path) -> None:
    with EmbeddedPostgres(base, durable=False):
        second = EmbeddedPostgres(base, durable=False)
        started = time.monotonic()
        with pytest.raises(EmbeddedPostgresError, match="already in use by another process"):
            second.start()
        assert time.monotonic() - started < 1


_CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from revoc.embedded_pg import EmbeddedPostgres

    base = Path(sys.argv[1])
    dsn = EmbeddedPostgres(base, durable=False).start()
    pid = int((base / "data" / "postmaster.pid").read_text().splitlines()[0])
    print(json.dumps({"dsn": dsn, "pid": pid}), flush=True)
    sys.stdin.read()  # Hold the server until killed.
    """
)


def test_kill_9_of_the_owner_leaves_no_orphan(base: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    owner = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(base)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert owner.stdout is not None
        line = owner.stdout.readline()
        assert line, "the owner process died before printing its DSN"
        started = json.loads(line)
        assert query(started["dsn"], "SELECT 1") == 1
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()

    postmaster = started["pid"]
    wait_until(lambda: process_gone(postmaster), 10, "the postmaster to exit")
    # PR_SET_PDEATHSIG -> fast shutdown: postgres removed its own pid file.
    assert not (base / "data" / "postmaster.pid").exists()

    with EmbeddedPostgres(base, durable=False) as server:
        assert query(server.dsn, "SELECT 1") == 1


def test_refuses_a_data_dir_of_another_major_version(base: Path) -> None:
    (base / "data").mkdir(parents=True)
    (base / "data" / "PG_VERSION").write_text("15\n")
    with pytest.raises(EmbeddedPostgresError, match="created by PostgreSQL 15"):
        EmbeddedPostgres(base).start()
    # The lock was released on the way out: a retry fails the same way, not as "in use".
    with pytest.raises(EmbeddedPostgresError, match="created by PostgreSQL 15"):
        EmbeddedPostgres(base).start()


@pytest.mark.skipif(not AS_ROOT, reason="only root hands the server to nobody")
def test_base_that_nobody_cannot_reach_is_a_clear_error(tmp_path: Path) -> None:
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    with pytest.raises(EmbeddedPostgresError, match="REVOC_HOME=/var/lib/revoc"):
        EmbeddedPostgres(hidden / "x" / ".revoc").start()
    assert not (hidden / "x").exists()


def test_retries_once_when_the_chosen_port_was_taken(
    base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The port race of bind-to-0-then-release, made certain: the first pick is busy.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        busy = squatter.getsockname()[1]
        picks = iter([busy, embedded_pg._free_port()])
        monkeypatch.setattr(embedded_pg, "_free_port", lambda: next(picks))
        with EmbeddedPostgres(base, durable=False) as server:
            assert f":{busy}/" not in server.dsn
            assert query(server.dsn, "SELECT 1") == 1


@pytest.mark.skipif(not AS_ROOT, reason="only root hands the server to nobody")
def test_cli_moves_an_unreachable_home_under_var_lib(tmp_path: Path) -> None:
    """`revoc` run as root from a REVOC_HOME nobody cannot enter (a checkout under /root)
    still starts its embedded server: the data goes to /var/lib/revoc/pg-<hash>."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    home = private / "home"
    fallback = server_base(home / "pg")
    assert fallback.parent == Path("/var/lib/revoc") and fallback.name.startswith("pg-")
    assert server_base(Path("/tmp") / "x" / "pg") == Path("/tmp/x/pg").resolve()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVOC_")}
    try:
        result = subprocess.run(
            [str(Path(sys.executable).parent / "revoc"), "db", "upgrade", "--home", str(home)],
            capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        assert "applied" in result.stdout
        assert (fallback / "data" / "PG_VERSION").is_file()
    finally:
        shutil.rmtree(fallback, ignore_errors=True)
