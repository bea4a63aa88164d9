"""`revoc admin-api` as a process (real uvicorn on loopback) checked by schemathesis against its
own /openapi.json, and the `revoc token` / `revoc audit-log` commands (issue 14, points 3, 4)."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from revoc.audit_trail import Actor
from revoc.cli import main
from tests.pki import make_ca, make_leaf

_names = itertools.count(1)
REVOC = str(Path(sys.executable).parent / "revoc")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture()
def env(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("REVOC_DATABASE_URL", database_url)
    return database_url


@contextlib.contextmanager
def admin_api_process(database_url: str, *extra: str
                      ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    environment = {**os.environ, "REVOC_DATABASE_URL": database_url,
                   "REVOC_LOG_LEVEL": "WARNING"}
    process = subprocess.Popen([REVOC, "admin-api", "--port",
                                str(port), *extra], env=environment, stderr=subprocess.PIPE)
    scheme = "https" if "--admin-tls-cert" in extra else "http"
    url = f"{scheme}://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_token_commands_and_cli_changes_in_the_audit_log(
        env: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    name = f"cli{os.getpid()}-{next(_names)}"
    code, token, err = run_cli(capsys, "token", "create", "--name", name, "--scope", "revoke")
    assert code == 0, err
    token = token.strip()
    assert token.startswith("revoc_") and len(token) == 49
    assert "shown only now" in err
    code, out, _ = run_cli(capsys, "token", "list")
    line = next(line for line in out.splitlines() if line.startswith(name + "\t"))
    assert "scope=revoke" in line and token not in out
    assert run_cli(capsys, "token", "create", "--name", name, "--scope", "read")[0] == 1
    assert run_cli(capsys, "token", "create", "--name", "bad name", "--scope", "read")[0] == 2
    assert run_cli(capsys, "token", "revoke", "--name", name)[0] == 0
    assert run_cli(capsys, "token", "revoke", "--name", name)[0] == 1
    code, out, _ = run_cli(capsys, "token", "list", "--all")
    assert "revoked" in next(line for line in out.splitlines() if line.startswith(name + "\t"))

    # CLI changes: issuer add, cert add, revoke, all by the OS user from "cli"
    ca = make_ca(f"{name} CA")
    cert, key = ca.write(tmp_path)
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(make_leaf(ca, 0x51).cert_pem)
    assert run_cli(capsys, "issuer", "add", "--name", name, "--cert", str(cert), "--key",
                   str(key))[0] == 0
    assert run_cli(capsys, "cert", "add", "--issuer", name, str(leaf))[0] == 0
    assert run_cli(capsys, "cert", "revoke", "--issuer", name, "--serial", "51", "--reason",
                   "superseded")[0] == 0
    assert run_cli(capsys, "cert", "revoke", "--issuer", name, "--serial", "51", "--reason",
                   "superseded")[0] == 1  # refused: no entry
    code, out, _ = run_cli(capsys, "audit-log", "--issuer", name)
    lines = out.splitlines()
    assert [line.split("\t")[3] for line in lines] == ["revoke", "cert_add", "issuer_add"]
    user = Actor.cli().name
    assert all(line.split("\t")[1:3] == [user, "cli"] for line in lines)
    assert "good->revoked(superseded)" in lines[0]
    code, out, _ = run_cli(capsys, "audit-log", "--serial", "0x51", "--issuer", name, "--json")
    assert code == 0 and '"action": "revoke"' in out
    code, out, _ = run_cli(capsys, "audit-log", "--issuer", name, "--json")
    added = json.loads(out)[-1]
    assert added["action"] == "issuer_add"
    assert added["details"] == {"profile": "private", "crl_shards": 0,
                                "key": str(key.resolve()), "ocsp_key": None,
                                "delegated_ocsp": False}
    code, out, _ = run_cli(capsys, "audit-log", "--actor", "nobody-at-all")
    assert (code, out) == (0, "")
    code, out, _ = run_cli(capsys, "audit-log", "--actor", user, "--limit", "1000")
    token_lines = [line for line in out.splitlines() if f'"name": "{name}"' in line]
    assert [line.split("\t")[3] for line in token_lines] == ["token_revoke", "token_create"]
    assert run_cli(capsys, "audit-log", "--since", "yesterday")[0] == 2


def exercise(strategy: Any, headers: dict[str, str], checks: list[Any]) -> None:
    """A bounded number of schemathesis cases (seconds, not minutes), each checked."""

    @settings(max_examples=8, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def one(case: Any) -> None:
        response = case.call(headers=headers)
        case.validate_response(response, checks=checks)

    one()


def test_uvicorn_process_answers_per_its_openapi_document(
        env: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """schemathesis: no 5xx and every answer (status, content type, body) as documented,
    for positive and negative examples of every operation, with a token of every scope."""
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        negative_data_rejection,
        response_schema_conformance,
        status_code_conformance,
    )

    name = f"live{os.getpid()}-{next(_names)}"
    code, admin_token, _ = run_cli(capsys, "token", "create", "--name", name, "--scope", "admin")
    assert code == 0
    ca = make_ca(f"{name} CA")
    cert, key = ca.write(tmp_path)
    leaf = tmp_path / "leaf.pem"
    leaf.write_bytes(make_leaf(ca, 0x61).cert_pem)
    assert run_cli(capsys, "issuer", "add", "--name", name, "--cert", str(cert), "--key",
                   str(key))[0] == 0
    assert run_cli(capsys, "cert", "add", "--issuer", name, str(leaf))[0] == 0
    headers = {"Authorization": f"Bearer {admin_token.strip()}"}

    with admin_api_process(env) as (url, process):
        # One change through the real server: the trail records the peer's address.
        revoked = httpx.post(f"{url}/v1/revocations", headers=headers, json={
            "issuer": name, "serial": "61", "reason": "keyCompromise"})
        assert revoked.status_code == 200, revoked.text
        trail = httpx.get(f"{url}/v1/audit", params={"issuer": name}, headers=headers).json()
        assert trail["entries"][0]["source"] == "127.0.0.1"
        assert trail["entries"][0]["actor"] == name

        schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
        checks = [not_a_server_error, status_code_conformance, content_type_conformance,
                  response_schema_conformance]
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {op.path for op in operations} >= {
            "/v1/revocations", "/v1/revocations/batch", "/v1/unholds", "/v1/certificates",
            "/v1/certificates/{issuer}/{serial}", "/v1/issuers", "/v1/changes", "/v1/audit"}
        negative = [*checks, negative_data_rejection]
        for operation in operations:
            for mode, wanted in ((schemathesis.GenerationMode.POSITIVE, checks),
                                 (schemathesis.GenerationMode.NEGATIVE, negative)):
                exercise(operation.as_strategy(generation_mode=mode), headers, wanted)
        # Without a token every operation but the document is 401, as documented.
        for operation in operations:
            if operation.path == "/openapi.json":
                continue
            case = operation.Case(path_parameters={"issuer": name, "serial": "61"}
                                  if "{" in operation.path else None)
            response = case.call()
            assert response.status_code == 401, (operation.path, response.text)
            case.validate_response(response, checks=checks)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 143
        assert process.stderr is not None
        assert b"Traceback" not in process.stderr.read()


def _client_certificate(ca: Any, tmp_path: Path) -> tuple[Path, Path]:
    """A TLS client certificate (EKU clientAuth) issued by `ca`, and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "device-platform")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(ca.cert.subject)
            .public_key(key.public_key()).serial_number(7)
            .not_valid_before(ca.cert.not_valid_before_utc)
            .not_valid_after(ca.cert.not_valid_after_utc)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
            .sign(ca.key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "client.pem", tmp_path / "client.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_mutual_tls_requires_a_client_certificate_and_still_a_token(
        env: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import ssl

    server_ca, client_ca, stranger_ca = (make_ca(f"{label} CA") for label in
                                         ("TLS server", "TLS clients", "Stranger"))
    server = make_leaf(server_ca, 5, name="localhost")
    server_cert, server_key = server.write(tmp_path)
    (tmp_path / "clients").mkdir()
    client_ca_pem = client_ca.write(tmp_path / "clients")[0]
    client_cert, client_key = _client_certificate(client_ca, tmp_path)
    (tmp_path / "stranger").mkdir()
    stranger_cert, stranger_key = _client_certificate(stranger_ca, tmp_path / "stranger")
    server_ca_pem = server_ca.write(tmp_path / "clients")[0]
    name = f"mtls{os.getpid()}-{next(_names)}"
    code, token, _ = run_cli(capsys, "token", "create", "--name", name, "--scope", "read")
    assert code == 0
    code, _, err = run_cli(capsys, "admin-api", "--admin-tls-client-ca", str(client_ca_pem))
    assert code == 2 and "needs --admin-tls-cert" in err

    def context(cert: Path | None, key: Path | None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(server_ca_pem))
        ctx.check_hostname = False  # the server certificate names localhost; we dial 127.0.0.1
        if cert is not None and key is not None:
            ctx.load_cert_chain(str(cert), str(key))
        return ctx

    with admin_api_process(env, "--admin-tls-cert", str(server_cert), "--admin-tls-key",
                           str(server_key), "--admin-tls-client-ca",
                           str(client_ca_pem)) as (url, _process):
        headers = {"Authorization": f"Bearer {token.strip()}"}
        with httpx.Client(verify=context(client_cert, client_key)) as http:
            assert http.get(f"{url}/v1/issuers", headers=headers).status_code == 200
            assert http.get(f"{url}/v1/issuers").status_code == 401
        for cert, key in ((None, None), (stranger_cert, stranger_key)):
            with httpx.Client(verify=context(cert, key)) as http, \
                    pytest.raises(httpx.TransportError):
                http.get(f"{url}/v1/issuers", headers=headers)
        with pytest.raises(httpx.TransportError):  # and no plain HTTP
            httpx.get(url.replace("https:", "http:") + "/v1/issuers", headers=headers)
