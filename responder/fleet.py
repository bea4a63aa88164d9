"""What one /metrics scrape of any responder says about the whole service.

`FleetView.refresh` reads, every few seconds, the workers' heartbeats (revoc/workers.py), the
quarantine and the age of the oldest status change that OCSP or the CRLs do not reflect yet.
`FleetCollector` turns the last reading into metric families, so an operator alerts on:

- `revoc_worker_newest_heartbeat_age_seconds{kind}`: no presigner / publisher alive;
- `revoc_oldest_unreflected_change_seconds{path}`: a revocation not visible after N seconds
  (BR: on a CRL within 24 h);
- `revoc_quarantined_rows{kind}`: rows a worker skipped because it could not encode them;
- `revoc_store_up` and `revoc_changes_unsynced_seconds`: this responder's own view;
- `revoc_revocation_lag_seconds{path}`: commit-to-OCSP and commit-to-CRL lag per change, summed
  over every worker's histogram.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from revoc.queries import queries
from revoc.workers import LAG_BUCKETS

UNREFLECTED_SECONDS = 30.0
_LAG_PATHS = (("ocsp", "ocsp_lag_seconds"), ("crl", "crl_lag_seconds"))


@dataclass(frozen=True, slots=True)
class WorkerBeat:
    kind: str
    host: str
    pid: int
    beat_age: float
    ok_age: float | None
    stopped: bool
    stats: dict[str, Any]


@dataclass(slots=True)
class FleetView:
    """The last reading (empty until the first one succeeds)."""

    workers: list[WorkerBeat] = field(default_factory=list)
    quarantined: dict[str, int] = field(default_factory=dict)
    unreflected: dict[str, float | None] = field(default_factory=dict)
    read_once: bool = False
    _unreflected_at: float = -1e9

    async def refresh(self, pool: asyncpg.Pool, read_timeout: float) -> None:
        timeout = read_timeout
        q = queries()
        # The unreflected-change ages scan the crls table and recent changes: every responder
        # worker asks, so they are read at most every UNREFLECTED_SECONDS, the rest each call.
        due = time.monotonic() - self._unreflected_at >= UNREFLECTED_SECONDS
        async with pool.acquire(timeout=timeout) as conn:
            rows = await conn.fetch(q["workers_all"], timeout=timeout)
            counts = await conn.fetch(q["quarantine_counts"], timeout=timeout)
            ages = (await conn.fetchrow(q["responder_oldest_unreflected"], timeout=timeout * 4)
                    if due else None)
        self.workers = [
            WorkerBeat(row["kind"], row["host"], row["pid"], row["beat_age"], row["ok_age"],
                       row["stopped_at"] is not None, _stats(row["stats"]))
            for row in rows]
        self.quarantined = {row["kind"]: row["rows"] for row in counts}
        if ages is not None:
            self.unreflected = {"ocsp": ages["ocsp"], "crl": ages["crl"]}
            self._unreflected_at = time.monotonic()
        self.read_once = True


def _stats(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = json.loads(value)
    return value if isinstance(value, dict) else {}


class FleetCollector(Collector):
    def __init__(self, view: FleetView, *, store_up: Callable[[], bool],
                 unsynced: Callable[[], float]) -> None:
        self._view = view
        self._store_up = store_up
        self._unsynced = unsynced

    def collect(self) -> Iterator[Metric]:
        view = self._view
        yield GaugeMetricFamily("revoc_store_up",
                                "1 while this responder's PostgreSQL answers its probes",
                                1.0 if self._store_up() else 0.0)
        unsynced = self._unsynced()
        yield GaugeMetricFamily(
            "revoc_changes_unsynced_seconds",
            "Seconds since this responder last asked PostgreSQL which certificates changed",
            unsynced if math.isfinite(unsynced) and unsynced < 1e8 else -1.0)
        age = GaugeMetricFamily(
            "revoc_worker_heartbeat_age_seconds", "Seconds since each worker's last heartbeat",
            labels=["kind", "host", "pid", "state"])
        newest: dict[str, float] = {}
        for worker in view.workers:
            state = "stopped" if worker.stopped else "running"
            age.add_metric([worker.kind, worker.host, str(worker.pid), state], worker.beat_age)
            if not worker.stopped:
                newest[worker.kind] = min(newest.get(worker.kind, math.inf), worker.beat_age)
        yield age
        newest_family = GaugeMetricFamily(
            "revoc_worker_newest_heartbeat_age_seconds",
            "Age of the freshest heartbeat of a running worker of each kind (+Inf: none)",
            labels=["kind"])
        for kind in ("presign", "publish", "serve"):
            newest_family.add_metric([kind], newest.get(kind, math.inf))
        yield newest_family
        quarantined = GaugeMetricFamily(
            "revoc_quarantined_rows", "Rows a worker could not encode and skipped",
            labels=["kind"])
        for kind in ("presign", "publish"):
            quarantined.add_metric([kind], view.quarantined.get(kind, 0))
        yield quarantined
        unreflected = GaugeMetricFamily(
            "revoc_oldest_unreflected_change_seconds",
            "Age of the oldest status change not yet reflected (0: none pending)",
            labels=["path"])
        for path in ("ocsp", "crl"):
            value = view.unreflected.get(path)
            unreflected.add_metric([path], value if value is not None else 0.0)
        yield unreflected
        findings = [float(worker.stats.get("gauges", {}).get("crl_selfcheck_findings", 0))
                    for worker in view.workers if worker.kind == "publish" and not worker.stopped]
        yield GaugeMetricFamily(
            "revoc_crl_selfcheck_findings",
            "Findings of the publishers' self-check of their latest CRLs (max over publishers)",
            max(findings, default=0.0))
        lag = HistogramMetricFamily(
            "revoc_revocation_lag_seconds",
            "Seconds from the commit of a status change to its reflection, per change",
            labels=["path"])
        for path, name in _LAG_PATHS:
            counts = [0] * (len(LAG_BUCKETS) + 1)
            total = 0.0
            for worker in view.workers:
                histogram = worker.stats.get("histograms", {}).get(name)
                if not histogram:
                    continue
                for index, count in enumerate(histogram.get("counts", [])[:len(counts)]):
                    counts[index] += int(count)
                total += float(histogram.get("sum", 0.0))
            buckets: list[tuple[str, float]] = []
            cumulative = 0
            for bound, count in zip(LAG_BUCKETS, counts, strict=False):
                cumulative += count
                buckets.append((repr(bound), cumulative))
            buckets.append(("+Inf", cumulative + counts[-1]))
            lag.add_metric([path], buckets, total)
        yield lag
