"""Issue 13 point 10: a recorded invalidityDate is in the OCSP answer (singleExtensions, RFC 6960
§4.4.5 via RFC 5280 §5.3.2), the same as in the CRL entry (OCSP-RESP-12, CRL-11).

What was seen: the CRL entry carried invalidityDate, the pre-signed OCSP answer did not.
Oracles: `openssl ocsp -respin ... -resp_text`, pkilint's `lint_ocsp_response` (WARNING), and
cryptography for the field values.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from cryptography import x509
from cryptography.x509 import ocsp

from crl_publisher.publisher import publish_round
from responder.presign_queue import presign_once
from revoc import admin
from revoc.clock import FixedClock, utc_seconds
from revoc.der.ocsp import ResponseTemplate, SingleResponse, cert_id_der
from revoc.model import CertStatus, HashAlgorithm, Reason
from revoc.settings import Settings
from revoc.signing import FileKeySigner
from tests.pki import make_ca, make_leaf, new_key, write_pem_certs

VENV_BIN = Path(sys.executable).parent
INVALID_SINCE = datetime(2026, 1, 1, 8, 30, 0, tzinfo=UTC)
REVOKED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _invalidity(extensions: x509.Extensions) -> datetime:
    return extensions.get_extension_for_class(x509.InvalidityDate).value.invalidity_date_utc


async def test_presigned_answer_carries_invalidity_date(clean_db: asyncpg.Pool,
                                                        tmp_path: Path) -> None:
    ca = make_ca("Invalidity CA")
    cert_path, key_path = ca.write(tmp_path)
    leaves = {s: make_leaf(ca, s, crl_url="http://crl.inv.example/crl/inv.crl")
              for s in (0x31, 0x32)}
    async with clean_db.acquire() as conn:
        issuer_id = await admin.add_issuer(conn, admin.IssuerRequest(
            "inv", str(cert_path), key_path=str(key_path)))
        await admin.add_certificates(conn, "inv", [str(p.write(tmp_path)[0])
                                                   for p in leaves.values()])
        await admin.revoke(conn, admin.RevokeRequest("inv", 0x31, Reason.keyCompromise,
                                                     revoked_at=REVOKED_AT,
                                                     invalidity_date=INVALID_SINCE))
        await admin.revoke(conn, admin.RevokeRequest("inv", 0x32, Reason.superseded,
                                                     revoked_at=REVOKED_AT))
    clock = FixedClock(utc_seconds(datetime.now(UTC)))
    settings = Settings(presign_processes=1, public_url="http://crl.inv.example",
                        crl_out=tmp_path / "out")
    assert (await presign_once(clean_db, settings, clock=clock)).ok
    rows = {(int.from_bytes(r["serial"], "big"), r["hash_alg"]): bytes(r["der"])
            for r in await clean_db.fetch("SELECT serial, hash_alg, der FROM ocsp_responses_served "
                                          "WHERE issuer_id = $1", issuer_id)}
    ca_pem = write_pem_certs(tmp_path / "ca.pem", ca)
    for algorithm in (HashAlgorithm.SHA1, HashAlgorithm.SHA256):
        der = rows[0x31, algorithm.value]
        resp = ocsp.load_der_ocsp_response(der)
        assert resp.certificate_status is ocsp.OCSPCertStatus.REVOKED
        assert _invalidity(resp.single_extensions) == INVALID_SINCE
        path = tmp_path / f"resp-{algorithm.name}.der"
        path.write_bytes(der)
        leaf_pem = tmp_path / "leaf31.pem"
        leaf_pem.write_bytes(leaves[0x31].cert_pem)
        digest = ["-sha256"] if algorithm is HashAlgorithm.SHA256 else []
        done = await asyncio.to_thread(
            subprocess.run, ["openssl", "ocsp", "-respin", str(path), "-issuer", str(ca_pem),
                             *digest, "-cert", str(leaf_pem), "-CAfile", str(ca_pem),
                             "-resp_text"], capture_output=True, text=True, timeout=30)
        output = done.stdout + done.stderr
        assert "Response verify OK" in output and "leaf31.pem: revoked" in output, output
        assert "Invalidity Date" in output and "Jan  1 08:30:00 2026 GMT" in output, output
        lint = await asyncio.to_thread(
            subprocess.run, [str(VENV_BIN / "lint_ocsp_response"), "lint", "--document-format",
                             "DER", "-s", "WARNING", str(path)],
            capture_output=True, text=True, timeout=60)
        assert lint.returncode == 0, lint.stdout + lint.stderr
    # None recorded: no singleExtensions at all.
    assert len(ocsp.load_der_ocsp_response(rows[0x32, 1]).single_extensions) == 0
    # The CRL entry says the same (OCSP-RESP-12).
    assert (await publish_round(clean_db, settings, clock=clock)).ok
    crl = x509.load_der_x509_crl((settings.crl_out / "inv.crl").read_bytes())
    entry = crl.get_revoked_certificate_by_serial_number(0x31)
    assert entry is not None and _invalidity(entry.extensions) == INVALID_SINCE


def test_invalidity_date_only_on_revoked() -> None:
    """A good SingleResponse never carries it, even if a caller passes one."""
    signer = FileKeySigner(new_key("p256"))
    template = ResponseTemplate(signer=signer, responder_key_hash=b"\x01" * 20, certs=[])
    now = datetime(2026, 3, 1, tzinfo=UTC)
    cert_id = cert_id_der(HashAlgorithm.SHA1, b"\x30\x00", b"k", 5)
    good = template.build(SingleResponse(cert_id, CertStatus.GOOD, now, now + timedelta(days=1),
                                         invalidity_date=INVALID_SINCE), now)
    assert len(ocsp.load_der_ocsp_response(good).single_extensions) == 0
