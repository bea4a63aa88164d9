"""`revoc status`: the workers' heartbeats, the latest CRL per scope, the presign backlog and the
quarantine, read in one snapshot. Information only: it never judges (that is `revoc audit`),
except for naming a worker that has been silent longer than the threshold and a CRL past its
nextUpdate, so a glance at the table shows them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg

from revoc.audit import DEFAULT_WORKER_THRESHOLD
from revoc.crl_paths import UNSHARDED, crl_name
from revoc.queries import queries


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    kind: str
    host: str
    pid: int
    state: str  # alive, silent (no heartbeat within the threshold) or stopped
    started_at: datetime
    beat_at: datetime
    beat_age: float
    last_ok: datetime | None
    ok_age: float | None
    last_error: str | None
    last_error_at: datetime | None
    stopped_at: datetime | None


@dataclass(frozen=True, slots=True)
class CrlStatus:
    issuer: str
    shard: int | None  # None: the issuer-wide CRL
    kind: str
    name: str
    number: int
    base_number: int | None
    this_update: datetime
    next_update: datetime
    entries: int
    size: int
    max_change_seq: int
    expired: bool


@dataclass(frozen=True, slots=True)
class Status:
    now: datetime
    workers: list[WorkerStatus]
    crls: list[CrlStatus]
    backlog_changes: int  # status changes not reflected in OCSP yet (ocsp_pending)
    backlog_oldest: datetime | None
    backlog_age: float | None
    quarantine: dict[str, int]


async def read_status(conn: asyncpg.Connection, *,
                      worker_threshold: float = DEFAULT_WORKER_THRESHOLD) -> Status:
    q = queries()
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        now: datetime = await conn.fetchval(q["status_now"])
        workers = [
            WorkerStatus(
                kind=row["kind"], host=row["host"], pid=row["pid"],
                state=("stopped" if row["stopped_at"] is not None
                       else "alive" if row["beat_age"] <= worker_threshold else "silent"),
                started_at=row["started_at"], beat_at=row["beat_at"], beat_age=row["beat_age"],
                last_ok=row["last_ok"], ok_age=row["ok_age"], last_error=row["last_error"],
                last_error_at=row["last_error_at"], stopped_at=row["stopped_at"])
            for row in await conn.fetch(q["workers_all"])]
        crls = [
            CrlStatus(
                issuer=row["issuer"], shard=None if row["shard"] == UNSHARDED else row["shard"],
                kind=row["kind"], name=crl_name(row["issuer"], row["shard"], row["kind"]),
                number=int(row["number"]),
                base_number=int(row["base_number"]) if row["base_number"] is not None else None,
                this_update=row["this_update"], next_update=row["next_update"],
                entries=row["entries"], size=row["size"], max_change_seq=row["max_change_seq"],
                expired=row["next_update"] < now)
            for row in await conn.fetch(q["status_latest_crls"])]
        backlog = await conn.fetchrow(q["status_presign_backlog"])
        quarantine = {"presign": 0, "publish": 0}
        for row in await conn.fetch(q["quarantine_counts"]):
            quarantine[row["kind"]] = row["rows"]
    oldest: datetime | None = backlog["oldest"]
    return Status(now=now, workers=workers, crls=crls, backlog_changes=backlog["changes"],
                  backlog_oldest=oldest,
                  backlog_age=(now - oldest).total_seconds() if oldest is not None else None,
                  quarantine=quarantine)


# ---------------------------------------------------------------- output


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h ago"
    return f"{seconds / 86400:.0f}d ago"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]]


def format_text(status: Status) -> str:
    """The human-readable report: three tables and two lines."""
    lines = [f"revoc status at {_iso(status.now)}", "", "workers"]
    if status.workers:
        lines += ["  " + line for line in _table(
            ["KIND", "HOST", "PID", "STARTED", "LAST BEAT", "LAST OK", "STATE", "LAST ERROR"],
            [[w.kind, w.host, str(w.pid), _iso(w.started_at) or "", _age(w.beat_age),
              _age(w.ok_age),
              w.state + (f" at {_iso(w.stopped_at)}" if w.stopped_at is not None else ""),
              (f"{_iso(w.last_error_at)} {w.last_error}".replace("\n", " ")[:100]
               if w.last_error else "-")]
             for w in status.workers])]
    else:
        lines.append("  no worker has written a heartbeat")
    lines += ["", "latest CRLs"]
    if status.crls:
        lines += ["  " + line for line in _table(
            ["ISSUER", "SHARD", "KIND", "NUMBER", "THIS UPDATE", "NEXT UPDATE", "ENTRIES"],
            [[c.issuer, "-" if c.shard is None else str(c.shard), c.kind, str(c.number),
              _iso(c.this_update) or "",
              (_iso(c.next_update) or "") + (" EXPIRED" if c.expired else ""), str(c.entries)]
             for c in status.crls])]
    else:
        lines.append("  no CRL published")
    lines.append("")
    if status.backlog_changes:
        lines.append(f"presign backlog: {status.backlog_changes} change(s) not yet in OCSP, "
                     f"oldest from {_iso(status.backlog_oldest)} ({_age(status.backlog_age)})")
    else:
        lines.append("presign backlog: none")
    lines.append("quarantine: " + ", ".join(f"{kind} {rows} row(s)"
                                            for kind, rows in sorted(status.quarantine.items())))
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value


def format_json(status: Status) -> str:
    """The same as JSON: times ISO 8601 UTC, ages in seconds, CRL numbers as strings (they
    exceed 2^53, which JSON readers in JavaScript would round)."""
    document = asdict(status)
    document["presign_backlog"] = {"changes": document.pop("backlog_changes"),
                                   "oldest": document.pop("backlog_oldest"),
                                   "age_seconds": document.pop("backlog_age")}
    for crl in document["crls"]:
        crl["number"] = str(crl["number"])
        if crl["base_number"] is not None:
            crl["base_number"] = str(crl["base_number"])
    return json.dumps(_jsonable(document), indent=2)


__all__ = ["CrlStatus", "Status", "WorkerStatus", "format_json", "format_text", "read_status"]
