"""`revoc serve`: the Starlette app around the raw-ASGI OCSP endpoint, and its lifespan.

The lifespan owns the resources (STYLE: nothing global and mutable): the asyncpg pool, the
response cache, the issuer index and one LISTEN connection that

- drops a certificate's cached answers on NOTIFY `ocsp_changed` ("<issuer id>:<SERIAL HEX>",
  "<issuer id>:*" drops everything),
- reloads the issuer index on NOTIFY `cert_changed` with serial `*` (bulk import) and every
  `ISSUER_RELOAD_SECONDS` (`issuer add` sends no notification),
- pings PostgreSQL every `PROBE_SECONDS`; when the connection is lost it reconnects with backoff
  and then clears the cache and reloads the issuers, since notifications were missed meanwhile.

Once the first LISTEN session is up (issuers loaded, catch-up position taken), the cache is warmed
in bulk in the background (responder/cache_warm.py; `cache_warm`); /readyz does not wait for it.

Readiness (`/readyz`): 200 while PostgreSQL answered a probe within the last `READY_WINDOW`
seconds and the issuer index is loaded, else 503. A warm cache alone does not make the process
ready: issue 4 asks for 503 while the database is down, so a load balancer steers new traffic to a
healthy replica, while this one keeps answering what it has cached to whoever still comes
(`/healthz` stays 200, so nothing restarts it and its cache survives the outage).

The OCSP path bypasses Starlette's middleware and router: `ResponderApp.__call__` hands any path
`/ocsp` or `/ocsp/...` straight to the raw ASGI endpoint (measured faster than a `Mount`, which is
still registered so the route table documents it). `create_app` composes the OCSP parts: the
source stack (responder/answer_sources.py), the renderer (responder/http_render.py), the ASGI
endpoint (responder/ocsp_endpoint.py) and the fast path (responder/fast_path.py), which the
lifespan hands to the HTTP server in its state; `uvicorn_options` picks the uvicorn adapter
(responder/fast_lane.py) when its start-up self-check passes.

CRLs: `create_app` builds a `CrlStore` (responder/crl_files.py) and mounts its routes; the
lifespan calls `await store.load(pool)` after every (re)connect of the LISTEN connection and on
each NOTIFY `crl_published`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from pathlib import Path
from typing import Any

import asyncpg
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route

from responder.answer_sources import Loaded, build_stack
from responder.cache import ResponseCache
from responder.cache_warm import CacheWarmer, WarmCollector, WarmState
from responder.crl_files import CrlSizeCollector, CrlStore, crl_routes
from responder.fast_path import STATE_KEY, FastPath
from responder.fleet import FleetCollector, FleetView
from responder.gc_policy import keep_heap_frozen
from responder.http_render import HttpRenderer
from responder.metrics import ResponderCollector, ResponderMetrics, build_registry
from responder.ocsp_endpoint import OcspEndpoint, Receive, Scope, Send
from responder.sources import STORE_ERRORS, IssuerIndex, ResponseStore
from revoc.clock import Clock
from revoc.db import create_pool
from revoc.model import HashAlgorithm
from revoc.notify import CERT_CHANGED, CRL_PUBLISHED, OCSP_CHANGED, decode_serial_change
from revoc.queries import queries
from revoc.settings import Settings
from revoc.workers import Heartbeat

log = logging.getLogger("revoc.responder")

PROBE_SECONDS = 1.0
READY_WINDOW = 3.0
# A LISTEN connection whose probes keep failing this long is replaced (it may be wedged); a
# single slow probe is not a reason to drop anything.
PROBE_FAILURES_BEFORE_RECONNECT = 10
FLEET_POLL_SECONDS = 5.0
STANDBY_CRL_POLL_SECONDS = 5.0
ISSUER_RELOAD_SECONDS = 30.0
RECONNECT_MAX_SECONDS = 2.0
POOL_MAX_SIZE = 8
# How long a miss may wait for PostgreSQL (pool acquire, then the query) before `tryLater`.
STORE_TIMEOUT = 1.5
# Environment variable through which `revoc serve --workers N` hands its settings to workers.
SETTINGS_ENV = "REVOC_SERVE_SETTINGS"


class ResponderApp(Starlette):
    """Starlette with an OCSP fast lane in front of the middleware stack and router."""

    ocsp: OcspEndpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path.startswith("/ocsp") and (len(path) == 5 or path[5] == "/"):
                await self.ocsp(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


class Responder:
    """The resources the lifespan opens and closes, and the LISTEN loop that keeps them current."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool | None, clock: Clock | None,
                 crl_store: CrlStore) -> None:
        self.settings = settings
        self.pool = pool
        self.own_pool = pool is None
        self.now: Callable[[], float] = (
            time.time if clock is None else (lambda: clock.now().timestamp()))
        self.cache = ResponseCache(settings.cache_max_entries, settings.cache_max_bytes)
        self.warmer = CacheWarmer(self.cache, settings.cache_max_entries,
                                  enabled=settings.cache_warm)
        self.state = Loaded()
        self.fast_path: FastPath | None = None  # set by create_app
        self.metrics = ResponderMetrics()
        self.crl_store = crl_store
        self.last_store_ok = -1e9  # monotonic time of the last successful probe
        self.last_sync = -1e9  # monotonic time of the last successful catch-up
        self._issuers_loaded_at = -1e9
        # Catch-up state (see `_catch_up`): xmin of the previous catch-up's snapshot (None: not
        # synced since the cache was last empty) and the change_seq last acted on per key.
        self._sync_xmin: int | None = None
        self._recent: dict[tuple[int, bytes], int] = {}
        self.fleet = FleetView()
        self._conn: asyncpg.Connection | None = None  # the LISTEN connection, while held
        self.writer_pool: asyncpg.Pool | None = None  # heartbeats, when reading a replica
        self._standby = False  # reading a hot standby: no LISTEN, CRLs reloaded by polling
        self._crls_polled_at = -1e9
        self.heartbeat = Heartbeat("serve")
        self._lost = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._urls_task: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- readiness

    def store_up(self) -> bool:
        return time.monotonic() - self.last_store_ok < READY_WINDOW

    def readiness(self) -> tuple[bool, str]:
        """(ready, why). Ready while answers are correct: PostgreSQL answers, or it does not but
        the cache is warm and was in sync when it went away. A database outage shared by every
        responder must not take them all out of the load balancer at once; /metrics
        (`revoc_store_up`, `revoc_changes_unsynced_seconds`) carries the alarm instead."""
        if self.state.index is None:
            return False, "not ready: issuers not loaded yet"
        if self.store_up():
            return True, f"ready: database reachable, changes in sync; {self.warmer.describe()}"
        cached = len(self.cache)
        if cached and self._sync_xmin is not None:
            since = time.monotonic() - self.last_sync
            return True, (f"ready (degraded): database unreachable; serving {cached} cached "
                          f"response(s); last in sync {since:.0f} s ago")
        return False, "not ready: database unreachable and nothing cached"

    def ready(self) -> bool:
        return self.readiness()[0]

    # ---------------------------------------------------------------- lifespan

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[dict[str, Any]]:
        if self.pool is None:
            read_url = self.settings.read_database_url or self.settings.database_url
            if not read_url:
                raise RuntimeError("revoc serve needs a database URL")
            # min_size=0: the app starts (and serves tryLater) even while PostgreSQL is down.
            # A read replica serves everything the responder reads: NOTIFY does not cross to
            # it, but the catch-up every probe does (it asks the replica what changed), so a
            # revocation is visible within the replica's lag plus PROBE_SECONDS.
            self.pool = await create_pool(read_url, min_size=0, max_size=POOL_MAX_SIZE)
        if (self.settings.read_database_url and self.settings.database_url
                and self.settings.read_database_url != self.settings.database_url):
            # Heartbeats are writes: they go to the writer (a replica refuses them).
            self.writer_pool = await create_pool(self.settings.database_url, min_size=0,
                                                 max_size=1)
        cache = self.cache
        # Leave pool connections for the LISTEN session and live-signing lookups.
        self.state.store = ResponseStore(self.pool, STORE_TIMEOUT,
                                         generation=lambda: cache.generation,
                                         max_inflight=POOL_MAX_SIZE // 2)
        # The first LISTEN session is opened before the first request is accepted, so a fresh
        # responder knows its issuers and CRLs at once; with PostgreSQL down it starts anyway
        # (answering tryLater) and the listener keeps trying.
        first: asyncpg.Connection | None = None
        try:
            first = await self._connect_listener()
        except STORE_ERRORS as exc:
            log.warning("starting without the database (%s); retrying in the background", exc)
        self._conn = first
        listener = asyncio.create_task(self._listen_forever(first), name="revoc-listen")
        # One scan of the cache by the cyclic GC a round, not a pause of the whole heap
        # (responder/gc_policy.py).
        freezer = asyncio.create_task(keep_heap_frozen(), name="revoc-gc")
        fleet = asyncio.create_task(self._poll_fleet_forever(), name="revoc-fleet")
        try:
            # The HTTP server's adapter (responder/fast_lane.py) finds the fast path here.
            yield {STATE_KEY: self.fast_path}
        finally:
            for task in (listener, freezer, fleet, *self._tasks):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if self._conn is not None:  # the listener was cancelled before it ever ran
                await self._release(self._conn)
                self._conn = None
            if self.state.store is not None:
                await self.state.store.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.heartbeat.stopped(self.writer_pool or self.pool),
                                       timeout=2)
            if self.own_pool:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.pool.close(), timeout=5)
            if self.writer_pool is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.writer_pool.close(), timeout=5)

    async def _load_crls(self) -> None:
        if self.pool is None:
            return
        try:
            await self.crl_store.load(self.pool, urls=False)
        except STORE_ERRORS as exc:  # the database went away meanwhile: one line, no traceback
            log.warning("loading CRLs failed: %s: %s", type(exc).__name__, exc)
        except Exception:
            log.warning("loading CRLs failed", exc_info=True)  # retried on the next notify
        if self.crl_store.urls_stale and (self._urls_task is None or self._urls_task.done()):
            # The CCADB URL lists scan every certificate: in the background, one at a time
            # (a CRL loaded meanwhile marks them stale again and the loop runs once more).
            self._urls_task = asyncio.get_running_loop().create_task(self._refresh_urls())
            self._tasks.add(self._urls_task)
            self._urls_task.add_done_callback(self._tasks.discard)

    async def _refresh_urls(self) -> None:
        while self.crl_store.urls_stale and self.pool is not None:
            try:
                await self.crl_store.refresh_urls(self.pool)
            except STORE_ERRORS as exc:
                log.warning("computing the CRL URL lists failed: %s: %s",
                            type(exc).__name__, exc)
                return  # still stale: the next CRL load starts it again
            except Exception:
                log.warning("computing the CRL URL lists failed", exc_info=True)
                return

    # ---------------------------------------------------------------- LISTEN

    async def _connect_listener(self) -> asyncpg.Connection:
        """Open a LISTEN session, then reload what may have changed while nobody listened."""
        assert self.pool is not None
        conn: asyncpg.Connection = await self.pool.acquire(timeout=STORE_TIMEOUT)
        try:
            self._lost.clear()
            conn.add_termination_listener(lambda _c: self._lost.set())
            # A hot standby refuses LISTEN (and NOTIFY does not cross to it): there the
            # catch-up every probe is the only way changes arrive.
            if not await conn.fetchval(queries()["responder_in_recovery"],
                                       timeout=STORE_TIMEOUT):
                for channel in (OCSP_CHANGED, CERT_CHANGED, CRL_PUBLISHED):
                    await conn.add_listener(channel, self._on_notify)
            else:
                self._standby = True
            # Listening first, then catching up: a change committed in between is seen by one
            # or the other. Never a flush: only what changed while nobody listened is dropped.
            await self._catch_up(conn)
            await self._load_issuers(conn)
            await self._load_crls()
        except BaseException:
            await self._release(conn)
            raise
        self.last_store_ok = time.monotonic()
        log.info("listening for changes; %d issuer(s) loaded",
                 len(self.state.index.by_id) if self.state.index else 0)
        if self.warmer.state is WarmState.WAITING:
            # In sync now (the catch-up ran): invalidations from here on reach the fill.
            self._spawn(self.warmer.run(self.pool))
        return conn

    async def _listen_forever(self, conn: asyncpg.Connection | None) -> None:
        backoff = 0.1
        while True:
            try:
                if conn is None:
                    self._conn = conn = await self._connect_listener()
                backoff = 0.1
                await self._probe(conn)
            except asyncio.CancelledError:
                raise
            except STORE_ERRORS as exc:
                log.warning("database connection lost or unreachable: %s", exc)
            except Exception:
                log.exception("listener failed")
            finally:
                if conn is not None:
                    self._conn = None
                    await self._release(conn)
                conn = None
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RECONNECT_MAX_SECONDS)

    async def _release(self, conn: asyncpg.Connection) -> None:
        assert self.pool is not None
        try:
            if conn.is_closed():
                await self.pool.release(conn)
            else:
                conn.terminate()  # do not let a LISTEN session go back to the pool
                await self.pool.release(conn)
        except Exception:  # release of a dead connection: the pool replaces it anyway
            log.debug("releasing the listener connection failed", exc_info=True)

    async def _probe(self, conn: asyncpg.Connection) -> None:
        """Every PROBE_SECONDS: ask PostgreSQL what changed (also the liveness probe). A probe
        that times out marks the store down and tries again on the same connection; only a
        closed connection, or one failing for PROBE_FAILURES_BEFORE_RECONNECT probes in a row,
        is replaced. The cache is never cleared for it."""
        failures = 0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), timeout=PROBE_SECONDS)
            if self._lost.is_set() or conn.is_closed():
                raise ConnectionError("LISTEN connection closed")
            try:
                await self._catch_up(conn)
            except (TimeoutError, asyncpg.QueryCanceledError) as exc:
                failures += 1
                log.warning("database probe %d failed (%s); keeping the connection and the "
                            "cache", failures, type(exc).__name__)
                if failures >= PROBE_FAILURES_BEFORE_RECONNECT:
                    raise ConnectionError("probes keep failing") from exc
                continue
            failures = 0
            if time.monotonic() - self._issuers_loaded_at > ISSUER_RELOAD_SECONDS:
                await self._load_issuers(conn)
            if self._standby and time.monotonic() - self._crls_polled_at > STANDBY_CRL_POLL_SECONDS:
                self._crls_polled_at = time.monotonic()
                await self._load_crls()  # no crl_published here; only changed CRLs are read

    async def _catch_up(self, conn: asyncpg.Connection) -> None:
        """Drop the cached answers of every certificate whose status changed since the previous
        catch-up (sql/queries/responder.sql `responder_changes_since`). Runs on every probe, so
        a lost notification costs at most PROBE_SECONDS; NOTIFY only makes it faster."""
        row = await conn.fetchrow(queries()["responder_changes_since"], self._sync_xmin,
                                  timeout=STORE_TIMEOUT)
        assert row is not None
        if self._sync_xmin is None and len(self.cache):
            # Never in sync while holding answers (cannot happen after start, which syncs
            # before the first request): nothing tells which are still true.
            self.cache.clear()
        recent: dict[tuple[int, bytes], int] = {}
        dropped = 0
        for issuer_id, serial, seq in zip(row["issuer_ids"], row["serials"],
                                          row["change_seqs"], strict=True):
            key = (issuer_id, bytes(serial))
            recent[key] = seq
            if self._recent.get(key) != seq:
                dropped += self.cache.invalidate(*key)
        if dropped:
            log.info("catch-up: dropped %d cached answer(s) of changed certificates", dropped)
        self._recent = recent
        self._sync_xmin = row["xmin"]
        now = time.monotonic()
        self.last_store_ok = self.last_sync = now

    async def _load_issuers(self, conn: asyncpg.Connection) -> None:
        assert self.state.store is not None
        issuers = await self.state.store.issuers(conn)
        self.state.index = IssuerIndex.build(
            issuers, live_signing=self.settings.live_signing,
            validity=self.settings.ocsp_validity, backdate=self.settings.ocsp_backdate,
            previous=self.state.index, rsa_pss=self.settings.rsa_pss)
        self._issuers_loaded_at = time.monotonic()

    def _on_notify(self, conn: asyncpg.Connection, _pid: int, channel: str, payload: str) -> None:
        try:
            if channel in (OCSP_CHANGED, CERT_CHANGED):
                change = decode_serial_change(payload)
                if change is None:
                    log.warning("ignoring %s notification %r", channel, payload)
                elif change.serial is not None:
                    # cert_changed: the old answer is wrong from now on (the store will not
                    # serve it either); ocsp_changed: a new one is stored.
                    self.cache.invalidate(change.issuer_id, change.serial)
                elif channel == CERT_CHANGED:
                    # Many certificates (an import; maybe a new issuer): the next probe's
                    # catch-up drops exactly the changed ones; reload the issuers now.
                    self._spawn(self._reload_issuers_soon())
            elif channel == CRL_PUBLISHED:
                self._spawn(self._load_crls())
        except Exception:
            log.warning("ignoring %s notification %r", channel, payload, exc_info=True)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)  # keep a reference until done (asyncio holds only weak ones)
        task.add_done_callback(self._tasks.discard)

    async def _reload_issuers_soon(self) -> None:
        # Not on the LISTEN connection: its probe may be using it at this very moment.
        assert self.pool is not None
        try:
            async with self.pool.acquire(timeout=STORE_TIMEOUT) as conn:
                await self._load_issuers(conn)
        except Exception:
            log.warning("issuer reload failed", exc_info=True)  # the probe loop retries


    async def _poll_fleet_forever(self) -> None:
        """Every FLEET_POLL_SECONDS: write this process's heartbeat and read the fleet's
        (workers, quarantine, oldest unreflected change) for /metrics."""
        while True:
            if self.pool is not None:
                self.heartbeat.gauges["cache_entries"] = len(self.cache)
                await self.heartbeat.beat(self.writer_pool or self.pool, ok=self.store_up())
                try:
                    await self.fleet.refresh(self.pool, STORE_TIMEOUT)
                except STORE_ERRORS as exc:
                    log.debug("fleet status not read: %s", exc)
                except Exception:
                    log.warning("fleet status not read", exc_info=True)
            await asyncio.sleep(FLEET_POLL_SECONDS)


