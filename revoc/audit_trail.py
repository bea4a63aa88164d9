"""The audit trail: who changed what, before and after, when and from where.

Every change made through revoc/admin.py, revoc/importer.py or revoc/tokens.py appends one row
to `audit_log` inside the changing transaction (`record`), so the change and its record commit
together or not at all. The table is append-only (0005: UPDATE, DELETE and TRUNCATE raise).

Who is an `Actor`: a token's name and the client's address for the admin API, the operating
system user and "cli" for the command line.
"""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from revoc.model import Reason
from revoc.queries import queries

ACTIONS = ("revoke", "unhold", "cert_add", "cert_import", "issuer_add", "issuer_replace",
           "token_create", "token_revoke")
CLI_SOURCE = "cli"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who makes a change (`name`) and from where (`source`: a client address or "cli")."""

    name: str
    source: str

    @classmethod
    def cli(cls) -> Actor:
        """The operating-system user running this process (its real uid, not $USER)."""
        try:
            name = pwd.getpwuid(os.getuid()).pw_name
        except KeyError:
            name = f"uid {os.getuid()}"
        return cls(name, CLI_SOURCE)


def certificate_state(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A certificate row's status as the trail and the API show it."""
    if row is None:
        return None
    reason = row["reason"]
    return {
        "status": row["status"],
        "reason": Reason(reason).name if reason is not None else None,
        "revoked_at": _iso(row["revoked_at"]),
        "invalidity_date": _iso(row["invalidity_date"]),
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


async def record(conn: asyncpg.Connection, actor: Actor, action: str, *,
                 issuer: str | None = None, serial: str | None = None,
                 before: Mapping[str, Any] | None = None, after: Mapping[str, Any] | None = None,
                 details: Mapping[str, Any] | None = None) -> int:
    """Append one row; call it inside the changing transaction. Returns the row's id."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    row_id: int = await conn.fetchval(
        queries()["audit_insert"], actor.name, actor.source, action, issuer, serial,
        None if before is None else json.dumps(before),
        None if after is None else json.dumps(after), json.dumps(dict(details or {})))
    return row_id


@dataclass(frozen=True, slots=True)
class AuditFilter:
    issuer: str | None = None
    serial: str | None = None  # upper-case hex, the stored form
    actor: str | None = None
    since: datetime | None = None
    before_id: int | None = None
    limit: int = 100


MAX_LIMIT = 1000


async def list_entries(conn: asyncpg.Connection, wanted: AuditFilter) -> list[dict[str, Any]]:
    """Rows of the trail, newest first, as plain JSON-ready dicts."""
    rows = await conn.fetch(queries()["audit_list"], wanted.issuer, wanted.serial, wanted.actor,
                            wanted.since, wanted.before_id, wanted.limit)
    return [{
        "id": row["id"],
        "at": _iso(row["at"]),
        "actor": row["actor"],
        "source": row["source"],
        "action": row["action"],
        "issuer": row["issuer"],
        "serial": row["serial"],
        "before": json.loads(row["before"]) if row["before"] is not None else None,
        "after": json.loads(row["after"]) if row["after"] is not None else None,
        "details": json.loads(row["details"]),
    } for row in rows]


def format_entry(entry: Mapping[str, Any]) -> str:
    """One line of `revoc audit-log`."""
    def state(value: Mapping[str, Any] | None) -> str:
        if value is None:
            return "-"
        return str(value["status"]) + (f"({value['reason']})" if value.get("reason") else "")

    where = entry["issuer"] or "-"
    if entry["serial"]:
        where += f"/{entry['serial']}"
    details = json.dumps(entry["details"], sort_keys=True) if entry["details"] else ""
    fields = [str(entry["at"]), str(entry["actor"]), str(entry["source"]),
              str(entry["action"]), where, f"{state(entry['before'])}->{state(entry['after'])}",
              details]
    return "\t".join(fields).rstrip()
