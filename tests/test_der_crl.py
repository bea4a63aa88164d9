"""CRL entry encoding and the DER time/integer helpers, checked against cryptography's encoder."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from asn1crypto import crl as asn1_crl
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from revoc.der.asn1 import (
    DerError,
    der_integer,
    der_length,
    der_oid,
    generalized_time,
    integer_content,
    read_tlv,
    utc_or_generalized_time,
)
from revoc.der.crl import encode_crl_entry
from revoc.model import Reason
from tests.pki import cached_key, make_ca

_CA = make_ca("CRL Oracle CA", key=cached_key("p256"))

_REASON_FLAGS = {
    Reason.keyCompromise: x509.ReasonFlags.key_compromise,
    Reason.cACompromise: x509.ReasonFlags.ca_compromise,
    Reason.affiliationChanged: x509.ReasonFlags.affiliation_changed,
    Reason.superseded: x509.ReasonFlags.superseded,
    Reason.cessationOfOperation: x509.ReasonFlags.cessation_of_operation,
    Reason.certificateHold: x509.ReasonFlags.certificate_hold,
    Reason.removeFromCRL: x509.ReasonFlags.remove_from_crl,
    Reason.privilegeWithdrawn: x509.ReasonFlags.privilege_withdrawn,
    Reason.aACompromise: x509.ReasonFlags.aa_compromise,
}


def oracle_entry(
    serial: int,
    revoked_at: datetime,
    reason: Reason | None = None,
    invalidity_date: datetime | None = None,
) -> bytes:
    """The entry as cryptography encodes it, cut out of a signed CRL with asn1crypto."""
    builder = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(revoked_at)
    if reason is not None and reason is not Reason.unspecified:
        builder = builder.add_extension(x509.CRLReason(_REASON_FLAGS[reason]), critical=False)
    if invalidity_date is not None:
        builder = builder.add_extension(x509.InvalidityDate(invalidity_date), critical=False)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(_CA.cert.subject)
        .last_update(datetime(2026, 1, 1, tzinfo=UTC))
        .next_update(datetime(2026, 1, 8, tzinfo=UTC))
        .add_revoked_certificate(builder.build())
        .sign(_CA.key, hashes.SHA256())
    )
    parsed = asn1_crl.CertificateList.load(crl.public_bytes(serialization.Encoding.DER))
    entry: bytes = parsed["tbs_cert_list"]["revoked_certificates"][0].dump()
    return entry


REVOKED_AT = datetime(2026, 3, 14, 15, 9, 26, tzinfo=UTC)
INVALID_SINCE = datetime(2026, 3, 10, 8, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize("serial", [1, 0x7F, 0x80, 0x80AB12, 2**159 - 1, 2**158 + 12345], ids=hex)
def test_entry_serial_encoding_matches_cryptography_CRL_6(serial: int) -> None:
    assert encode_crl_entry(serial, REVOKED_AT) == oracle_entry(serial, REVOKED_AT)


def test_legacy_long_serial_is_encoded_CRL_6() -> None:
    """cryptography refuses > 159-bit serials; legacy certificates have them, so check by hand."""
    serial = 2**160 + 1  # 21 content octets: 01 00 .. 01
    entry = encode_crl_entry(serial, REVOKED_AT)
    parsed = asn1_crl.RevokedCertificate.load(entry)
    assert parsed["user_certificate"].native == serial
    assert parsed["user_certificate"].contents == b"\x01" + b"\x00" * 19 + b"\x01"


@pytest.mark.parametrize("reason", [r for r in Reason if r is not Reason.unspecified])
def test_entry_reason_code_matches_cryptography_CRL_10(reason: Reason) -> None:
    assert encode_crl_entry(0x1234, REVOKED_AT, reason) == oracle_entry(0x1234, REVOKED_AT, reason)


def test_unspecified_reason_is_omitted_CRL_10() -> None:
    entry = encode_crl_entry(5, REVOKED_AT, Reason.unspecified)
    assert entry == encode_crl_entry(5, REVOKED_AT) == oracle_entry(5, REVOKED_AT)
    parsed = asn1_crl.RevokedCertificate.load(entry)
    assert parsed["crl_entry_extensions"].native is None  # field omitted, not an empty SEQUENCE


def test_invalidity_date_matches_cryptography_CRL_11() -> None:
    for reason in (None, Reason.keyCompromise):
        ours = encode_crl_entry(77, REVOKED_AT, reason, INVALID_SINCE)
        assert ours == oracle_entry(77, REVOKED_AT, reason, INVALID_SINCE)
    parsed = asn1_crl.RevokedCertificate.load(
        encode_crl_entry(77, REVOKED_AT, Reason.keyCompromise, INVALID_SINCE)
    )
    extensions = {e["extn_id"].native: e for e in parsed["crl_entry_extensions"]}
    assert extensions["invalidity_date"]["critical"].native is False
    assert extensions["crl_reason"]["critical"].native is False
    assert extensions["invalidity_date"]["extn_value"].parsed.native == INVALID_SINCE


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC),
        datetime(2050, 1, 1, 0, 0, 0, tzinfo=UTC),
        datetime(1999, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2071, 6, 1, tzinfo=UTC),
    ],
)
def test_revocation_date_utctime_until_2049_CRL_4(moment: datetime) -> None:
    ours = encode_crl_entry(9, moment)
    assert ours == oracle_entry(9, moment)
    time_tag = ours[5]  # 30 len | 02 01 09 | time tag
    assert time_tag == (0x17 if moment.year < 2050 else 0x18)


@settings(max_examples=150, deadline=None)
@given(
    serial=st.integers(1, 2**159 - 1),
    seconds=st.integers(0, 100 * 365 * 86400),
    reason=st.sampled_from([None, *Reason]),
    invalidity=st.booleans(),
)
def test_entries_always_match_cryptography(
    serial: int, seconds: int, reason: Reason | None, invalidity: bool
) -> None:
    revoked_at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
    invalid = revoked_at - timedelta(days=1) if invalidity else None
    assert encode_crl_entry(serial, revoked_at, reason, invalid) == oracle_entry(
        serial, revoked_at, reason, invalid
    )


# --- asn1 helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "content"),
    [(0, "00"), (1, "01"), (127, "7f"), (128, "0080"), (255, "00ff"), (256, "0100"),
     (-1, "ff"), (-128, "80"), (-129, "ff7f")],
)  # fmt: skip
def test_integer_content_is_minimal_twos_complement(value: int, content: str) -> None:
    assert integer_content(value).hex() == content
    assert der_integer(value) == bytes([2, len(content) // 2]) + bytes.fromhex(content)


@pytest.mark.parametrize(
    ("n", "encoded"), [(0, "00"), (127, "7f"), (128, "8180"), (255, "81ff"), (256, "820100")]
)
def test_der_length(n: int, encoded: str) -> None:
    assert der_length(n).hex() == encoded


def test_der_oid() -> None:
    assert der_oid("1.3.6.1.5.5.7.48.1.1").hex() == "06092b0601050507300101"
    assert der_oid("2.5.29.21").hex() == "0603551d15"
    assert der_oid("1.2.840.113549.1.1.11").hex() == "06092a864886f70d01010b"
    with pytest.raises(ValueError):
        der_oid("3.1")


def test_times_are_whole_seconds_utc() -> None:
    moment = datetime(2026, 5, 6, 7, 8, 9, 999999, tzinfo=timezone(timedelta(hours=2)))
    assert generalized_time(moment) == b"\x18\x0f20260506050809Z"
    assert utc_or_generalized_time(moment) == b"\x17\x0d260506050809Z"
    with pytest.raises(ValueError):
        generalized_time(datetime(2026, 1, 1))  # naive


@pytest.mark.parametrize(
    "data",
    [b"", b"\x30", b"\x30\x80\x00\x00", b"\x30\x81\x05", b"\x30\x82\x00\x05", b"\x1f\x01\x00",
     b"\x30\x05\x00"],
)  # fmt: skip
def test_read_tlv_is_strict(data: bytes) -> None:
    with pytest.raises(DerError):
        read_tlv(data, 0, len(data))
