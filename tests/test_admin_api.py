"""The admin API (issue 14, point 3) and its audit trail (point 4) against a real PostgreSQL,
through httpx on the ASGI app; once through a real uvicorn on loopback, with schemathesis
checking the answers against /openapi.json."""

from __future__ import annotations

import itertools
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import pytest_asyncio

from admin_api.app import create_app
from revoc import admin
from revoc.audit_trail import Actor
from revoc.model import Profile
from revoc.settings import Settings
from revoc.tokens import Scope, create_token, revoke_token
from tests.pki import Party, make_ca, make_leaf

_names = itertools.count(1)
NOT_BEFORE = datetime(2025, 1, 1, tzinfo=UTC)


class Pki:
    def __init__(self, name: str, ca: Party, leaves: dict[int, Party]) -> None:
        self.name, self.ca, self.leaves = name, ca, leaves


async def make_pki(conn: asyncpg.Connection, tmp_path: Path, serials: range,
                   profile: Profile = Profile.PRIVATE) -> Pki:
    name = f"api{os.getpid()}-{next(_names)}"
    ca = make_ca(f"{name} CA")
    cert, key = ca.write(tmp_path)
    await admin.add_issuer(conn, admin.IssuerRequest(name=name, cert_path=str(cert),
                                                     key_path=str(key), profile=profile))
    leaves = {s: make_leaf(ca, s, not_before=NOT_BEFORE) for s in serials}
    bundle = tmp_path / f"{name}-leaves.pem"
    bundle.write_bytes(b"".join(p.cert_pem for p in leaves.values()))
    await admin.add_certificates(conn, name, [str(bundle)])
    return Pki(name, ca, leaves)


@pytest_asyncio.fixture(loop_scope="session")
async def client(pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(), pool=pool)
    transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://admin") as http:
        yield http


@pytest_asyncio.fixture(loop_scope="session")
async def tokens(pool: asyncpg.Pool) -> dict[str, str]:
    """One live token per scope (key: the scope), and its name (key: "<scope>_name")."""
    suffix = next(_names)
    result = {}
    async with pool.acquire() as conn:
        for scope in Scope:
            name = f"{scope.name}-{os.getpid()}-{suffix}"
            result[scope.name] = await create_token(conn, name, scope)
            result[f"{scope.name}_name"] = name
    return result


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def status_of(pool: asyncpg.Pool, issuer: str, serial: int) -> tuple[str, int | None]:
    row = await pool.fetchrow(
        "SELECT c.status, c.reason FROM certificates c JOIN issuers i ON i.id = c.issuer_id"
        " WHERE i.name = $1 AND c.serial = $2", issuer, admin.serial_octets(serial))
    return row["status"], row["reason"]


async def audit_count(pool: asyncpg.Pool, issuer: str) -> int:
    count: int = await pool.fetchval("SELECT count(*) FROM audit_log WHERE issuer = $1", issuer)
    return count


async def test_without_a_valid_token_or_scope_nothing_changes(
        pool: asyncpg.Pool, client: httpx.AsyncClient, tokens: dict[str, str],
        tmp_path: Path) -> None:
    async with pool.acquire() as conn:
        pki = await make_pki(conn, tmp_path, range(1, 3))
        gone_name = f"gone-{os.getpid()}-{next(_names)}"
        gone = await create_token(conn, gone_name, Scope.admin)
        await revoke_token(conn, gone_name)
    before = await audit_count(pool, pki.name)
    body = {"issuer": pki.name, "serial": "01", "reason": "keyCompromise"}
    for headers, status in [
        ({}, 401),
        ({"Authorization": "Basic dXNlcjpwdw=="}, 401),
        (bearer("revoc_" + "A" * 43), 401),  # well-formed, unknown
        (bearer("not-a-token"), 401),
        (bearer(gone), 401),  # withdrawn
        (bearer(tokens["read"]), 403),
    ]:
        answer = await client.post("/v1/revocations", json=body, headers=headers)
        assert answer.status_code == status, (headers, answer.text)
        assert set(answer.json()) == {"error", "field"}
        if status == 401:
            assert answer.headers["www-authenticate"].startswith("Bearer")
    # admin scope for adding certificates: revoke is not enough
    answer = await client.post("/v1/certificates", headers=bearer(tokens["revoke"]),
                               json={"issuer": pki.name, "certificates": ["x"]})
    assert answer.status_code == 403
    assert (await client.get("/v1/issuers")).status_code == 401
    assert await status_of(pool, pki.name, 1) == ("good", None)
    assert await audit_count(pool, pki.name) == before