# -------------------------------------------------------------------- HTTP routes


def _routes(responder: Responder, endpoint: OcspEndpoint,
            registry_text: Callable[[], bytes]) -> list[BaseRoute]:
    async def healthz(_request: Request) -> Response:
        return PlainTextResponse("ok\n")

    async def readyz(_request: Request) -> Response:
        ready, why = responder.readiness()
        return PlainTextResponse(why + "\n", status_code=200 if ready else 503)

    async def metrics(_request: Request) -> Response:
        return Response(registry_text(), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
        Route("/metrics", metrics, methods=["GET"]),
        Mount("/ocsp", app=endpoint),  # documentation only: ResponderApp intercepts first
    ]


def create_app(settings: Settings, *, pool: asyncpg.Pool | None = None,
               clock: Clock | None = None) -> Starlette:
    """The responder app. With `pool` given the caller owns it; otherwise the lifespan creates
    one from settings.database_url. `clock` drives freshness checks and live signing times."""
    crl_store = CrlStore(settings.public_url)  # with it: /crl/{issuer}/urls.json
    responder = Responder(settings, pool, clock, crl_store)
    stack = build_stack(
        cache=responder.cache, loaded=responder.state, now=responder.now,
        live_signing=settings.live_signing,
        presigned_hashes=frozenset(algorithm.value for algorithm in settings.ocsp_hashes))
    renderer = HttpRenderer()
    endpoint = OcspEndpoint(stack=stack, renderer=renderer, metrics=responder.metrics,
                            now=responder.now, max_request_bytes=settings.max_request_bytes)
    responder.fast_path = FastPath(stack, renderer, responder.metrics, responder.now,
                                   settings.max_request_bytes, endpoint)
    state = responder.state
    collector = ResponderCollector(
        responder.metrics,
        lambda: (len(responder.cache), responder.cache.size_bytes, responder.cache.memo_entries),
        responder.now,
        lambda: ((state.store.misses.batches, state.store.misses.keys_read)
                 if state.store is not None else (0, 0)))
    registry = build_registry(collector)
    registry.register(CrlSizeCollector(crl_store, settings.crl_size_limit))
    registry.register(WarmCollector(responder.warmer))
    registry.register(FleetCollector(
        responder.fleet, store_up=responder.store_up,
        unsynced=lambda: time.monotonic() - responder.last_sync))
    app = ResponderApp(
        routes=[*_routes(responder, endpoint, lambda: generate_latest(registry)),
                *crl_routes(crl_store, settings, clock=clock)],
        lifespan=responder.lifespan)
    app.ocsp = endpoint
    app.state.responder = responder
    return app


