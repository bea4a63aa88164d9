"""Every CRL is checked as a relying party would check it before it is stored (Boulder's
crl-checker idea): it parses, its signature verifies with the CA certificate's key, its issuer,
number, base number and dates are the ones intended, and it lists as many entries as rows went in.

Independent of how the CRL was built, and linear: cryptography parses the whole CertificateList,
every entry included (a malformed entry fails the parse, and the count comes from that parse);
the signature is verified over the received tbsCertList bytes (revoc/crl_signature.py, which
avoids cryptography's re-encoding of tbsCertList: 7 s and +2x the CRL's size in memory at 1M
entries).
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes

from revoc.crl_signature import crl_signature_valid


class PublishError(Exception):
    """A CRL failed its checks or could not be built; the message says why."""


class EntryCheckError(PublishError):
    """The CRL does not parse or lists another number of entries than rows went in: a stored
    entry is bad, so the publisher rebuilds the CRL row by row (crl_publisher/entries.py)."""


def check_crl(
    der: bytes,
    *,
    ca_public_key: CertificateIssuerPublicKeyTypes,
    subject_der: bytes,
    number: int,
    above: int | None,
    entries: int,
    base_number: int | None,
) -> None:
    """Check a CRL as a relying party would; raise PublishError with the first problem."""
    try:
        crl = x509.load_der_x509_crl(der)
        listed = len(crl)
    except ValueError as exc:
        raise EntryCheckError(f"the CRL does not parse: {exc}") from None
    if not crl_signature_valid(crl, der, ca_public_key):
        raise PublishError("the CRL's signature does not verify with the CA certificate's key")
    if crl.issuer.public_bytes() != subject_der:
        raise PublishError("the CRL's issuer differs from the CA certificate's subject")
    try:
        got = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        raise PublishError("the CRL has no cRLNumber") from None
    if got != number:
        raise PublishError(f"the CRL's number is {got}, expected {number}")
    if above is not None and number <= above:
        raise PublishError(f"CRL number {number} is not above the last published ({above})")
    if listed != entries:
        raise EntryCheckError(f"the CRL lists {listed} entries, the database holds {entries}")
    try:
        base = crl.extensions.get_extension_for_class(x509.DeltaCRLIndicator).value.crl_number
    except x509.ExtensionNotFound:
        base = None
    if base != base_number:
        raise PublishError(f"the CRL's BaseCRLNumber is {base}, expected {base_number}")
    if crl.next_update_utc is None or crl.next_update_utc <= crl.last_update_utc:
        raise PublishError("the CRL's nextUpdate is missing or not after thisUpdate")
