"""Operating revoc as the README says, with real processes: serve, presign and publish side by side
with admin commands on the embedded default; how each long-running command starts (one line
saying what and where) and stops (SIGINT/SIGTERM: in order, exit 130/143, no traceback)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
from cryptography import x509

from revoc.db import upgrade
from revoc.embedded_pg import Layout, answers, find_server, stop_server
from tests.daemons import REVOC, Daemon, _free_port, _poll
from tests.databases import with_database
from tests.pki import Party, make_ca, make_leaf


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([REVOC, *args], capture_output=True, text=True, env=env, timeout=120)


def _ocsp(ca: Path, leaf: Path, port: int) -> str:
    result = subprocess.run(["openssl", "ocsp", "-issuer", str(ca), "-cert", str(leaf), "-url",
                             f"http://127.0.0.1:{port}/ocsp", "-no_nonce", "-CAfile", str(ca),
                             "-timeout", "5"], capture_output=True, text=True, timeout=30)
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def ca() -> Party:
    return make_ca("Operating Test CA")


@pytest.fixture
def pki(ca: Party, tmp_path: Path) -> tuple[Path, Path, list[Path]]:
    cert, key = ca.write(tmp_path)
    leaves = []
    for serial in (0x1001, 0x1002):
        path = tmp_path / f"leaf-{serial:x}.pem"
        path.write_bytes(make_leaf(ca, serial).cert_pem)
        leaves.append(path)
    return cert, key, leaves


@pytest.fixture
def embedded_home() -> Iterator[Path]:
    parent = Path(tempfile.mkdtemp(prefix="revoc-ops-", dir="/tmp"))
    parent.chmod(0o711)
    try:
        yield parent / "home"
    finally:
        stop_server(parent / "home" / "pg", timeout=30)
        subprocess.run(["rm", "-rf", str(parent)], check=False)


def test_readme_operating_section_in_four_shells_on_the_embedded_default(
        embedded_home: Path, pki: tuple[Path, Path, list[Path]]) -> None:
    """serve, presign and publish each in a shell of their own, admin commands in a fourth, no
    REVOC_DATABASE_URL: they share one embedded server. A kill -9 of its supervisor midway is
    healed by the running daemons, without any command."""
    cert, key, (leaf1, leaf2) = pki
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVOC_")}
    env.update({"REVOC_HOME": str(embedded_home), "REVOC_PORT": str(port),
                "REVOC_PUBLIC_URL": f"http://127.0.0.1:{port}", "REVOC_PRESIGN_PROCESSES": "1"})
    assert _run(env, "db", "upgrade").returncode == 0
    added = _run(env, "issuer", "add", "--name", "ca1", "--cert", str(cert), "--key", str(key))
    assert added.returncode == 0, added.stderr
    assert _run(env, "cert", "add", "--issuer", "ca1", str(leaf1), str(leaf2)).returncode == 0
    daemons = {name: Daemon([name], env) for name in ("serve", "presign", "publish")}
    try:
        daemons["serve"].wait_for(r"revoc serve: answering OCSP .* on http://127\.0\.0\.1:"
                                  rf"{port} .* from the embedded PostgreSQL in ")
        daemons["presign"].wait_for(r"revoc presign: pre-signing OCSP responses .* every issuer "
                                    r"in the embedded PostgreSQL in ")
        daemons["publish"].wait_for(rf"revoc publish: publishing CRLs of 1 issuer\(s\).*files in "
                                    rf"{embedded_home}/crl")
        _poll(lambda: ": good" in _ocsp(cert, leaf1, port), 60, "OCSP good for leaf 1")

        # The fourth shell: admin commands while the daemons run (how long one takes is
        # tests/test_timing.py's concern).
        listing = _run(env, "issuer", "list")
        assert listing.returncode == 0 and listing.stdout.startswith("ca1"), listing.stderr
        status = _run(env, "db", "status")
        assert status.returncode == 0 and "dsn: postgresql://revoc@/revoc?host=" in status.stdout

        # A revocation reaches OCSP (presign -> serve) and the delta CRL (publish on change).
        leaf1_serial = x509.load_pem_x509_certificate(leaf1.read_bytes()).serial_number
        revoked = _run(env, "cert", "revoke", "--issuer", "ca1", "--serial",
                       f"{leaf1_serial:x}", "--reason", "keyCompromise")
        assert revoked.returncode == 0, revoked.stderr
        _poll(lambda: ": revoked" in _ocsp(cert, leaf1, port), 60, "OCSP revoked for leaf 1")
        delta = embedded_home / "crl" / "ca1-delta.crl"

        def delta_lists_leaf1() -> bool:
            try:
                crl = x509.load_der_x509_crl(delta.read_bytes())
            except (FileNotFoundError, ValueError):
                return False
            return crl.get_revoked_certificate_by_serial_number(leaf1_serial) is not None

        _poll(delta_lists_leaf1, 60, "the delta CRL to list leaf 1")

        # The supervisor dies: postgres goes with it, and the daemons' watchdogs start a new one.
        layout = Layout.of(embedded_home / "pg")
        old = json.loads(layout.state.read_text())
        os.kill(old["supervisor_pid"], signal.SIGKILL)
        _poll(lambda: (r := find_server(layout.base)) is not None
              and r.supervisor_pid != old["supervisor_pid"], 60,
              "a running daemon to restart the embedded server")
        # ... and they reconnect: a revocation made now is served.
        leaf2_serial = x509.load_pem_x509_certificate(leaf2.read_bytes()).serial_number
        revoked = _run(env, "cert", "revoke", "--issuer", "ca1", "--serial",
                       f"{leaf2_serial:x}", "--reason", "keyCompromise")
        assert revoked.returncode == 0, revoked.stderr
        _poll(lambda: ": revoked" in _ocsp(cert, leaf2, port), 90, "OCSP revoked for leaf 2")
    finally:
        codes = {"serve": daemons["serve"].stop(signal.SIGTERM),
                 "presign": daemons["presign"].stop(signal.SIGINT),
                 "publish": daemons["publish"].stop(signal.SIGTERM)}
        for daemon in daemons.values():
            daemon.kill()
    outputs = "".join(d.output for d in daemons.values())
    assert codes == {"serve": 143, "presign": 130, "publish": 143}, outputs
    assert "Traceback" not in outputs, outputs
    # The daemons leave the shared server running; `db stop` stops it.
    running = find_server(layout.base)
    assert running is not None and answers(running.dsn)
    stopped = _run(env, "db", "stop")
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert find_server(layout.base) is None
    assert _run(env, "db", "status").returncode == 1


# ------------------------------------------------------------------ start-up and signals


@pytest.fixture(scope="module")
def fresh_database(server_url: str, ca: Party,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database of this module's own with one issuer and one certificate: the daemons here sign
    and publish exactly that."""
    import secrets

    name = f"revoc_ops_{secrets.token_hex(5)}"

    async def create() -> None:
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        conn = await asyncpg.connect(with_database(server_url, name))
        try:
            await upgrade(conn)
        finally:
            await conn.close()

    async def drop() -> None:
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    from revoc.embedded_pg import run_in_own_loop

    run_in_own_loop(create)
    dsn = with_database(server_url, name)
    directory = tmp_path_factory.mktemp("ops-pki")
    cert, key = ca.write(directory)
    leaf = directory / "leaf.pem"
    leaf.write_bytes(make_leaf(ca, 0x2001).cert_pem)
    env = {**os.environ, "REVOC_DATABASE_URL": dsn}
    assert _run(env, "issuer", "add", "--name", "opsca", "--cert", str(cert), "--key",
                str(key)).returncode == 0
    assert _run(env, "cert", "add", "--issuer", "opsca", str(leaf)).returncode == 0
    try:
        yield dsn
    finally:
        run_in_own_loop(drop)