# -------------------------------------------------------------------- serving


def settings_to_env(settings: Settings) -> str:
    """Serialize settings for worker processes (JSON; Paths and hash lists as text)."""
    values: dict[str, Any] = {}
    for field in dataclasses.fields(settings):
        value = getattr(settings, field.name)
        if isinstance(value, Path):
            value = str(value)
        elif field.name == "ocsp_hashes":
            value = [algorithm.name for algorithm in value]
        values[field.name] = value
    return json.dumps(values)


def settings_from_env(text: str) -> Settings:
    values: dict[str, Any] = json.loads(text)
    for name in ("home", "crl_out"):
        values[name] = Path(values[name])
    for name in ("admin_tls_cert", "admin_tls_key", "admin_tls_client_ca"):
        if values.get(name) is not None:
            values[name] = Path(values[name])
    values["ocsp_hashes"] = tuple(HashAlgorithm[name] for name in values["ocsp_hashes"])
    return Settings(**values)


def app_from_env() -> Starlette:
    """uvicorn factory for worker processes: the settings `revoc serve` read, passed on in
    REVOC_SERVE_SETTINGS (so they are read once, by the CLI, not again per worker)."""
    return create_app(settings_from_env(os.environ[SETTINGS_ENV]))


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn settings for the responder: uvloop, httptools with the OCSP lane
    (responder/fast_lane.py) unless `fast_lane` is off or its self-check fails, behind the
    edge limits (responder/edge.py), no access log, no Server header, no WebSocket upgrades."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from responder.edge import EdgeLimits, EdgeProtocolFactory
    from responder.fast_lane import protocol_for

    lane = protocol_for(settings.fast_lane)
    protocol = lane if not isinstance(lane, str) else HttpToolsProtocol
    return {
        "host": settings.host, "port": settings.port, "loop": "uvloop",
        "http": EdgeProtocolFactory(protocol, EdgeLimits.from_settings(settings)),
        "ws": "none", "timeout_keep_alive": settings.keepalive_timeout,
        "access_log": False, "server_header": False,
        "lifespan": "on", "log_level": settings.log_level.lower(),
    }


class EmbeddedServer(uvicorn.Server):
    """uvicorn.Server inside a program that handles signals itself (`revoc demo` stops uvicorn,
    the presigner and the publisher in order); uvicorn's own handling would re-raise Ctrl-C into
    the event loop after its shutdown, with tracebacks."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def serve(settings: Settings) -> None:
    """Run uvicorn until interrupted (options from `uvicorn_options`), with the soft
    file-descriptor limit raised to the hard one first (workers inherit it)."""
    from responder.edge import raise_fd_limit

    raise_fd_limit()
    options = uvicorn_options(settings)
    if settings.workers > 1:
        os.environ[SETTINGS_ENV] = settings_to_env(settings)
        uvicorn.run("responder.app:app_from_env", factory=True, workers=settings.workers,
                    **options)
    else:
        uvicorn.run(create_app(settings), **options)
