"""The admin API's Starlette app: bearer tokens with scopes, JSON in and out, every change
audited (revoc/audit_trail.py) in the transaction that makes it.

Order of checks on every call: the route (404/405), the token (401), its scope (403), the
input (400 for a body that is not JSON, 422 naming the field), then the operation (404 no such
issuer or certificate, 409 refused). Nothing is written before the last step, and the last step
is one transaction, so no error leaves anything changed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
from cryptography import x509
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from admin_api import inputs
from admin_api.openapi import openapi_document
from revoc import admin, db
from revoc.admin import AdminError, InputError, NotFound
from revoc.audit_trail import Actor, certificate_state, list_entries
from revoc.model import Reason
from revoc.queries import queries
from revoc.settings import Settings
from revoc.sync_commit import UnconfirmedCommit, confirmed
from revoc.tokens import Scope, TokenHolder, authenticate

log = logging.getLogger("revoc.admin_api")

MAX_BODY_BYTES = 4 << 20  # a batch of 1000 PEM certificates fits


class ApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers


def error_response(status: int, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "field": field}, status_code=status, headers=headers)


Handler = Callable[[Request, asyncpg.Connection, TokenHolder], Awaitable[Any]]


def endpoint(scope: Scope, handler: Handler, status: int = 200
             ) -> Callable[[Request], Awaitable[Response]]:
    """Authenticate, authorize, run `handler` on a pooled connection, map errors to JSON."""

    async def run(request: Request) -> Response:
        pool: asyncpg.Pool = request.app.state.pool
        try:
            async with pool.acquire() as conn, confirmed(conn, "the change"):
                holder = await _authorize(request, conn, scope)
                result = await handler(request, conn, holder)
        except UnconfirmedCommit as exc:  # on the primary only: not acknowledged
            return error_response(503, str(exc))
        except ApiError as exc:
            return error_response(exc.status, exc.message, exc.field, exc.headers)
        except InputError as exc:
            return error_response(422, str(exc), exc.field)
        except NotFound as exc:
            return error_response(404, str(exc), _item_field(request, exc))
        except AdminError as exc:
            return error_response(409, str(exc), _item_field(request, exc))
        except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                asyncpg.CannotConnectNowError) as exc:
            log.warning("admin API: database unavailable (%s: %s)", type(exc).__name__, exc)
            return error_response(503, "the database is unavailable; retry later")
        return JSONResponse(result, status_code=status)

    return run


def _item_field(request: Request, exc: AdminError) -> str | None:
    batch: str | None = request.app.state.batch_names.get(request.url.path)
    if exc.item is None or batch is None:
        return None
    return f"{batch}[{exc.item}]"


async def _authorize(request: Request, conn: asyncpg.Connection, scope: Scope) -> TokenHolder:
    kind, _, token = request.headers.get("authorization", "").partition(" ")
    holder = None
    if kind.lower() == "bearer" and token.strip():
        holder = await authenticate(conn, token.strip())
    if holder is None:
        raise ApiError(401, "a valid bearer token is required (Authorization: Bearer TOKEN)",
                       headers={"WWW-Authenticate": 'Bearer realm="revoc"'})
    if holder.scope < scope:
        raise ApiError(403, f"token {holder.name!r} has scope {holder.scope.name}; this call "
                       f"needs {scope.name}")
    return holder


async def _json_body(request: Request) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise ApiError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise ApiError(400, "the body is not JSON") from None


def _actor(request: Request, holder: TokenHolder) -> Actor:
    return Actor(holder.name, request.client.host if request.client else "unknown")


def _change(change: admin.Change) -> dict[str, Any]:
    return {"issuer": change.issuer, "serial": change.serial, "change_seq": change.change_seq,
            "before": change.before, "after": change.after}


def _iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def _certificate(issuer: str, row: asyncpg.Record) -> dict[str, Any]:
    state = certificate_state(row)
    assert state is not None
    return {"issuer": issuer, "serial": admin.serial_hex(bytes(row["serial"])), **state,
            "not_after": _iso(row["not_after"]), "hold_released": row["hold_released"],
            "change_seq": row["change_seq"], "changed_at": _iso(row["changed_at"]),
            "crl_url": row["crl_url"], "shard": row["shard"]}


# ---------------------------------------------------------------- handlers


async def post_revocation(request: Request, conn: asyncpg.Connection,
                          holder: TokenHolder) -> Any:
    revocation = inputs.revoke_request(await _json_body(request))
    changes = await admin.revoke_many(conn, [revocation], actor=_actor(request, holder))
    return _change(changes[0])


async def post_revocation_batch(request: Request, conn: asyncpg.Connection,
                                holder: TokenHolder) -> Any:
    revocations = inputs.revoke_batch(await _json_body(request))
    try:
        changes = await admin.revoke_many(conn, revocations, actor=_actor(request, holder))
    except InputError as exc:
        if exc.item is not None and exc.field is not None:
            exc.field = f"revocations[{exc.item}].{exc.field}"
        raise
    return {"changes": [_change(change) for change in changes]}


async def post_unhold(request: Request, conn: asyncpg.Connection, holder: TokenHolder) -> Any:
    issuer, serial = inputs.unhold_request(await _json_body(request))
    return _change(await admin.unhold_change(conn, issuer, serial, _actor(request, holder)))


async def post_certificates(request: Request, conn: asyncpg.Connection,
                            holder: TokenHolder) -> Any:
    issuer, certs = inputs.certificates_request(await _json_body(request))
    try:
        results = await admin.add_certificate_objects(conn, issuer, certs,
                                                      _actor(request, holder))
    except InputError as exc:
        if exc.item is not None:
            exc.field = f"certificates[{exc.item}]"
        raise
    return {"results": [{"serial": r.serial, "added": r.added, "shard": r.shard}
                        for r in results]}


async def get_certificate(request: Request, conn: asyncpg.Connection,
                          holder: TokenHolder) -> Any:
    _no_params(request)
    name = inputs.issuer_name(request.path_params["issuer"])
    serial = admin.serial_octets(inputs.serial(request.path_params["serial"]))
    issuer = await admin.get_issuer(conn, name)
    row = await conn.fetchrow(queries()["cert_state"], issuer.id, serial)
    if row is None:
        raise NotFound(f"serial {admin.serial_hex(serial)} is not a known certificate of "
                       f"{issuer.name}")
    return _certificate(issuer.name, row)


async def get_issuers(request: Request, conn: asyncpg.Connection, holder: TokenHolder) -> Any:
    _no_params(request)
    issuers = []
    for issuer in await admin.list_issuers(conn):
        subject = x509.load_der_x509_certificate(issuer.cert_der).subject.rfc4514_string()
        issuers.append({"name": issuer.name, "id": issuer.id, "subject": subject,
                        "profile": issuer.profile.value, "crl_shards": issuer.crl_shards,
                        "crl_key": issuer.key_path is not None,
                        "ocsp": "delegated" if issuer.ocsp_cert_der else "ca"})
    return {"issuers": issuers}


async def get_changes(request: Request, conn: asyncpg.Connection, holder: TokenHolder) -> Any:
    since, issuer_name, limit = inputs.changes_query(request.query_params)
    issuer_id = (await admin.get_issuer(conn, issuer_name)).id if issuer_name else None
    rows = await conn.fetch(queries()["cert_changes_since"], since, issuer_id, limit)
    changes = [_certificate(row["issuer"], row) for row in rows]
    return {"changes": changes, "next": changes[-1]["change_seq"] if changes else since}


async def get_audit(request: Request, conn: asyncpg.Connection, holder: TokenHolder) -> Any:
    wanted = inputs.audit_query(request.query_params)
    entries = await list_entries(conn, wanted)
    return {"entries": entries,
            "next_before_id": entries[-1]["id"] if len(entries) == wanted.limit else None}


def _no_params(request: Request) -> None:
    for key in request.query_params:
        raise InputError(f"unknown query parameter {key!r}", field=key)


async def openapi(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)


# ---------------------------------------------------------------- the app


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = {404: "no such path", 405: "method not allowed on this path"}.get(
        exc.status_code, str(exc.detail))
    return error_response(exc.status_code, message, headers=dict(exc.headers or {}))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("admin API: unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, "internal error (logged)")


def create_app(settings: Settings, *, pool: asyncpg.Pool | None = None) -> Starlette:
    """The admin API. With `pool`, the caller owns it; else the lifespan opens one on
    settings.database_url and closes it."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if pool is not None:
            app.state.pool = pool
            yield
            return
        assert settings.database_url, "the admin API needs a database URL"
        app.state.pool = await db.create_pool(settings.database_url, min_size=1, max_size=8)
        try:
            yield
        finally:
            await app.state.pool.close()

    routes = [
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/v1/revocations", endpoint(Scope.revoke, post_revocation), methods=["POST"]),
        Route("/v1/revocations/batch", endpoint(Scope.revoke, post_revocation_batch),
              methods=["POST"]),
        Route("/v1/unholds", endpoint(Scope.revoke, post_unhold), methods=["POST"]),
        Route("/v1/certificates", endpoint(Scope.admin, post_certificates), methods=["POST"]),
        Route("/v1/certificates/{issuer}/{serial}", endpoint(Scope.read, get_certificate),
              methods=["GET"]),
        Route("/v1/issuers", endpoint(Scope.read, get_issuers), methods=["GET"]),
        Route("/v1/changes", endpoint(Scope.read, get_changes), methods=["GET"]),
        Route("/v1/audit", endpoint(Scope.read, get_audit), methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error, Exception: _unexpected})
    if pool is not None:  # usable without a lifespan (httpx's ASGITransport runs none)
        app.state.pool = pool
    app.state.openapi = openapi_document([r.name for r in Reason if r is not
                                          Reason.removeFromCRL])
    app.state.batch_names = {"/v1/revocations/batch": "revocations",
                             "/v1/certificates": "certificates"}
    return app


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Where and how `revoc admin-api` listens: TLS when a certificate is set, and a required
    client certificate (mutual TLS) when a client CA is set."""
    options: dict[str, Any] = {
        "host": settings.admin_host, "port": settings.admin_port, "lifespan": "on",
        "log_level": settings.log_level.lower(), "server_header": False,
        "proxy_headers": False,  # the audit trail's address is the peer's, not a header's
    }
    if settings.admin_tls_cert is not None:
        options |= {"ssl_certfile": str(settings.admin_tls_cert),
                    "ssl_keyfile": str(settings.admin_tls_key)}
    if settings.admin_tls_client_ca is not None:
        options |= {"ssl_ca_certs": str(settings.admin_tls_client_ca),
                    "ssl_cert_reqs": ssl.CERT_REQUIRED}
    return options