_STARTUP = {
    "serve": r"revoc serve: answering OCSP .* on http://127\.0\.0\.1:\d+ with 1 worker",
    "presign": r"revoc presign: pre-signing OCSP responses \(sha1,sha256 CertIDs, valid 4d, "
               r"refreshed after 2d, 1 signing process\(es\)\) for every issuer in database "
               r"postgresql://",
    "publish": r"revoc publish: publishing CRLs of 1 issuer\(s\): full every 1d \(valid 7d\), "
               r"delta every 5m .*; files in /",
}
# What shows the command is at work, so the signal interrupts real work (for presign: its
# signing processes exist, which printed tracebacks on Ctrl-C).
_WORKING = {"serve": r"Application startup complete", "presign": r"presign round: \d+ response",
            "publish": r"published full CRL"}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("command", ["serve", "presign", "publish"])
def test_daemon_says_what_and_where_then_stops_in_order(
        command: str, signum: int, fresh_database: str, tmp_path: Path) -> None:
    env = {**os.environ, "REVOC_DATABASE_URL": fresh_database, "REVOC_PORT": str(_free_port()),
           "REVOC_CRL_OUT": str(tmp_path / "crl"), "REVOC_PRESIGN_PROCESSES": "1",
           "REVOC_LOG_LEVEL": "INFO"}
    # --force-full: each run publishes a full CRL, even after an earlier test's.
    daemon = Daemon([command, "--force-full"] if command == "publish" else [command], env)
    try:
        startup = daemon.wait_for(_STARTUP[command])
        assert "password" not in startup
        daemon.wait_for(_WORKING[command])
        code = daemon.stop(signum)
    finally:
        daemon.kill()
    assert code == 128 + signum, daemon.output
    assert "Traceback" not in daemon.output, daemon.output
    assert "ForkServerProcess" not in daemon.output, daemon.output


# ------------------------------------------------------------------ refusals at start


def _one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert result.returncode == code, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("revoc: error:"), result.stderr
    return lines[0]


def test_serve_on_a_taken_port_or_a_bad_host_is_one_line_with_a_hint() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVOC_")}
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        line = _one_line_error(_run(env, "serve", "--port", str(port)), 1)
    assert f"127.0.0.1:{port}" in line and "pick another with --port" in line
    line = _one_line_error(_run(env, "serve", "--host", "no-such-host.invalid"), 1)
    assert "unknown host" in line and "--host" in line
    line = _one_line_error(_run(env, "serve", "--host", "192.0.2.1"), 1)
    assert "check --host" in line


