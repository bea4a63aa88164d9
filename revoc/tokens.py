"""Bearer tokens of the admin API: made, listed and withdrawn by `revoc token`, checked per call.

A token is `revoc_` plus 32 random bytes in base64url (43 characters). Only its SHA-256 is
stored; `create` returns the token once. A call's token is hashed, looked up by hash and the
stored hash compared again in constant time. Scopes are ordered: read < revoke < admin, and a
token may do what its scope and every lower one allow.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from revoc.admin import AdminError, InputError
from revoc.audit_trail import Actor, record
from revoc.queries import queries

TOKEN_PREFIX = "revoc_"
_TOKEN = re.compile(r"^revoc_[A-Za-z0-9_-]{43}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class Scope(enum.IntEnum):
    read = 1
    revoke = 2
    admin = 3

    @classmethod
    def from_name(cls, text: str) -> Scope:
        try:
            return cls[text]
        except KeyError:
            raise InputError(f"scope {text!r} is not one of read, revoke, admin",
                             field="scope") from None


@dataclass(frozen=True, slots=True)
class TokenHolder:
    """Who a valid token belongs to."""

    name: str
    scope: Scope


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InputError(f"token name {name!r} must be 1-64 letters, digits, '.', '_', '@' or "
                         "'-', starting with a letter or digit", field="name")
    return name


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()


async def create_token(conn: asyncpg.Connection, name: str, scope: Scope,
                       actor: Actor | None = None) -> str:
    """Store a new token's hash and return the token (shown once, never stored)."""
    actor = actor or Actor.cli()
    check_name(name)
    token = TOKEN_PREFIX + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    q = queries()
    try:
        async with conn.transaction():
            if await conn.fetchval(q["token_live_by_name"], name) is not None:
                raise AdminError(f"a token named {name!r} exists already (withdraw it with "
                                 "`revoc token revoke` first)")
            await conn.fetchrow(q["token_insert"], name, token_hash(token), scope.name,
                                actor.name)
            await record(conn, actor, "token_create", details={"name": name,
                                                               "scope": scope.name})
    except asyncpg.UniqueViolationError:  # a concurrent create of the same name
        raise AdminError(f"a token named {name!r} exists already") from None
    return token


async def revoke_token(conn: asyncpg.Connection, name: str, actor: Actor | None = None) -> None:
    """Withdraw the live token of this name; its calls get 401 from now on."""
    actor = actor or Actor.cli()
    check_name(name)
    async with conn.transaction():
        scope = await conn.fetchval(queries()["token_revoke"], name)
        if scope is None:
            raise AdminError(f"no live token named {name!r}")
        await record(conn, actor, "token_revoke", details={"name": name, "scope": scope})


@dataclass(frozen=True, slots=True)
class TokenInfo:
    name: str
    scope: str
    created_at: datetime
    created_by: str
    revoked_at: datetime | None


async def list_tokens(conn: asyncpg.Connection, *, include_revoked: bool = False
                      ) -> list[TokenInfo]:
    return [TokenInfo(r["name"], r["scope"], r["created_at"], r["created_by"], r["revoked_at"])
            for r in await conn.fetch(queries()["token_all"], include_revoked)]


async def authenticate(conn: asyncpg.Connection, token: str) -> TokenHolder | None:
    """The holder of a live token, or None (malformed, unknown or withdrawn: all the same)."""
    if not _TOKEN.match(token):
        return None
    digest = token_hash(token)
    row = await conn.fetchrow(queries()["token_by_hash"], digest)
    if row is None or not hmac.compare_digest(bytes(row["token_sha256"]), digest):
        return None
    return TokenHolder(row["name"], Scope[row["scope"]])