async def test_revoke_status_and_audit_trail(pool: asyncpg.Pool, client: httpx.AsyncClient,
                                             tokens: dict[str, str], tmp_path: Path) -> None:
    async with pool.acquire() as conn:
        pki = await make_pki(conn, tmp_path, range(1, 3))
    answer = await client.post("/v1/revocations", headers=bearer(tokens["revoke"]), json={
        "issuer": pki.name, "serial": "0x01", "reason": "keyCompromise",
        "invalidity_date": "2025-06-01T00:00:00Z"})
    assert answer.status_code == 200, answer.text
    change = answer.json()
    assert change["serial"] == "01"
    assert change["before"]["status"] == "good"
    assert change["after"]["status"] == "revoked"
    assert change["after"]["reason"] == "keyCompromise"
    assert change["after"]["invalidity_date"] == "2025-06-01T00:00:00Z"
    assert await status_of(pool, pki.name, 1) == ("revoked", 1)

    read = bearer(tokens["read"])
    cert = (await client.get(f"/v1/certificates/{pki.name}/01", headers=read)).json()
    assert cert["status"] == "revoked"
    assert cert["reason"] == "keyCompromise"
    assert cert["revoked_at"] is not None
    assert cert["change_seq"] == change["change_seq"]

    trail = (await client.get("/v1/audit", params={"issuer": pki.name, "serial": "1"},
                              headers=read)).json()["entries"]
    assert [e["action"] for e in trail] == ["revoke", "cert_add"]  # newest first
    revoked = trail[0]
    assert revoked["actor"] == tokens["revoke_name"]
    assert revoked["source"] == "192.0.2.7"
    assert revoked["before"]["status"] == "good"
    assert revoked["after"]["reason"] == "keyCompromise"
    # the CLI's additions name the OS user and "cli"
    assert trail[1]["source"] == "cli"
    assert trail[1]["actor"] == Actor.cli().name

    # refused: revoked already, for the same reason (409); nothing written
    count = await audit_count(pool, pki.name)
    again = await client.post("/v1/revocations", headers=bearer(tokens["admin"]), json={
        "issuer": pki.name, "serial": "01", "reason": "superseded"})
    assert again.status_code == 409
    assert "already revoked" in again.json()["error"]
    assert await audit_count(pool, pki.name) == count


async def test_bad_input_names_the_field_and_changes_nothing(
        pool: asyncpg.Pool, client: httpx.AsyncClient, tokens: dict[str, str],
        tmp_path: Path) -> None:
    async with pool.acquire() as conn:
        pki = await make_pki(conn, tmp_path, range(1, 3))
    headers = bearer(tokens["revoke"])
    future = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    good = {"issuer": pki.name, "serial": "02", "reason": "superseded"}
    cases: list[tuple[Any, int, str | None]] = [
        ([1, 2], 422, None),
        ({**good, "serial": "xyz"}, 422, "serial"),
        ({**good, "serial": "00"}, 422, "serial"),
        ({**good, "serial": "01" * 21}, 422, "serial"),
        ({**good, "serial": 2}, 422, "serial"),
        ({**good, "reason": "bogus"}, 422, "reason"),
        ({**good, "reason": "removeFromCRL"}, 422, "reason"),
        ({**good, "revoked_at": future}, 422, "revoked_at"),
        ({**good, "revoked_at": "yesterday"}, 422, "revoked_at"),
        ({**good, "revoked_at": "1949-12-31T23:59:59Z"}, 422, "revoked_at"),
        ({**good, "revoked_at": "2025-01-01T00:00:00Z",
          "invalidity_date": "2025-02-01T00:00:00Z"}, 422, "invalidity_date"),
        ({**good, "colour": "red"}, 422, "colour"),
        ({"issuer": pki.name, "serial": "02"}, 422, "reason"),
        ({**good, "issuer": "no such/issuer"}, 422, "issuer"),
        ({**good, "issuer": "nosuchissuer"}, 404, None),
        ({**good, "serial": "7777"}, 404, None),
    ]
    for body, status, field in cases:
        answer = await client.post("/v1/revocations", json=body, headers=headers)
        assert answer.status_code == status, (body, answer.text)
        assert answer.json()["field"] == field, (body, answer.json())
    answer = await client.post("/v1/revocations", content=b"{not json", headers=headers)
    assert answer.status_code == 400
    assert answer.json() == {"error": "the body is not JSON", "field": None}
    assert await status_of(pool, pki.name, 2) == ("good", None)
    assert await audit_count(pool, pki.name) == 3  # issuer_add and two cert_add


