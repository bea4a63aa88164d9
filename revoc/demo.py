"""`revoc demo`: a demo PKI imported into the database, with the commands that check it."""

from __future__ import annotations

import contextlib

import asyncpg
from cryptography import x509

from revoc import admin, db
from revoc.demo_pki import ISSUER_NAME, REVOKED, DemoPki, create_demo_pki
from revoc.model import Reason
from revoc.settings import Settings


async def import_demo(conn: asyncpg.Connection, settings: Settings) -> DemoPki:
    """Create (or reuse) the demo PKI under --home and bring the database in line with it."""
    pki = create_demo_pki(settings.home.resolve() / "demo", settings.public_url)
    await db.upgrade(conn)
    known = {issuer.name for issuer in await admin.list_issuers(conn)}
    if ISSUER_NAME not in known:
        await admin.add_issuer(conn, admin.IssuerRequest(
            name=ISSUER_NAME, cert_path=str(pki.ca), key_path=str(pki.ca_key),
            ocsp_cert_path=str(pki.ocsp), ocsp_key_path=str(pki.ocsp_key)))
    await admin.add_certificates(conn, ISSUER_NAME, [str(p) for p in pki.leaves])
    for index, reason in REVOKED.items():
        serial = x509.load_pem_x509_certificate(pki.leaf(index).read_bytes()).serial_number
        with contextlib.suppress(admin.AdminError):  # revoked by an earlier run of the demo
            await admin.revoke(conn, admin.RevokeRequest(ISSUER_NAME, serial,
                                                         Reason.from_name(reason)))
    return pki


def describe(pki: DemoPki, settings: Settings) -> str:
    """What the demo made, for a newcomer."""
    lines = [
        f"demo PKI in {pki.directory}:",
        f"  root CA            {pki.root}",
        f"  issuing CA         {pki.ca}  (issuer name {ISSUER_NAME!r})",
        f"  OCSP responder     {pki.ocsp}  (delegated, signs OCSP for {ISSUER_NAME})",
    ]
    for index, path in enumerate(pki.leaves, 1):
        state = f"revoked ({REVOKED[index]})" if index in REVOKED else "good"
        lines.append(f"  leaf {index}             {path}  {state}")
    return "\n".join(lines)


def check_commands(pki: DemoPki, settings: Settings) -> str:
    """The commands a newcomer pastes to see good and revoked answers from the running demo."""
    good, revoked = pki.leaf(1), pki.leaf(min(REVOKED))
    ocsp = (f"openssl ocsp -issuer {pki.ca} -CAfile {pki.chain} -url {settings.public_url}/ocsp "
            "-no_nonce -resp_text -cert")
    crl = settings.crl_out.resolve() / f"{ISSUER_NAME}.crl"
    verify = f"openssl verify -crl_check -CAfile {pki.chain} -CRLfile {crl}"
    return "\n".join([
        "check it (OCSP; pre-signed answers carry no nonce, hence -no_nonce):",
        f"  {ocsp} {good}        # good",
        f"  {ocsp} {revoked}     # revoked",
        "check it (CRL):",
        f"  {verify} {good}      # OK",
        f"  {verify} {revoked}   # error 23: certificate revoked",
        f"  curl -sI {settings.public_url}/crl/{ISSUER_NAME}.crl",
    ])
