"""`revoc demo` as a newcomer runs it: no database URL, an empty REVOC_HOME, the printed
commands pasted into a shell. This is also the suite's end-to-end run of the embedded server
through the CLI."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509

from revoc.demo_pki import DemoPki, create_demo_pki


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _postmasters(data_dir: Path) -> list[int]:
    """Pids of live postgres processes serving `data_dir` (zombies do not count)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            state = (proc / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if state != "Z" and str(data_dir).encode() in cmdline and cmdline[0].endswith(
                b"postgres"):
            found.append(int(proc.name))
    return found


@pytest.fixture()
def home() -> Iterator[Path]:
    # Under /tmp and 0711: as root, the embedded server runs as nobody and must reach it.
    base = Path(tempfile.mkdtemp(prefix="revoc-demo-", dir="/tmp"))
    base.chmod(0o711)
    yield base / "home"
    subprocess.run(["rm", "-rf", str(base)], check=False)


def _poll(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_demo_serves_what_it_prints(home: Path) -> None:
    """The printed commands work, a second shell's admin commands work while the demo runs
    (same embedded server), a revocation made meanwhile shows in OCSP and in the printed CRL
    check (it takes the delta too), and Ctrl-C ends it all quietly with 130."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVOC_")}
    revoc = str(Path(sys.executable).parent / "revoc")
    # A session of its own, so Ctrl-C can be sent the way a terminal does: to the whole group.
    demo = subprocess.Popen([revoc, "demo", "--home", str(home), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)
    output: list[str] = []
    try:
        assert demo.stdout is not None
        deadline = time.monotonic() + 120
        while not any("curl -sI" in line for line in output):
            assert time.monotonic() < deadline, "".join(output)
            line = demo.stdout.readline()
            assert line, "demo exited early:\n" + "".join(output)
            output.append(line)
        commands = [line.split("#")[0].strip() for line in output
                    if line.strip().startswith("openssl ")]
        assert len(commands) == 4, "".join(output)
        assert all("-use_deltas" in c and "-delta.crl" in c for c in commands[2:]), commands
        results = [subprocess.run(shlex.split(c), capture_output=True, text=True, timeout=30)
                   for c in commands]
        good_ocsp, revoked_ocsp, good_crl, revoked_crl = results
        assert "Response verify OK" in good_ocsp.stderr + good_ocsp.stdout, good_ocsp
        assert re.search(r"leaf1\.pem: good", good_ocsp.stdout)
        assert re.search(r"leaf2\.pem: revoked", revoked_ocsp.stdout)
        assert "Reason: keyCompromise" in revoked_ocsp.stdout
        assert "WARNING: Status times invalid" not in good_ocsp.stderr + revoked_ocsp.stderr
        assert good_crl.returncode == 0 and good_crl.stdout.strip().endswith(": OK")
        assert revoked_crl.returncode == 2 and "error 23" in revoked_crl.stdout + \
            revoked_crl.stderr
        data_dir = home / "pg" / "data"
        assert _postmasters(data_dir), "the embedded server should be running"

        # A second shell: status, then a revocation, against the demo's own server.
        status = subprocess.run([revoc, "db", "status", "--home", str(home)],
                                capture_output=True, text=True, env=env, timeout=60)
        assert status.returncode == 0 and "dsn: postgresql://" in status.stdout, status
        leaf1 = x509.load_pem_x509_certificate((home / "demo" / "leaf1.pem").read_bytes())
        started = time.monotonic()
        revoked = subprocess.run([revoc, "cert", "revoke", "--home", str(home), "--issuer",
                                  "demo-ca", "--serial", f"{leaf1.serial_number:x}", "--reason",
                                  "keyCompromise"], capture_output=True, text=True, env=env,
                                 timeout=60)
        took = time.monotonic() - started
        assert revoked.returncode == 0, revoked.stderr
        print(f"cert revoke against the demo's server: {took:.2f} s (bound: tests/test_timing.py)")

        def shows_revoked(command: str, marker: str) -> bool:
            result = subprocess.run(shlex.split(command), capture_output=True, text=True,
                                    timeout=30)
            return marker in result.stdout + result.stderr

        _poll(lambda: shows_revoked(commands[0], "leaf1.pem: revoked"), 30, "OCSP: revoked")
        _poll(lambda: shows_revoked(commands[2], "error 23"), 30,
              "the printed CRL check (full + delta) to show the revocation")
    finally:
        os.killpg(demo.pid, signal.SIGINT)
        try:
            code = demo.wait(timeout=60)
        except subprocess.TimeoutExpired:
            demo.kill()
            raise
    assert demo.stdout is not None
    output.append(demo.stdout.read())
    # Ctrl-C ends the demo the way the shell reports an interrupt: 128 + SIGINT, quietly (no
    # traceback, from signing workers either, no "connection lost" from a database that stopped
    # before its users).
    assert code == 130, "".join(output)
    assert "Traceback" not in "".join(output), "".join(output)
    assert "connection lost" not in "".join(output), "".join(output)
    # The demo started the server, so it stops it.
    deadline = time.monotonic() + 20
    while _postmasters(home / "pg" / "data"):
        assert time.monotonic() < deadline, "Ctrl-C left the embedded PostgreSQL running"
        time.sleep(0.1)


async def test_demo_describes_statuses_as_the_database_has_them(
        database_url: str, tmp_path: Path) -> None:
    """On reuse, a leaf revoked meanwhile is shown revoked, and the commands pick leaves whose
    printed outcome is true."""
    import asyncpg

    from revoc import admin
    from revoc.demo import check_commands, describe, import_demo, leaf_statuses
    from revoc.model import Reason
    from revoc.settings import Settings

    settings = Settings(home=tmp_path, crl_out=tmp_path / "crl")
    conn = await asyncpg.connect(database_url)
    try:
        pki = await import_demo(conn, settings)
        before = await leaf_statuses(conn, pki)
        assert before[1] == "good" and before[2] == "revoked (keyCompromise)"
        serial = x509.load_pem_x509_certificate(pki.leaf(1).read_bytes()).serial_number
        with contextlib.suppress(admin.AdminError):  # an earlier run in this database
            await admin.revoke(conn, admin.RevokeRequest("demo-ca", serial, Reason.superseded))
        pki = await import_demo(conn, settings)  # the demo run again
        statuses = await leaf_statuses(conn, pki)
    finally:
        await conn.close()
    assert statuses[1] == "revoked (superseded)"
    text = describe(pki, statuses)
    assert re.search(r"leaf 1 .*leaf1\.pem  revoked \(superseded\)", text), text
    commands = check_commands(pki, settings, statuses)
    good_line = next(line for line in commands.splitlines() if line.rstrip().endswith("# good"))
    assert "leaf3.pem" in good_line  # leaf 1 is no longer good; the first good one is leaf 3
    assert "leaf1.pem" not in good_line


def test_demo_refuses_a_busy_port(home: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("REVOC_")}
        result = subprocess.run([str(Path(sys.executable).parent / "revoc"), "demo", "--home",
                                 str(home), "--port", str(port)], capture_output=True,
                                text=True, env=env, timeout=60)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "pick another with --port" in result.stderr


def test_demo_pki_follows_a_new_public_url(tmp_path: Path) -> None:
    """A demo PKI made for port 8080 gets leaves for 9090 when the demo moves there; the CA
    stays, and the same URL again changes nothing."""

    def urls(pki: DemoPki) -> set[str]:
        found = set()
        for path in pki.leaves:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
            aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
            cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
            found |= {str(d.access_location.value) for d in aia.value}
            found |= {str(n.value) for p in cdp.value for n in p.full_name or []}
        return found

    first = create_demo_pki(tmp_path, "http://127.0.0.1:8080")
    ca = first.ca.read_bytes()
    assert urls(first) == {"http://127.0.0.1:8080/ocsp", "http://127.0.0.1:8080/crl/demo-ca.crl"}
    moved = create_demo_pki(tmp_path, "http://127.0.0.1:9090")
    assert urls(moved) == {"http://127.0.0.1:9090/ocsp", "http://127.0.0.1:9090/crl/demo-ca.crl"}
    assert moved.ca.read_bytes() == ca
    leaves = [path.read_bytes() for path in moved.leaves]
    again = create_demo_pki(tmp_path, "http://127.0.0.1:9090")
    assert [path.read_bytes() for path in again.leaves] == leaves
    # The leaves still chain to the demo CA (OpenSSL as the oracle).
    result = subprocess.run(["openssl", "verify", "-CAfile", str(again.chain),
                             str(again.leaf(1))], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