async def test_batch_revocation_is_all_or_nothing(pool: asyncpg.Pool,
                                                  client: httpx.AsyncClient,
                                                  tokens: dict[str, str],
                                                  tmp_path: Path) -> None:
    async with pool.acquire() as conn:
        pki = await make_pki(conn, tmp_path, range(1, 4))
    headers = bearer(tokens["revoke"])

    def item(serial: str, **extra: str) -> dict[str, str]:
        return {"issuer": pki.name, "serial": serial, "reason": "cessationOfOperation", **extra}

    unknown = await client.post("/v1/revocations/batch", headers=headers, json={
        "revocations": [item("01"), item("02"), item("0999")]})
    assert unknown.status_code == 404
    assert unknown.json()["field"] == "revocations[2]"
    bad = await client.post("/v1/revocations/batch", headers=headers, json={
        "revocations": [item("01"), item("02", revoked_at="1900-01-01T00:00:00Z")]})
    assert bad.status_code == 422
    assert bad.json()["field"] == "revocations[1].revoked_at"
    late_bad = await client.post("/v1/revocations/batch", headers=headers, json={
        "revocations": [item("01"), item("02", revoked_at="2025-01-01T00:00:00Z",
                                          invalidity_date="2025-03-01T00:00:00Z")]})
    assert late_bad.status_code == 422
    assert late_bad.json()["field"] == "revocations[1].invalidity_date"
    for serial in (1, 2, 3):
        assert await status_of(pool, pki.name, serial) == ("good", None)
    assert await audit_count(pool, pki.name) == 4  # issuer_add and three cert_add

    ok = await client.post("/v1/revocations/batch", headers=headers, json={
        "revocations": [item("01"), item("03")]})
    assert ok.status_code == 200, ok.text
    assert [c["serial"] for c in ok.json()["changes"]] == ["01", "03"]
    assert await status_of(pool, pki.name, 1) == ("revoked", 5)
    assert await status_of(pool, pki.name, 2) == ("good", None)
    assert await audit_count(pool, pki.name) == 6


async def test_unhold_and_profile_refusal(pool: asyncpg.Pool, client: httpx.AsyncClient,
                                          tokens: dict[str, str], tmp_path: Path) -> None:
    async with pool.acquire() as conn:
        pki = await make_pki(conn, tmp_path, range(1, 3))
        br = await make_pki(conn, tmp_path, range(1, 2), Profile.BR)
    headers = bearer(tokens["revoke"])
    not_held = await client.post("/v1/unholds", headers=headers,
                                 json={"issuer": pki.name, "serial": "01"})
    assert not_held.status_code == 409
    hold = await client.post("/v1/revocations", headers=headers, json={
        "issuer": pki.name, "serial": "01", "reason": "certificateHold"})
    assert hold.status_code == 200
    released = await client.post("/v1/unholds", headers=headers,
                                 json={"issuer": pki.name, "serial": "01"})
    assert released.status_code == 200, released.text
    assert released.json()["before"]["reason"] == "certificateHold"
    assert released.json()["after"]["status"] == "good"
    assert await status_of(pool, pki.name, 1) == ("good", None)
    forbidden = await client.post("/v1/revocations", headers=headers, json={
        "issuer": br.name, "serial": "01", "reason": "certificateHold"})
    assert forbidden.status_code == 409
    assert "br profile" in forbidden.json()["error"]
    trail = (await client.get("/v1/audit", params={"issuer": pki.name, "serial": "01"},
                              headers=headers)).json()["entries"]
    assert [e["action"] for e in trail] == ["unhold", "revoke", "cert_add"]


