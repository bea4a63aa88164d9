"""Heartbeats of the long-running workers (`revoc presign`, `revoc publish`, `revoc serve`).

Each worker process keeps one row in `workers` (kind, host, pid): `beat_at` moves on every loop
turn, `last_ok` after every successful round, `last_error` keeps the last failure. The row's
`stats` carries the worker's counters and lag histograms (cumulative since it started), which
`revoc serve` sums over all rows into /metrics, so one scrape of any responder shows a dead
publisher (an old `beat_at`) and how long revocations take to reach OCSP and CRLs.

A heartbeat never raises: a database in trouble is exactly when the worker must keep going.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from bisect import bisect_left
from datetime import UTC, datetime
from typing import Any

import asyncpg

from revoc.queries import queries

log = logging.getLogger("revoc.workers")

BEAT_TIMEOUT = 5.0
# Seconds from the commit of a status change to the moment a worker reflected it.
LAG_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
               21600.0, 86400.0)
# InternalClientError: a pooled connection left mid-operation by a timeout while PostgreSQL
# restarted ("cannot switch to state ..."); seen ending `revoc publish` from its heartbeat.
BEAT_ERRORS: tuple[type[BaseException], ...] = (
    OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
    TimeoutError,
    asyncpg.TargetServerAttributeNotMatched)  # no writable host: a failover in progress


class LagHistogram:
    """Counts per bucket of LAG_BUCKETS (last slot: above them), a sum and a count."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(LAG_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.counts[bisect_left(LAG_BUCKETS, seconds)] += 1
        self.sum += seconds

    def as_json(self) -> dict[str, Any]:
        return {"counts": list(self.counts), "sum": self.sum}


class Heartbeat:
    """The row of this process in `workers`; see the module docstring."""

    def __init__(self, kind: str, *, host: str | None = None, pid: int | None = None) -> None:
        if kind not in ("presign", "publish", "serve"):
            raise ValueError(f"unknown worker kind {kind!r}")
        self.kind = kind
        self.host = host or socket.gethostname()
        self.pid = os.getpid() if pid is None else pid
        self.started_at = datetime.now(UTC)
        self.counters: dict[str, int] = {}
        self.histograms: dict[str, LagHistogram] = {}
        self.gauges: dict[str, float] = {}

    def count(self, name: str, amount: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount

    def observe(self, name: str, seconds: float) -> None:
        histogram = self.histograms.get(name)
        if histogram is None:
            histogram = self.histograms[name] = LagHistogram()
        histogram.observe(seconds)

    def stats_json(self) -> str:
        return json.dumps({
            "counters": self.counters,
            "gauges": self.gauges,
            "histograms": {name: h.as_json() for name, h in self.histograms.items()},
        })

    async def beat(self, target: asyncpg.Pool | asyncpg.Connection, *, ok: bool = False,
                   error: str | None = None) -> bool:
        """Write the row; False (logged at debug) when the database did not take it."""
        try:
            await target.execute(
                queries()["worker_beat"], self.kind, self.host, self.pid, ok,
                error[:500] if error else None, self.started_at, self.stats_json(),
                timeout=BEAT_TIMEOUT)
        except BEAT_ERRORS as exc:
            log.debug("heartbeat not written: %s", exc)
            return False
        return True

    async def stopped(self, target: asyncpg.Pool | asyncpg.Connection) -> None:
        """Mark the row stopped (an orderly exit; a killed worker never gets here)."""
        try:
            await target.execute(queries()["worker_stopped"], self.kind, self.host, self.pid,
                                 timeout=5.0)
        except BEAT_ERRORS as exc:
            log.debug("heartbeat stop not written: %s", exc)
