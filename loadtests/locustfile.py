"""Load scenarios for any OCSP/CRL deployment, as its users would load it.

Scenarios (Locust user classes; pick with the class names on the command line):

- `DeviceUser`: devices checking status at connect time. POST and GET, a configurable mix of
  good, revoked and never-issued serials, SHA-1 and SHA-256 CertIDs.
- `StaplingUser`: TLS servers refreshing their staple: GET, the same few requests repeatedly.
- `CdnCrlUser`: a CDN edge fetching CRLs with conditional GET (If-None-Match).

Request bytes are real CertIDs built from a target's certificates, taken from either
  - a running revoc's database: `LOADTEST_DATABASE_URL=postgresql://...` (reads issuers and
    certificates; never writes), or
  - files: `LOADTEST_MANIFEST=path/manifest.json` as written by `revoc demo` under
    `$REVOC_HOME/demo/`: {"issuer": "ca.pem", "crl": "<issuer name>",
    "certs": [{"path": "leaf1.pem", "status": "good"}, ...]}.

Settings (environment): `LOADTEST_MIX` (default `good:80,revoked:10,unknown:10`),
`LOADTEST_HASHES` (default `sha1,sha256`), `LOADTEST_POST_SHARE` (default 0.5),
`LOADTEST_REPORT` (write the statuses seen as JSON at the end).

Failures are counted as failures: HTTP status other than 200, a Content-Type other than
application/ocsp-response, a body that does not parse, or a certificate status other than the
one expected ("unknown" serials must never come back good).

Headless, bounded, against 127.0.0.1 only:

    LOADTEST_MANIFEST=.revoc/demo/manifest.json locust -f loadtests/locustfile.py --headless \
        -H http://127.0.0.1:8080 -u 50 -r 10 --run-time 30s DeviceUser StaplingUser CdnCrlUser
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import secrets
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import ocsp
from locust import FastHttpUser, between, constant, events, task

HASH_OIDS = {"sha1": "2b0e03021a", "sha256": "608648016503040201"}
SEEN: Counter[str] = Counter()


@dataclass(frozen=True)
class Target:
    """One CertID to ask about, and the status the answer must carry."""

    request: bytes
    expected: str  # good | revoked | unknown (never-issued: anything but good)

    @property
    def get_path(self) -> str:
        return "/ocsp/" + base64.b64encode(self.request).decode()


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(content)) + content


def _request(hash_name: str, name_hash: bytes, key_hash: bytes, serial: bytes) -> bytes:
    """An OCSPRequest with one CertID, no nonce: what stapling servers and devices send."""
    oid = bytes.fromhex(HASH_OIDS[hash_name])
    algorithm = _tlv(0x30, _tlv(0x06, oid) + b"\x05\x00")
    cert_id = _tlv(0x30, algorithm + _tlv(0x04, name_hash) + _tlv(0x04, key_hash)
                   + _tlv(0x02, serial))
    return _tlv(0x30, _tlv(0x30, _tlv(0x30, _tlv(0x30, cert_id))))


def _serial_content(value: int) -> bytes:
    length = value.bit_length() // 8 + 1
    return value.to_bytes(length, "big", signed=True)


def _key_bits(cert: x509.Certificate) -> bytes:
    from asn1crypto import keys  # decoding SubjectPublicKeyInfo once per issuer

    spki = keys.PublicKeyInfo.load(cert.public_key().public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo))
    bits: bytes = spki["public_key"].contents[1:]
    return bits


def _mix() -> dict[str, int]:
    text = os.environ.get("LOADTEST_MIX", "good:80,revoked:10,unknown:10")
    return {k: int(v) for k, v in (part.split(":") for part in text.split(",") if part)}


def _hashes() -> list[str]:
    return [h for h in os.environ.get("LOADTEST_HASHES", "sha1,sha256").split(",") if h]


def _from_manifest(path: Path) -> tuple[list[tuple[str, bytes, bytes, bytes]], list[str]]:
    manifest = json.loads(path.read_text())
    issuer = x509.load_pem_x509_certificate((path.parent / manifest["issuer"]).read_bytes())
    subject = issuer.subject.public_bytes()
    bits = _key_bits(issuer)
    rows = []
    for entry in manifest["certs"]:
        cert = x509.load_pem_x509_certificate((path.parent / entry["path"]).read_bytes())
        rows.append((entry["status"], subject, bits, _serial_content(cert.serial_number)))
    return rows, [manifest.get("crl", "")]


def _from_database(dsn: str) -> tuple[list[tuple[str, bytes, bytes, bytes]], list[str]]:
    import asyncio

    import asyncpg

    from revoc.queries import queries

    async def load() -> tuple[list[Any], list[Any]]:
        conn = await asyncpg.connect(dsn)
        try:
            issuers = await conn.fetch(queries()["loadtest_issuers"])
            certs = await conn.fetch(queries()["loadtest_certificates"], 20000)
        finally:
            await conn.close()
        return list(issuers), list(certs)

    issuers, certs = asyncio.run(load())
    by_id = {}
    for row in issuers:
        cert = x509.load_der_x509_certificate(bytes(row["cert_der"]))
        by_id[row["id"]] = (cert.subject.public_bytes(), _key_bits(cert))
    rows = [(r["status"], *by_id[r["issuer_id"]], bytes(r["serial"])) for r in certs]
    return rows, [str(r["name"]) for r in issuers]


def load_targets() -> tuple[dict[str, list[Target]], list[str]]:
    """Targets by expected status, plus the issuer names whose CRLs to fetch."""
    dsn = os.environ.get("LOADTEST_DATABASE_URL")
    manifest = os.environ.get("LOADTEST_MANIFEST")
    if dsn:
        rows, crls = _from_database(dsn)
    elif manifest:
        rows, crls = _from_manifest(Path(manifest))
    else:
        raise SystemExit("set LOADTEST_DATABASE_URL or LOADTEST_MANIFEST (see the docstring)")
    targets: dict[str, list[Target]] = {"good": [], "revoked": [], "unknown": []}
    for status, subject, bits, serial in rows:
        for name in _hashes():
            digest = hashlib.new(name)
            name_hash = hashlib.new(name, subject).digest()
            digest.update(bits)
            targets[status].append(Target(_request(name, name_hash, digest.digest(), serial),
                                          status))
    if rows:
        _status, subject, bits, _serial = rows[0]
        for _ in range(50):  # serials nobody issued: 16 random octets
            serial = b"\x7f" + secrets.token_bytes(15)
            for name in _hashes():
                targets["unknown"].append(Target(_request(
                    name, hashlib.new(name, subject).digest(), hashlib.new(name, bits).digest(),
                    serial), "unknown"))
    return targets, [c for c in crls if c]


TARGETS, CRL_ISSUERS = load_targets()
MIX = {k: v for k, v in _mix().items() if TARGETS.get(k)}
POST_SHARE = float(os.environ.get("LOADTEST_POST_SHARE", "0.5"))


def check_ocsp(response: Any, target: Target) -> None:
    """Mark a response as failed unless it is a parseable answer with the expected status."""
    if response.status_code != 200:
        response.failure(f"HTTP {response.status_code}")
        return
    content_type = response.headers.get("Content-Type")
    if content_type != "application/ocsp-response":
        response.failure(f"Content-Type {content_type!r}")
        return
    try:
        parsed = ocsp.load_der_ocsp_response(response.content)
    except ValueError as exc:
        response.failure(f"unparseable OCSP response: {exc}")
        return
    if parsed.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        status = parsed.response_status.name.lower()
        SEEN[f"{target.expected}->{status}"] += 1
        if target.expected == "unknown" and status == "unauthorized":
            response.success()  # a key-less responder's answer for a never-issued serial
            return
        response.failure(f"responseStatus {status} for a {target.expected} certificate")
        return
    got = parsed.certificate_status.name.lower()
    SEEN[f"{target.expected}->{got}"] += 1
    if got != target.expected and not (target.expected == "unknown" and got == "revoked"):
        response.failure(f"status {got}, expected {target.expected}")
    else:
        response.success()


def pick() -> Target:
    kind = random.choices(list(MIX), weights=list(MIX.values()))[0]
    return random.choice(TARGETS[kind])


class DeviceUser(FastHttpUser):
    """A device checking a certificate at connect time."""

    wait_time = between(0.0, 0.05)

    @task
    def check(self) -> None:
        target = pick()
        if random.random() < POST_SHARE:
            with self.client.post("/ocsp", data=target.request,  # type: ignore[arg-type]
                                  catch_response=True,
                                  headers={"Content-Type": "application/ocsp-request"},
                                  name="POST /ocsp") as response:
                check_ocsp(response, target)
        else:
            with self.client.get(target.get_path, catch_response=True,
                                 name="GET /ocsp/[req]") as response:
                check_ocsp(response, target)


class StaplingUser(FastHttpUser):
    """A TLS server refreshing the staples of its few certificates."""

    wait_time = constant(0.1)

    def on_start(self) -> None:
        pool = TARGETS["good"] + TARGETS["revoked"]
        self.mine = random.sample(pool, k=min(3, len(pool)))

    @task
    def staple(self) -> None:
        target = random.choice(self.mine)
        with self.client.get(target.get_path, catch_response=True,
                             name="GET /ocsp/[staple]") as response:
            check_ocsp(response, target)


class CdnCrlUser(FastHttpUser):
    """A CDN edge revalidating the CRLs it caches."""

    wait_time = between(0.1, 0.5)

    def on_start(self) -> None:
        self.etags: dict[str, str] = {}

    @task
    def fetch_crl(self) -> None:
        if not CRL_ISSUERS:
            return
        path = f"/crl/{random.choice(CRL_ISSUERS)}.crl"
        headers = {"If-None-Match": self.etags[path]} if path in self.etags else {}
        with self.client.get(path, headers=headers, catch_response=True,
                             name="GET /crl (conditional)") as response:
            if response.status_code == 304 and path in self.etags:
                SEEN["crl->304"] += 1
                response.success()
            elif response.status_code == 200:
                if response.headers.get("Content-Type") != "application/pkix-crl":
                    response.failure("wrong Content-Type for a CRL")
                    return
                try:
                    x509.load_der_x509_crl(response.content)
                except ValueError:
                    response.failure("unparseable CRL")
                    return
                SEEN["crl->200"] += 1
                self.etags[path] = response.headers.get("ETag", "")
                response.success()
            else:
                response.failure(f"HTTP {response.status_code}")


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def _write_report(environment: Any, **_kw: Any) -> None:
    report = os.environ.get("LOADTEST_REPORT")
    if report:
        Path(report).write_text(json.dumps({
            "seen": dict(SEEN),
            "requests": environment.stats.total.num_requests,
            "failures": environment.stats.total.num_failures,
        }, indent=2))
