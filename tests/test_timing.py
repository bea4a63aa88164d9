"""Wall-clock bounds, apart from the correctness suite: every test here (and every test marked
`timing` elsewhere) is deselected by the default `pytest -q` (pyproject addopts) and run by
.ci/run as its own step, `pytest -q -m timing`, on an otherwise idle runner. The scenario tests
these bounds come from (tests/test_embedded_pg.py, tests/test_demo.py, tests/test_operating.py)
print what they measure and check only that things happen."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from revoc.embedded_pg import ServerOptions, ensure_server, stop_server

pytestmark = pytest.mark.timing
REVOC = str(Path(sys.executable).parent / "revoc")


@pytest.fixture
def home() -> Iterator[Path]:
    parent = Path(tempfile.mkdtemp(prefix="revoc-timing-", dir="/tmp"))
    parent.chmod(0o711)
    try:
        yield parent
    finally:
        try:
            stop_server(parent / "pg", timeout=30)
        finally:
            shutil.rmtree(parent, ignore_errors=True)


def test_embedded_server_is_found_at_once_and_restarts_quickly(home: Path) -> None:
    """A command finds a running embedded server in under 2 s; a stopped one restarts in 10."""
    options = ServerOptions(home / "pg", durable=False)
    assert ensure_server(options).started
    started = time.monotonic()
    assert not ensure_server(options).started
    found_in = time.monotonic() - started
    assert stop_server(options.base)
    started = time.monotonic()
    assert ensure_server(options).started
    restart = time.monotonic() - started
    assert found_in < 2 and restart < 10, (found_in, restart)


def test_admin_command_against_a_running_embedded_server_is_quick(home: Path) -> None:
    """An admin command run while the embedded server runs (a demo or daemons in another shell)
    takes well under a second of its own; 3 s allows for a busy runner."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REVOC_")}
    env["REVOC_HOME"] = str(home)
    first = subprocess.run([REVOC, "issuer", "list"], capture_output=True, text=True, env=env,
                           timeout=120)  # starts the server and creates the schema
    assert first.returncode == 0, first.stderr
    started = time.monotonic()
    again = subprocess.run([REVOC, "issuer", "list"], capture_output=True, text=True, env=env,
                           timeout=60)
    took = time.monotonic() - started
    assert again.returncode == 0, again.stderr
    assert took < 3, f"issuer list took {took:.2f} s"