@pytest.mark.parametrize(("args", "expected"), [
    (["publish", "--crl-full-validity", "1h", "--crl-full-interval", "2h"],
     "--crl-full-validity (1h) must be at least --crl-full-interval plus 1h (3h)"),
    (["publish", "--crl-delta-validity", "1h", "--crl-delta-interval", "1h"],
     "--crl-delta-validity (1h) must be at least --crl-delta-interval plus 1h (2h)"),
    (["publish", "--crl-delta-interval", "1d"], "must be shorter than --crl-full-interval"),
    (["publish", "--crl-full-interval", "3x"], "'3x': expected a whole number with an optional "
                                               "unit s, m, h or d"),
    (["presign", "--ocsp-validity", "12"], "must be between 8h and 10d"),
])
def test_settings_that_cannot_work_are_refused_in_one_line(
        args: list[str], expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVOC_")}
    result = _run(env, *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr, \
        result.stderr


def test_bad_durations_name_the_units_and_dsns_never_show_a_password() -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("REVOC_")}
    line = _one_line_error(_run({**base, "REVOC_OCSP_VALIDITY": "3x"}, "presign"), 2)
    assert "REVOC_OCSP_VALIDITY='3x'" in line and "s, m, h or d" in line
    assert "invalid literal" not in line
    for dsn in ("postgresql://admin:s3cr3t@db.example:abc/revoc",
                "mysql://admin:s3cr3t@db.example/revoc",
                "postgresql://admin@db.example:5432/revoc?password=s3cr3t&sslmode=nope"):
        result = _run({**base, "REVOC_DATABASE_URL": dsn}, "issuer", "list")
        assert result.returncode in (1, 2) and "Traceback" not in result.stderr, result
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "s3cr3t" not in result.stderr + result.stdout, result.stderr
    status = _run({**base, "REVOC_DATABASE_URL": "postgresql://admin:s3cr3t@127.0.0.1:1/x"},
                  "db", "status")
    assert status.returncode == 1 and "s3cr3t" not in status.stdout + status.stderr
    assert "admin:***@127.0.0.1:1" in status.stdout


def test_br_issuers_refuse_a_full_crl_interval_over_seven_days(
        database_url: str, ca: Party, tmp_path: Path) -> None:
    name = f"br{os.getpid()}"
    cert, key = ca.write(tmp_path)
    env = {**os.environ, "REVOC_DATABASE_URL": database_url}
    added = _run(env, "issuer", "add", "--name", name, "--cert", str(cert), "--key", str(key),
                 "--profile", "br")
    assert added.returncode == 0, added.stderr
    result = _run(env, "publish", "--once", "--crl-full-interval", "8d", "--crl-full-validity",
                  "10d", "--out", str(tmp_path / "crl"))
    line = _one_line_error(result, 2)
    assert "BR 4.9.7" in line


def test_schedule_checks_cover_ocsp_refresh() -> None:
    """The OCSP checks, on settings the per-value bounds would let through in other
    combinations: a validity the refresh schedule cannot keep fresh is named."""
    from revoc.settings import Settings, schedule_problem

    assert schedule_problem(Settings()) is None
    problem = schedule_problem(Settings(ocsp_validity=2 * 3600, ocsp_backdate=3600))
    assert problem is not None and "--ocsp-validity (2h)" in problem
    problem = schedule_problem(Settings(ocsp_validity=3600, ocsp_backdate=0))
    assert problem is not None and "too little time" in problem


def test_help_describes_every_option_with_default_and_variable() -> None:
    """Each option of each command says its default (settings also their REVOC_ variable), and a
    command offers only settings it uses."""
    import argparse

    from revoc.cli import build_parser
    from revoc.settings import SPECS

    flags = {spec.flag: spec for spec in SPECS}
    seen: dict[str, set[str]] = {}

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
                continue
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            if "--help" in action.option_strings:
                continue
            seen.setdefault(path, set()).update(action.option_strings)
            text = action.help or ""
            if action.nargs == 0 or action.required:  # flags and required options
                assert text, (path, action.option_strings)
                continue
            assert "default" in text, (path, action.option_strings, text)
            # The setting behind an option is its dest (`admin-api --host` sets admin_host).
            by_dest = {f"setting_{spec.name}": spec for spec in SPECS}
            spec = by_dest.get(action.dest) or next(
                (flags[o] for o in action.option_strings if o in flags), None)
            if spec is not None:
                assert spec.env in text, (path, spec.flag, text)

    walk(build_parser(), "revoc")
    assert "--workers" not in seen["revoc demo"]  # the demo runs one process
    assert "--public-url" not in seen["revoc issuer add"]  # nothing of it uses URLs
    assert "--crl-full-interval" not in seen["revoc serve"]
    assert "--pg-listen" not in seen["revoc db status"]
    assert {"--public-url", "--crl-full-interval"} <= seen["revoc publish"]
    assert "--workers" in seen["revoc serve"]
    assert "--public-url" in seen["revoc cert shard"]
