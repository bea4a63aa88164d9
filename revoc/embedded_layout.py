"""Where the embedded PostgreSQL of a base directory lives and how to reach it: the options a
server runs with, the layout of ``REVOC_HOME/pg`` (lock, state, password file, socket, data), the
description of a running server (its DSNs), and the one parser of ``REVOC_PG_LISTEN``. Plain
values, no processes: revoc/embedded_pg.py finds, starts and stops servers with them, the
supervisor (revoc/embedded_supervisor.py) and the cluster (revoc/embedded_cluster.py) run them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

SUPERUSER = "revoc"
DATABASE = "revoc"
DEFAULT_SERVER_USER = "revoc-pg"
# Socket-only servers still need a port number: it names the socket file in the private dir.
SOCKET_PORT = 5432


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be set up, started, found or stopped (one-line message)."""


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """How to run the server of one base directory (used when a command has to start it).

    ``listen``: None for the Unix socket only, else ``HOST`` or ``HOST:PORT`` for TCP as well.
    ``server_user``: the account postgres runs as when revoc runs as root (postgres refuses root).
    ``watch_pid``: stop the server when that process ends (test fixtures, benchmarks).
    ``durable=False`` adds ``--no-sync`` / ``fsync=off``: for throwaway test clusters only.
    """

    base: Path
    durable: bool = True
    listen: str | None = None
    server_user: str = DEFAULT_SERVER_USER
    watch_pid: int | None = None

    def to_json(self) -> str:
        values = asdict(self)
        values["base"] = str(self.base)
        return json.dumps(values)

    @classmethod
    def from_json(cls, text: str) -> ServerOptions:
        values: dict[str, Any] = json.loads(text)
        values["base"] = Path(values["base"])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Layout:
    """The files of one base directory."""

    base: Path

    @classmethod
    def of(cls, base: Path) -> Layout:
        return cls(Path(base).expanduser().resolve())

    @property
    def data(self) -> Path:
        return self.base / "data"

    @property
    def run(self) -> Path:
        return self.base / "run"

    @property
    def pgpass(self) -> Path:
        return self.base / "pgpass"

    @property
    def state(self) -> Path:
        return self.base / "state.json"

    @property
    def start_lock(self) -> Path:
        return self.base / "start.lock"

    @property
    def postgres_log(self) -> Path:
        return self.base / "postgres.log"

    @property
    def supervisor_log(self) -> Path:
        return self.base / "supervisor.log"


@dataclass(frozen=True, slots=True)
class Running:
    """A server that answered: where to reach it. No field holds a secret."""

    base: Path
    supervisor_pid: int
    postmaster_pid: int
    socket_dir: str
    port: int
    tcp_host: str | None
    tcp_port: int | None
    pgpass: str
    started: bool = False  # True when this call started it

    @property
    def dsn(self) -> str:
        """Unix-socket DSN; the password comes from the 0600 ``pgpass`` file it names."""
        return (f"postgresql://{SUPERUSER}@/{DATABASE}?host={quote(self.socket_dir)}"
                f"&port={self.port}&passfile={quote(self.pgpass)}")

    @property
    def tcp_dsn(self) -> str | None:
        if self.tcp_host is None or self.tcp_port is None:
            return None
        host = f"[{self.tcp_host}]" if ":" in self.tcp_host else self.tcp_host
        return (f"postgresql://{SUPERUSER}@{host}:{self.tcp_port}/{DATABASE}"
                f"?passfile={quote(self.pgpass)}")

    @classmethod
    def from_state(cls, base: Path, state: dict[str, Any], *, started: bool = False) -> Running:
        return cls(base=base, supervisor_pid=int(state["supervisor_pid"]),
                   postmaster_pid=int(state["postmaster_pid"]),
                   socket_dir=str(state["socket_dir"]), port=int(state["port"]),
                   tcp_host=state.get("tcp_host"), tcp_port=state.get("tcp_port"),
                   pgpass=str(state["pgpass"]), started=started)


def parse_listen(text: str) -> tuple[str, int | None]:
    """``HOST``, ``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); port None (or 0) means any."""
    text = text.strip()
    port: str | None
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":") or None
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, None
    if not host:
        raise ValueError("expected HOST or HOST:PORT, e.g. 127.0.0.1:5433")
    if port is None:
        return host, None
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} is not a number from 0 to 65535")
    return host, int(port) or None
