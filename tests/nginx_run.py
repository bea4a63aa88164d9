"""nginx as a test peer on 127.0.0.1 (the caching proxy of tests/edge_proxy.py, the load balancer
of tests/nginx_upstream.py): the common config preamble, start, wait for its pid file, stop."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def nginx_config(root: Path, http_body: str, *, head: str = "", connections: int = 64) -> str:
    """A whole nginx.conf: `head` (e.g. load_module) then a foreground single worker whose files
    all live under `root`, and `http_body` inside the http block."""
    return f"""
{head}
daemon off;
{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
{http_body}
}}
"""


@contextmanager
def running_nginx(root: Path, config: str) -> Iterator[int]:
    """nginx with `config` (written to root/nginx.conf); yields its pid once it wrote its pid
    file; stopped with SIGQUIT, then SIGKILL, on exit."""
    conf = root / "nginx.conf"
    conf.write_text(config)
    proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(root)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not (root / "nginx.pid").exists():
            if proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {proc.stderr.read() if proc.stderr else ''}")
            if time.monotonic() > deadline:
                raise RuntimeError("nginx did not start within 20 s")
            time.sleep(0.05)
        yield proc.pid
    finally:
        proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
