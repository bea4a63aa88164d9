"""A small demo PKI for `revoc demo`: root CA, issuing CA, delegated OCSP responder, leaves.

Everything is written as PEM under one directory (keys mode 0600) and reused when present, so a
second `revoc demo` answers for the same certificates.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

ISSUER_NAME = "demo-ca"
LEAVES = 6
REVOKED = {2: "keyCompromise", 4: "superseded"}  # leaf index -> reason
_OCSP_NOCHECK = x509.ObjectIdentifier("1.3.6.1.5.5.7.48.1.5")


@dataclass(frozen=True, slots=True)
class DemoPki:
    directory: Path

    @property
    def root(self) -> Path:
        return self.directory / "root.pem"

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def chain(self) -> Path:
        """Root and issuing CA in one file, for `openssl verify -CAfile`."""
        return self.directory / "chain.pem"

    @property
    def ocsp(self) -> Path:
        return self.directory / "ocsp.pem"

    @property
    def ocsp_key(self) -> Path:
        return self.directory / "ocsp.key"

    def leaf(self, index: int) -> Path:
        return self.directory / f"leaf{index}.pem"

    @property
    def manifest(self) -> Path:
        """Expected statuses, for loadtests/locustfile.py (LOADTEST_MANIFEST)."""
        return self.directory / "manifest.json"

    @property
    def leaves(self) -> list[Path]:
        return [self.leaf(i) for i in range(1, LEAVES + 1)]

    def exists(self) -> bool:
        return all(p.exists() for p in [self.root, self.ca, self.ca_key, self.ocsp,
                                        self.ocsp_key, self.chain, self.manifest, *self.leaves])


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "revoc demo"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(path, 0o600)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _ca_cert(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
             issuer_key: ec.EllipticCurvePrivateKey, serial: int, now: datetime,
             days: int, path_length: int | None) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(issuer).public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
        .sign(issuer_key, hashes.SHA384() if path_length == 1 else hashes.SHA256())
    )


def create_demo_pki(directory: Path, public_url: str, now: datetime | None = None) -> DemoPki:
    """Create the demo PKI under `directory` unless it is there already. A PKI made for another
    public URL (`revoc demo --port` changed) gets new leaves pointing at this one."""
    pki = DemoPki(directory)
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    if pki.exists():
        manifest = json.loads(pki.manifest.read_text())
        if manifest.get("public_url") != public_url:
            ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
            ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
            assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
            _issue_leaves(pki, ca, ca_key, public_url, now)
            _write_manifest(pki, public_url)
        return pki
    directory.mkdir(parents=True, exist_ok=True)
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = _ca_cert(_name("revoc demo root"), root_key, _name("revoc demo root"), root_key,
                    1, now, 3650, 1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _ca_cert(_name("revoc demo issuing CA"), ca_key, root.subject, root_key, 2, now,
                  1825, 0)
    ocsp_key = ec.generate_private_key(ec.SECP256R1())
    eku = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING])
    ocsp = (
        x509.CertificateBuilder()
        .subject_name(_name("revoc demo OCSP responder")).issuer_name(ca.subject)
        .public_key(ocsp_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(eku, critical=False)
        .add_extension(x509.UnrecognizedExtension(_OCSP_NOCHECK, b"\x05\x00"), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _issue_leaves(pki, ca, ca_key, public_url, now)
    _write_key(pki.ca_key, ca_key)
    _write_key(pki.ocsp_key, ocsp_key)
    pki.root.write_bytes(_pem(root))
    pki.ca.write_bytes(_pem(ca))
    pki.ocsp.write_bytes(_pem(ocsp))
    pki.chain.write_bytes(_pem(root) + _pem(ca))
    _write_manifest(pki, public_url)
    # The root key is not needed again: a demo has no use for it on disk.
    return pki


def _issue_leaves(pki: DemoPki, ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
                  public_url: str, now: datetime) -> None:
    """The demo's leaf certificates, with AIA and CDP pointing at `public_url`."""
    for index in range(1, LEAVES + 1):
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        leaf = (
            x509.CertificateBuilder()
            .subject_name(_name(f"device-{index}.demo.invalid")).issuer_name(ca.subject)
            .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=90))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
                AuthorityInformationAccessOID.OCSP,
                x509.UniformResourceIdentifier(f"{public_url}/ocsp"))]), critical=False)
            .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                [x509.UniformResourceIdentifier(f"{public_url}/crl/{ISSUER_NAME}.crl")],
                None, None, None)]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        pki.leaf(index).write_bytes(_pem(leaf))


def _write_manifest(pki: DemoPki, public_url: str) -> None:
    pki.manifest.write_text(json.dumps({
        "issuer": pki.ca.name,
        "crl": ISSUER_NAME,
        "public_url": public_url,
        "certs": [{"path": pki.leaf(i).name, "status": "revoked" if i in REVOKED else "good"}
                  for i in range(1, LEAVES + 1)],
    }, indent=2))
