"""Least-privilege roles (issue 14, point 5; migration 0006): each process works under its own
role and is refused outside its grant. Login roles made here are members of the four group
roles, named per run, and dropped at the end (roles are cluster-wide; the group roles are
shared by every database on the server)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp as x509_ocsp

from crl_publisher.publisher import publish_round
from responder.presign_queue import presign_once
from revoc import admin
from revoc.audit import audit, database_now
from revoc.audit_trail import Actor
from revoc.model import Reason
from revoc.settings import Settings
from revoc.tokens import Scope, create_token
from tests.pki import Party, make_ca, make_leaf, make_ocsp_responder

ROLES = ("responder", "presigner", "publisher", "admin")
REVOC = str(Path(sys.executable).parent / "revoc")


def as_user(dsn: str, user: str, password: str) -> str:
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{host}"))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def role_dsns(database_url: str) -> AsyncIterator[dict[str, str]]:
    """A login role per group role, and its DSN on the test database."""
    password = secrets.token_hex(12)
    tag = secrets.token_hex(4)
    users = {role: f"revoc_t{tag}_{role}" for role in ROLES}
    conn = await asyncpg.connect(database_url)
    try:
        for role, user in users.items():
            await conn.execute(f"CREATE ROLE {user} LOGIN PASSWORD '{password}' "
                               f"IN ROLE revoc_{role}")
        yield {role: as_user(database_url, user, password) for role, user in users.items()}
    finally:
        for user in users.values():
            await conn.execute(f"DROP ROLE IF EXISTS {user}")
        await conn.close()


REFUSED = {
    "responder": [
        "INSERT INTO ocsp_responses VALUES (1, '\\x01', 1, '\\x00', now(), now(), now(), 1)",
        "UPDATE certificates SET status = 'good'",
        "DELETE FROM ocsp_pending",
        "INSERT INTO crls (issuer_id, kind, number, this_update, next_update, max_change_seq,"
        " entries, der, sha256) VALUES (1, 'full', 1, now(), now(), 0, 0, '\\x00', '\\x00')",
        "UPDATE issuers SET crl_shards = 0",
        "INSERT INTO audit_log (actor, source, action) VALUES ('x', 'y', 'revoke')",
        "SELECT * FROM api_tokens",
        "INSERT INTO responder_certs (id, certs_block) VALUES (1, '\\xa0023000')",
    ],
    "presigner": [
        "UPDATE certificates SET status = 'good'",
        # certs elements are never changed or deleted under rows that name them (0007)
        "UPDATE responder_certs SET certs_block = '\\xa0023000'",
        "DELETE FROM responder_certs",
        "INSERT INTO crls (issuer_id, kind, number, this_update, next_update, max_change_seq,"
        " entries, der, sha256) VALUES (1, 'full', 1, now(), now(), 0, 0, '\\x00', '\\x00')",
        "UPDATE issuers SET crl_shards = 0",
        "INSERT INTO audit_log (actor, source, action) VALUES ('x', 'y', 'revoke')",
        "SELECT * FROM api_tokens",
    ],
    "publisher": [
        "UPDATE certificates SET status = 'good'",
        "UPDATE certificates SET crl_entry = NULL, reason = 1",
        "INSERT INTO ocsp_responses VALUES (1, '\\x01', 1, '\\x00', now(), now(), now(), 1)",
        "DELETE FROM ocsp_pending",
        "DELETE FROM crls",
        "UPDATE issuers SET crl_shards = 0",
        "INSERT INTO audit_log (actor, source, action) VALUES ('x', 'y', 'revoke')",
        "SELECT * FROM api_tokens",
        "LOCK TABLE certificates IN SHARE MODE",
    ],
    "admin": [
        "INSERT INTO crls (issuer_id, kind, number, this_update, next_update, max_change_seq,"
        " entries, der, sha256) VALUES (1, 'full', 1, now(), now(), 0, 0, '\\x00', '\\x00')",
        "INSERT INTO ocsp_responses VALUES (1, '\\x01', 1, '\\x00', now(), now(), now(), 1)",
        "DELETE FROM ocsp_responses",
        "DELETE FROM responder_certs",
        "DELETE FROM certificates",
        "UPDATE audit_log SET actor = 'mallory'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
        "DROP TRIGGER audit_log_no_update ON audit_log",
    ],
}


@pytest.mark.parametrize("role", ROLES)
async def test_each_role_is_refused_outside_its_grant(role_dsns: dict[str, str],
                                                      role: str) -> None:
    conn = await asyncpg.connect(role_dsns[role])
    try:
        for statement in REFUSED[role]:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                async with conn.transaction():
                    await conn.execute(statement)
        # and reads what it needs
        assert await conn.fetchval("SELECT count(*) FROM issuers") >= 0
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") >= 6
    finally:
        await conn.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_every_process_works_under_its_own_role(role_dsns: dict[str, str],
                                                      tmp_path: Path) -> None:
    """admin (issuer, certificates, revocation, token), presign, publish with the roles'
    pools; `revoc serve` as a process with the responder's DSN, and no key file left to read,
    answers `revoked` over OCSP and serves the CRL listing it."""
    name = f"roles{os.getpid()}-{secrets.token_hex(2)}"
    ca = make_ca(f"{name} CA")
    cert_path, key_path = ca.write(tmp_path)
    # A delegated responder: its certificate is stored once (responder_certs, 0007) by the
    # presigner's role and spliced into answers under the responder's.
    ocsp_cert, ocsp_key = make_ocsp_responder(ca, name=f"{name} OCSP").write(tmp_path)
    leaf = make_leaf(ca, 0x71)
    leaf_path = tmp_path / "leaf.pem"
    leaf_path.write_bytes(leaf.cert_pem)
    settings = dataclasses.replace(Settings(), presign_processes=1, crl_out=tmp_path / "crl")

    conn = await asyncpg.connect(role_dsns["admin"])
    try:
        await admin.add_issuer(conn, admin.IssuerRequest(
            name=name, cert_path=str(cert_path), key_path=str(key_path),
            ocsp_cert_path=str(ocsp_cert), ocsp_key_path=str(ocsp_key)))
        await admin.add_certificates(conn, name, [str(leaf_path)])
        await admin.revoke(conn, admin.RevokeRequest(name, 0x71, Reason.keyCompromise))
        await create_token(conn, name, Scope.read, Actor("tester", "cli"))
    finally:
        await conn.close()

    for role, step in (("presigner", presign_once), ("publisher", publish_round)):
        pool = await asyncpg.create_pool(role_dsns[role], min_size=1, max_size=4)
        try:
            report = await step(pool, settings)
            assert report.ok, (role, report)
        finally:
            await pool.close()

    conn = await asyncpg.connect(role_dsns["admin"])  # `revoc audit` reads as the admin role
    try:
        report = await audit(conn, now=await database_now(conn), grace=0.0,
                             worker_threshold=3600.0)
        assert not [f for f in report.findings if name in str(f)], report.findings
    finally:
        await conn.close()

    # The responder needs no key: with the key files gone it still answers.
    key_path.unlink()
    ocsp_key.unlink()
    await asyncio.to_thread(_serve_answers_revoked, role_dsns["responder"], name, ca, leaf)


def _serve_answers_revoked(dsn: str, name: str, ca: Party, leaf: Party) -> None:
    port = _free_port()
    environment = {**os.environ, "REVOC_DATABASE_URL": dsn,
                   "REVOC_LOG_LEVEL": "WARNING"}
    process = subprocess.Popen([REVOC, "serve", "--port", str(port)], env=environment,
                               stderr=subprocess.PIPE)
    request = (x509_ocsp.OCSPRequestBuilder()
               .add_certificate(leaf.cert, ca.cert, hashes.SHA256()).build()
               .public_bytes(Encoding.DER))
    try:
        deadline = time.monotonic() + 30
        answer = None
        while answer is None or answer.status_code != 200:
            assert process.poll() is None, process.stderr.read() if process.stderr else b""
            assert time.monotonic() < deadline, answer.text if answer else "no answer"
            try:
                answer = httpx.post(f"http://127.0.0.1:{port}/ocsp", content=request,
                                    headers={"Content-Type": "application/ocsp-request"})
            except httpx.TransportError:
                time.sleep(0.05)
        response = x509_ocsp.load_der_ocsp_response(answer.content)
        assert response.response_status is x509_ocsp.OCSPResponseStatus.SUCCESSFUL
        assert response.certificate_status is x509_ocsp.OCSPCertStatus.REVOKED
        # the pre-signed stem with the delegated responder's certificate spliced back in
        assert len(response.certificates) == 1
        crl = httpx.get(f"http://127.0.0.1:{port}/crl/{name}.crl")
        assert crl.status_code == 200
        assert x509.load_der_x509_crl(crl.content).get_revoked_certificate_by_serial_number(
            0x71) is not None
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 143
    assert process.stderr is not None
    assert b"permission denied" not in process.stderr.read()


async def test_a_change_whose_audit_row_cannot_be_written_does_not_happen(
        database_url: str, tmp_path: Path) -> None:
    """The audit row is written in the changing transaction: a writer that may change
    certificates but not append to audit_log changes nothing (issue 14, point 4)."""
    name = f"atomic{os.getpid()}-{secrets.token_hex(2)}"
    ca = make_ca(f"{name} CA")
    cert_path, key_path = ca.write(tmp_path)
    leaf_path = tmp_path / "leaf.pem"
    leaf_path.write_bytes(make_leaf(ca, 0x72).cert_pem)
    owner = await asyncpg.connect(database_url)
    user, password = f"revoc_t{secrets.token_hex(4)}_noaudit", secrets.token_hex(12)
    try:
        await admin.add_issuer(owner, admin.IssuerRequest(name=name, cert_path=str(cert_path),
                                                          key_path=str(key_path)))
        await admin.add_certificates(owner, name, [str(leaf_path)])
        await owner.execute(
            f"CREATE ROLE {user} LOGIN PASSWORD '{password}';"
            f" GRANT SELECT ON issuers, certificates, ocsp_pending TO {user};"
            f" GRANT UPDATE ON certificates TO {user};"
            f" GRANT INSERT, UPDATE ON ocsp_pending TO {user};"
            f" GRANT USAGE ON SEQUENCE cert_change_seq TO {user}")
        writer = await asyncpg.connect(as_user(database_url, user, password))
        try:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="audit_log"):
                await admin.revoke(writer, admin.RevokeRequest(name, 0x72, Reason.superseded))
        finally:
            await writer.close()
        row = await owner.fetchrow(
            "SELECT c.status, c.change_seq, (SELECT count(*) FROM ocsp_pending p"
            "  WHERE p.issuer_id = c.issuer_id AND p.serial = c.serial) AS queued"
            " FROM certificates c JOIN issuers i ON i.id = c.issuer_id WHERE i.name = $1", name)
        assert (row["status"], row["queued"]) == ("good", 0)
        actions = [r["action"] for r in await owner.fetch(
            "SELECT action FROM audit_log WHERE issuer = $1 ORDER BY id", name)]
        assert actions == ["issuer_add", "cert_add"]
    finally:
        await owner.execute(f"DROP OWNED BY {user}; DROP ROLE {user}")
        await owner.close()
