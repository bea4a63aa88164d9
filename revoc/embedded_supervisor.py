"""The process that owns an embedded PostgreSQL: ``python -m revoc.embedded_supervisor OPTIONS FD``.

Started detached by ``revoc.embedded_pg.ensure_server`` (its first process forks and exits at
once, so the supervisor is nobody's child and outlives the command that needed it). It:

1. takes the flock on the base directory (waiting out a postmaster left by a killed supervisor),
2. prepares and starts the cluster (``revoc/embedded_cluster.py``), postgres as its child with
   ``PR_SET_PDEATHSIG``, so a kill -9 of the supervisor takes postgres down in order,
3. writes ``state.json`` and reports ``{"ready": state}`` or ``{"error": "..."}`` as one JSON
   line on file descriptor FD, which the starter waits on,
4. restarts postgres with backoff whenever it dies,
5. on SIGTERM/SIGINT (``revoc db stop``), or when the optional watched process ends, shuts
   postgres down, removes ``state.json`` and exits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import sys
import time
from types import FrameType
from typing import Any

from revoc.embedded_cluster import Cluster
from revoc.embedded_layout import EmbeddedPostgresError, Layout, ServerOptions

log = logging.getLogger("revoc.embedded.supervisor")

START_TIMEOUT = 90.0  # seconds for the first start (initdb on 2 busy cores included)
STABLE_AFTER = 60.0  # a postgres that ran this long before dying restarts at the first backoff
FIRST_BACKOFF, MAX_BACKOFF = 0.5, 30.0


class Supervisor:
    def __init__(self, options: ServerOptions, report_fd: int) -> None:
        self.options = options
        self.layout = Layout.of(options.base)
        self.cluster = Cluster(options)
        self.report_fd: int | None = report_fd
        self.stop_signal: int | None = None
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # ------------------------------------------------------------------ plumbing

    def _on_stop(self, signum: int, _frame: FrameType | None) -> None:
        self.stop_signal = signum

    def stopping(self) -> bool:
        return self.stop_signal is not None

    def _report(self, message: dict[str, Any]) -> None:
        """One JSON line to the starter; it may be gone (killed), which changes nothing here."""
        if self.report_fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self.report_fd, (json.dumps(message) + "\n").encode())
        os.close(self.report_fd)
        self.report_fd = None

    def _write_state(self, status: str) -> dict[str, Any]:
        state = self.cluster.state(status, os.getpid())
        tmp = self.layout.state.with_name("state.json.tmp")
        tmp.write_text(json.dumps(state, indent=1) + "\n")
        tmp.chmod(0o644)
        tmp.rename(self.layout.state)
        return state

    def _watch(self) -> int | None:
        """A pidfd readable once the watched process has ended (-1: it already has)."""
        if self.options.watch_pid is None:
            return None
        try:
            return os.pidfd_open(self.options.watch_pid)
        except ProcessLookupError:
            return -1

    # ------------------------------------------------------------------ run

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, self._on_stop)
        signal.signal(signal.SIGCHLD, lambda _s, _f: None)  # wakes select via the wakeup fd
        signal.set_wakeup_fd(self.wake_w)
        try:
            self.cluster.lock(time.monotonic() + START_TIMEOUT)
            self.cluster.prepare()
            if not self.cluster.start(time.monotonic() + START_TIMEOUT, self.stopping):
                self._report({"error": "stopped by a signal while starting"})
                return 0
        except (EmbeddedPostgresError, OSError) as exc:
            log.error("%s", exc)
            self.cluster.stop()
            self.cluster.release()  # before the report: a retry must not find it held
            self._report({"error": str(exc)})
            return 1
        state = self._write_state("ready")
        log.info("postgres pid %d ready on %s (port %d)%s", state["postmaster_pid"],
                 state["socket_dir"], state["port"],
                 f", TCP {state['tcp_host']}:{state['tcp_port']}" if state["tcp_host"] else "")
        self._report({"ready": state})
        try:
            self._supervise()
        finally:
            self.cluster.stop()
            self.layout.state.unlink(missing_ok=True)
            log.info("stopped")
        return 0

    def _supervise(self) -> None:
        watched = self._watch()
        if watched == -1:
            log.info("the process this server was tied to has already ended")
            return
        restart_at: float | None = None
        backoff = FIRST_BACKOFF
        started_at = time.monotonic()
        while True:
            timeout = None if restart_at is None else max(0.0, restart_at - time.monotonic())
            waiting = [self.wake_r] + ([watched] if watched is not None else [])
            readable, _, _ = select.select(waiting, [], [], timeout)
            while True:
                try:
                    if not os.read(self.wake_r, 512):
                        break
                except BlockingIOError:
                    break
            if self.stopping():
                log.info("signal %d: stopping", self.stop_signal)
                return
            if watched is not None and watched in readable:
                log.info("process %d ended: stopping", self.options.watch_pid)
                return
            now = time.monotonic()
            if restart_at is None:
                status = self.cluster.exited()
                if status is None:
                    continue
                if now - started_at > STABLE_AFTER:
                    backoff = FIRST_BACKOFF
                log.warning("postgres exited with status %d; restarting in %.1f s", status,
                            backoff)
                self.cluster.proc = None
                self._write_state("restarting")
                restart_at, backoff = now + backoff, min(backoff * 2, MAX_BACKOFF)
            elif now >= restart_at:
                try:
                    if not self.cluster.start(now + START_TIMEOUT, self.stopping):
                        return
                except EmbeddedPostgresError as exc:
                    log.error("restart failed: %s; next try in %.1f s", exc, backoff)
                    restart_at, backoff = now + backoff, min(backoff * 2, MAX_BACKOFF)
                    continue
                restart_at, started_at = None, time.monotonic()
                state = self._write_state("ready")
                log.info("postgres restarted (pid %d)", state["postmaster_pid"])


def main(argv: list[str]) -> int:
    options = ServerOptions.from_json(argv[0])
    report_fd = int(argv[1])
    if os.fork() > 0:
        os._exit(0)  # the launcher: its exit detaches us from the starter
    os.umask(0o077)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s supervisor[{os.getpid()}] %(levelname)s %(message)s")
    return Supervisor(options, report_fd).run()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