async def test_add_certificates_in_pem(pool: asyncpg.Pool, client: httpx.AsyncClient,
                                       tokens: dict[str, str], tmp_path: Path) -> None:
    async with pool.acquire() as conn:
        pki = await make_pki(conn, tmp_path, range(1, 2))
    headers = bearer(tokens["admin"])
    new = make_leaf(pki.ca, 0x42, not_before=NOT_BEFORE).cert_pem.decode()
    stranger = make_leaf(make_ca("Someone else"), 0x43, not_before=NOT_BEFORE).cert_pem.decode()
    bad = await client.post("/v1/certificates", headers=headers,
                            json={"issuer": pki.name, "certificates": [new, "garbage"]})
    assert (bad.status_code, bad.json()["field"]) == (422, "certificates[1]")
    foreign = await client.post("/v1/certificates", headers=headers,
                                json={"issuer": pki.name, "certificates": [new, stranger]})
    assert (foreign.status_code, foreign.json()["field"]) == (409, "certificates[1]")
    read = bearer(tokens["read"])
    assert (await client.get(f"/v1/certificates/{pki.name}/42", headers=read)).status_code == 404
    added = await client.post("/v1/certificates", headers=headers,
                              json={"issuer": pki.name, "certificates": [new]})
    assert added.status_code == 200, added.text
    assert added.json()["results"] == [{"serial": "42", "added": True, "shard": None}]
    again = await client.post("/v1/certificates", headers=headers,
                              json={"issuer": pki.name, "certificates": [new]})
    assert again.json()["results"][0]["added"] is False
    cert = (await client.get(f"/v1/certificates/{pki.name}/42", headers=read)).json()
    assert cert["status"] == "good"
    trail = (await client.get("/v1/audit", params={"serial": "42", "issuer": pki.name},
                              headers=read)).json()["entries"]
    assert len(trail) == 1
    assert trail[0]["action"] == "cert_add"
    assert trail[0]["source"] == "192.0.2.7"


async def test_issuers_and_recent_changes(pool: asyncpg.Pool, client: httpx.AsyncClient,
                                          tokens: dict[str, str], tmp_path: Path) -> None:
    async with pool.acquire() as conn:
        pki = await make_pki(conn, tmp_path, range(1, 3))
    read = bearer(tokens["read"])
    issuers = (await client.get("/v1/issuers", headers=read)).json()["issuers"]
    mine = next(i for i in issuers if i["name"] == pki.name)
    assert mine["profile"] == "private"
    assert mine["crl_key"] is True
    first = (await client.get("/v1/changes", params={"issuer": pki.name},
                              headers=read)).json()
    assert [c["serial"] for c in first["changes"]] == ["01", "02"]
    await client.post("/v1/revocations", headers=bearer(tokens["revoke"]), json={
        "issuer": pki.name, "serial": "02", "reason": "superseded"})
    later = (await client.get("/v1/changes", params={"issuer": pki.name,
                                                     "since": first["next"]},
                              headers=read)).json()
    assert [(c["serial"], c["status"]) for c in later["changes"]] == [("02", "revoked")]
    bad = await client.get("/v1/changes", params={"since": "-1"}, headers=read)
    assert (bad.status_code, bad.json()["field"]) == (422, "since")
    unknown = await client.get("/v1/nothing", headers=read)
    assert unknown.status_code == 404
    assert unknown.json()["field"] is None
    spec = await client.get("/openapi.json")
    assert spec.status_code == 200
    assert "/v1/revocations" in spec.json()["paths"]


async def test_audit_log_is_append_only(pool: asyncpg.Pool, tmp_path: Path) -> None:
    async with pool.acquire() as conn:
        pki = await make_pki(conn, tmp_path, range(1, 2))
    for statement in (f"UPDATE audit_log SET actor = 'mallory' WHERE issuer = '{pki.name}'",
                      f"DELETE FROM audit_log WHERE issuer = '{pki.name}'",
                      "TRUNCATE audit_log"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
            await pool.execute(statement)
    assert await audit_count(pool, pki.name) == 2  # issuer_add, cert_add
