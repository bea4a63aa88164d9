"""Long-running revoc commands as subprocesses, for tests that operate them like a user."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

REVOC = str(Path(sys.executable).parent / "revoc")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _poll(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.1)


class Daemon:
    """A `revoc` long-running command in a session of its own, its output collected as it comes."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args = args
        self.proc = subprocess.Popen([REVOC, *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env,
                                     start_new_session=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for line in list(self.lines):
                if re.search(pattern, line):
                    return line
            if self.proc.poll() is not None:
                self._reader.join(timeout=5)
                if any(re.search(pattern, line) for line in self.lines):
                    continue
                pytest.fail(f"revoc {' '.join(self.args)} exited {self.proc.returncode} "
                            f"before {pattern!r}:\n{self.output}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {pattern!r} from revoc {' '.join(self.args)} within "
                            f"{timeout} s:\n{self.output}")
            time.sleep(0.05)

    def stop(self, signum: int, timeout: float = 60) -> int:
        """Send `signum` as a terminal would (Ctrl-C: to the whole group) or as kill does."""
        if signum == signal.SIGINT:
            os.killpg(self.proc.pid, signum)
        else:
            self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            pytest.fail(f"revoc {' '.join(self.args)} did not stop on {signum}:\n{self.output}")
        self._reader.join(timeout=10)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
