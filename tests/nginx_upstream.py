"""nginx on 127.0.0.1 balancing round-robin over several `revoc serve` instances (an `upstream`
block), for the several-responders tests; each answer says which instance gave it (X-Upstream)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from tests.daemons import _free_port
from tests.nginx_run import nginx_config, running_nginx


@contextmanager
def nginx_upstream(directory: Path, upstream_ports: Sequence[int]) -> Iterator[int]:
    """nginx proxying everything to the instances on `upstream_ports`; yields its port."""
    port = _free_port()
    root = directory / "nginx"
    root.mkdir(parents=True)
    servers = "\n".join(f"        server 127.0.0.1:{p};" for p in upstream_ports)
    body = f"""
    upstream responders {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://responders;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            add_header X-Upstream $upstream_addr always;
        }}
    }}"""
    with running_nginx(root, nginx_config(root, body, connections=256)):
        yield port
