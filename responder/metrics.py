"""Responder metrics: plain integer counters on the hot path, folded into Prometheus at scrape time.

prometheus-client's Counter.inc and Histogram.observe take a lock and walk label dicts (about a
microsecond each); a warm OCSP hit takes a few microseconds in total, so the hot path only bumps
list slots and a custom collector turns them into metric families when /metrics is read.
Each worker process has its own counters (no multiprocess mode): sum them across workers.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from responder.answers import Source
from responder.cache import CachedResponse, SingleStatus
from revoc.model import OcspResponseStatus

SOURCE_NAMES = {Source.MEMO: "memo", Source.CACHE: "cache", Source.STORE: "database",
                Source.LIVE: "live"}
# Seconds; most warm hits land in the first two buckets.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                   0.25, 0.5, 1.0, 2.5)


class ResponderMetrics:
    """Counters the OCSP endpoint updates; read by `ResponderCollector`."""

    __slots__ = (
        "http_rejected",
        "latency_counts",
        "latency_sum",
        "oldest_this_update",
        "outcomes",
        "sources",
        "statuses",
    )

    def __init__(self) -> None:
        self.outcomes = [0] * 7  # indexed by OCSPResponseStatus value
        self.statuses = [0] * len(SingleStatus)  # successful answers, by SingleStatus
        self.sources = [0] * len(Source)  # successful answers, by Source
        self.http_rejected: dict[int, int] = {405: 0, 413: 0, 414: 0}
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        # Smallest thisUpdate served since the last scrape (epoch seconds); inf: none served.
        self.oldest_this_update = math.inf

    def served(self, entry: CachedResponse, source: Source) -> None:
        """Count a fresh entry as served from `source`, and mark it used for the cache."""
        entry.referenced = True
        self.outcomes[0] += 1
        self.statuses[entry.status] += 1
        self.sources[source] += 1
        if entry.this_update < self.oldest_this_update:
            self.oldest_this_update = entry.this_update

    def observe(self, seconds: float) -> None:
        self.latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds


class ResponderCollector(Collector):
    """Builds the metric families from `ResponderMetrics` and the cache sizes at scrape time."""

    def __init__(
        self,
        metrics: ResponderMetrics,
        cache_sizes: Callable[[], tuple[int, int, int]],
        now: Callable[[], float] = time.time,
        store_reads: Callable[[], tuple[int, int]] = lambda: (0, 0),
    ) -> None:
        self._metrics = metrics
        self._cache_sizes = cache_sizes
        self._store_reads = store_reads
        self._now = now
        self._last_oldest_age = 0.0

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        outcomes = CounterMetricFamily(
            "revoc_ocsp_requests", "OCSP requests by OCSPResponseStatus", labels=["outcome"])
        for status in OcspResponseStatus:
            outcomes.add_metric([status.name], m.outcomes[status.value])
        yield outcomes
        statuses = CounterMetricFamily(
            "revoc_ocsp_cert_status", "Successful answers by certificate status",
            labels=["status"])
        for single in SingleStatus:
            statuses.add_metric([single.name.lower()], m.statuses[single])
        yield statuses
        sources = CounterMetricFamily(
            "revoc_ocsp_source", "Where successful answers came from", labels=["source"])
        for source, name in SOURCE_NAMES.items():
            sources.add_metric([name], m.sources[source])
        yield sources
        rejected = CounterMetricFamily(
            "revoc_http_rejected", "Non-OCSP HTTP refusals by status code", labels=["code"])
        for code, count in m.http_rejected.items():
            rejected.add_metric([str(code)], count)
        yield rejected

        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for bound, count in zip(LATENCY_BUCKETS, m.latency_counts, strict=False):
            cumulative += count
            buckets.append((repr(bound), cumulative))
        cumulative += m.latency_counts[-1]
        buckets.append(("+Inf", cumulative))
        latency = HistogramMetricFamily(
            "revoc_ocsp_request_duration_seconds", "Time spent answering an OCSP request")
        latency.add_metric([], buckets, m.latency_sum)
        yield latency

        entries, size, memo = self._cache_sizes()
        yield GaugeMetricFamily("revoc_ocsp_cache_entries", "Responses in the cache", entries)
        yield GaugeMetricFamily("revoc_ocsp_cache_bytes", "Estimated bytes of the cache", size)
        yield GaugeMetricFamily("revoc_ocsp_memo_entries", "Exact-request memo entries", memo)
        reads, keys = self._store_reads()
        yield CounterMetricFamily(
            "revoc_ocsp_store_reads", "Batched PostgreSQL reads of pre-signed responses", reads)
        yield CounterMetricFamily(
            "revoc_ocsp_store_keys", "Cache misses those reads looked up (merged misses once)",
            keys)
        hits = m.sources[Source.MEMO] + m.sources[Source.CACHE]
        total = hits + m.sources[Source.STORE] + m.sources[Source.LIVE]
        yield GaugeMetricFamily(
            "revoc_ocsp_cache_hit_ratio", "Share of successful answers served from memory",
            hits / total if total else 0.0)
        # Age of the oldest response served since the previous scrape (kept when none served).
        if m.oldest_this_update != math.inf:
            self._last_oldest_age = max(0.0, self._now() - m.oldest_this_update)
            m.oldest_this_update = math.inf
        yield GaugeMetricFamily(
            "revoc_ocsp_oldest_served_age_seconds",
            "now - thisUpdate of the oldest response served since the previous scrape",
            self._last_oldest_age)


def build_registry(collector: ResponderCollector) -> CollectorRegistry:
    """A registry of our own per app, so several apps in one process (tests) do not clash."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
