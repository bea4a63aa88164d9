"""OCSP codec: request parsing (strict, robust) and responses checked by outside oracles.

Oracles: `openssl ocsp` (requests it writes, responses it verifies), cryptography's OCSP loader
plus signature verification, asn1crypto, and pkilint's `lint_ocsp_response`.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cryptography_vectors
import pytest
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.x509 import ocsp as x509_ocsp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from revoc.clock import utc_seconds
from revoc.der.asn1 import der_octet_string, der_oid, der_sequence, tlv
from revoc.der.ocsp import (
    ERROR_RESPONSES,
    MAX_CERT_IDS,
    MAX_NONCE_LENGTH,
    MalformedRequest,
    ResponseTemplate,
    SingleResponse,
    build_ocsp_response,
    cert_id_der,
    encode_ocsp_request,
    error_response,
    parse_ocsp_request,
    responder_key_hash,
)
from revoc.model import CertStatus, HashAlgorithm, OcspResponseStatus, Reason
from revoc.signing import FileKeySigner, subject_public_key_bits
from tests.pki import KEY_TYPES, KeyType, Party, make_ca, make_leaf, make_ocsp_responder, verify

OPENSSL = shutil.which("openssl") or "openssl"


def _venv_tool(name: str) -> str:
    return shutil.which(name) or str(Path(sys.executable).parent / name)


LINT_OCSP = _venv_tool("lint_ocsp_response")

# Real "now" for anything openssl checks: it validates thisUpdate/nextUpdate against its clock.
NOW = utc_seconds(datetime.now(UTC))
THIS_UPDATE = NOW - timedelta(hours=1)
NEXT_UPDATE = NOW + timedelta(days=3)
REVOKED_AT = NOW - timedelta(days=2)


@dataclass
class Pki:
    ca: Party
    leaf: Party
    leaf2: Party
    responder: Party
    directory: Path

    @property
    def ca_pem(self) -> Path:
        return self.directory / f"{self.ca.name}.pem"

    def pem(self, party: Party) -> Path:
        return self.directory / f"{party.name}.pem"


@pytest.fixture(scope="module", params=KEY_TYPES)
def pki(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Pki:
    key_type: KeyType = request.param
    directory = tmp_path_factory.mktemp(f"pki-{key_type}")
    ca = make_ca(f"OCSP Test CA {key_type}", key_type)
    leaf = make_leaf(ca, 0x80AB12, name="a.example")
    leaf2 = make_leaf(ca, 0x01, name="b.example")
    responder = make_ocsp_responder(ca, key_type=key_type)
    for party in (ca, leaf, leaf2, responder):
        party.write(directory)
    return Pki(ca, leaf, leaf2, responder, directory)


@pytest.fixture(scope="module")
def p256(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki-p256-basic")
    ca = make_ca("Basic CA", "p256")
    leaf = make_leaf(ca, 0x80AB12, name="a.example")
    leaf2 = make_leaf(ca, 0x01, name="b.example")
    responder = make_ocsp_responder(ca)
    for party in (ca, leaf, leaf2, responder):
        party.write(directory)
    return Pki(ca, leaf, leaf2, responder, directory)


def openssl_request(pki: Pki, *leaves: Party, args: tuple[str, ...] = ("-no_nonce",)) -> bytes:
    out = pki.directory / "req.der"
    # Options like -sha256 apply to the -cert options after them, so they go first.
    cmd = [OPENSSL, "ocsp", *args, "-issuer", str(pki.ca_pem)]
    for leaf in leaves:
        cmd += ["-cert", str(pki.pem(leaf))]
    subprocess.run([*cmd, "-reqout", str(out)], check=True, capture_output=True)
    return out.read_bytes()


def openssl_check(pki: Pki, response: bytes, *leaves: Party, hash_flag: str = "") -> str:
    """`openssl ocsp -respin`: returns combined output (it exits 0 even on failures)."""
    path = pki.directory / "resp.der"
    path.write_bytes(response)
    cmd = [OPENSSL, "ocsp", "-respin", str(path), *([hash_flag] if hash_flag else [])]
    cmd += ["-issuer", str(pki.ca_pem)]
    for leaf in leaves:
        cmd += ["-cert", str(pki.pem(leaf))]
    cmd += ["-CAfile", str(pki.ca_pem), "-no_nonce", "-resp_text"]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return result.stdout + result.stderr


def pkilint(directory: Path, response: bytes) -> subprocess.CompletedProcess[str]:
    path = directory / "lint.der"
    path.write_bytes(response)
    return subprocess.run(
        [LINT_OCSP, "lint", "--document-format", "DER", "-s", "WARNING", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def leaf_cert_id(pki: Pki, leaf: Party, alg: HashAlgorithm = HashAlgorithm.SHA1) -> bytes:
    return cert_id_der(
        alg,
        pki.ca.cert.subject.public_bytes(),
        subject_public_key_bits(pki.ca.cert),
        leaf.cert.serial_number,
    )


def single(cert_id: bytes, status: CertStatus, reason: Reason | None = None) -> SingleResponse:
    revoked = status is CertStatus.REVOKED
    return SingleResponse(
        cert_id_der=cert_id,
        status=status,
        this_update=THIS_UPDATE,
        next_update=NEXT_UPDATE,
        revocation_time=REVOKED_AT if revoked else None,
        revocation_reason=reason if revoked else None,
    )


def signer_setup(pki: Pki, delegated: bool) -> tuple[FileKeySigner, bytes, tuple[bytes, ...]]:
    party = pki.responder if delegated else pki.ca
    certs = (party.cert_der,) if delegated else ()
    return FileKeySigner(party.key), responder_key_hash(party.cert), certs


# --- error bodies --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (OcspResponseStatus.malformedRequest, "3003" + "0a0101"),
        (OcspResponseStatus.internalError, "3003" + "0a0102"),
        (OcspResponseStatus.tryLater, "3003" + "0a0103"),
        (OcspResponseStatus.sigRequired, "3003" + "0a0105"),
        (OcspResponseStatus.unauthorized, "3003" + "0a0106"),
    ],
)
def test_error_bodies_are_bare_OCSP_RESP_1(status: OcspResponseStatus, body: str) -> None:
    assert error_response(status).hex() == body
    assert ERROR_RESPONSES[status].hex() == body
    parsed = x509_ocsp.load_der_ocsp_response(ERROR_RESPONSES[status])
    assert parsed.response_status.value == status.value


def test_error_response_refuses_successful_OCSP_RESP_1() -> None:
    assert len(ERROR_RESPONSES) == 5
    assert OcspResponseStatus.successful not in ERROR_RESPONSES
    with pytest.raises(ValueError):
        error_response(OcspResponseStatus.successful)


# --- requests from openssl -----------------------------------------------------------------------


@pytest.mark.parametrize("alg", list(HashAlgorithm))
def test_openssl_request_cert_id_hashes_OCSP_REQ_2_3(p256: Pki, alg: HashAlgorithm) -> None:
    der = openssl_request(p256, p256.leaf, args=("-no_nonce", f"-{alg.hashlib_name}"))
    request = parse_ocsp_request(der)
    assert request.nonce is None
    (cid,) = request.cert_ids
    assert cid.hash_algorithm is alg
    assert cid.issuer_name_hash == alg.digest(p256.ca.cert.subject.public_bytes())
    assert cid.issuer_key_hash == alg.digest(subject_public_key_bits(p256.ca.cert))
    assert cid.serial == 0x80AB12
    assert cid.serial_bytes == b"\x00\x80\xab\x12"  # high bit set -> 0x00 padding (OCSP-REQ-5)
    assert cid.raw == leaf_cert_id(p256, p256.leaf, alg)  # openssl sends NULL params
    assert cid.raw in der


def test_openssl_nonce_is_parsed_OCSP_REQ_10(p256: Pki) -> None:
    der = openssl_request(p256, p256.leaf, args=("-nonce",))
    request = parse_ocsp_request(der)
    assert request.nonce is not None and len(request.nonce) == 16  # openssl's default


def test_openssl_signed_request_parses_OCSP_REQ_6(p256: Pki) -> None:
    _, key_path = p256.leaf.write(p256.directory)
    der = openssl_request(
        p256,
        p256.leaf,
        args=("-no_nonce", "-signer", str(p256.pem(p256.leaf)), "-signkey", str(key_path)),
    )
    request = parse_ocsp_request(der)
    assert request.cert_ids[0].serial == p256.leaf.cert.serial_number


def test_multi_cert_request_and_response_OCSP_REQ_7(p256: Pki) -> None:
    der = openssl_request(p256, p256.leaf, p256.leaf2)
    request = parse_ocsp_request(der)
    assert [c.serial for c in request.cert_ids] == [0x80AB12, 0x01]
    signer, key_hash, _ = signer_setup(p256, delegated=False)
    response = build_ocsp_response(
        [
            single(request.cert_ids[0].raw, CertStatus.GOOD),
            single(request.cert_ids[1].raw, CertStatus.REVOKED, Reason.superseded),
        ],
        signer=signer,
        responder_key_hash=key_hash,
        produced_at=NOW,
    )
    parsed = asn1_ocsp.OCSPResponse.load(response)
    responses = parsed.basic_ocsp_response["tbs_response_data"]["responses"]
    assert [r["cert_id"].dump() for r in responses] == [c.raw for c in request.cert_ids]
    assert [r["cert_status"].name for r in responses] == ["good", "revoked"]
    output = openssl_check(p256, response, p256.leaf, p256.leaf2)
    assert "Response verify OK" in output
    assert "a.example.pem: good" in output and "b.example.pem: revoked" in output


# --- hand-made requests --------------------------------------------------------------------------


def _extension(oid: str, value: bytes, critical: bool = False) -> bytes:
    return der_sequence(der_oid(oid), b"\x01\x01\xff" if critical else b"", der_octet_string(value))


SERVICE_LOCATOR = _extension(
    "1.3.6.1.5.5.7.48.1.7",
    der_sequence(der_sequence(der_sequence())),  # issuer Name (empty)
)
PREFERRED_SIG_ALGS = _extension(
    "1.3.6.1.5.5.7.48.1.8", der_sequence(der_sequence(der_sequence(der_oid("1.2.840.10045.4.3.2"))))
)
ACCEPTABLE_RESPONSES = _extension(
    "1.3.6.1.5.5.7.48.1.4", der_sequence(der_oid("1.3.6.1.5.5.7.48.1.1")), critical=True
)


def test_unknown_extensions_are_ignored_OCSP_REQ_8(p256: Pki) -> None:
    cid = leaf_cert_id(p256, p256.leaf)
    nonce_ext = _extension("1.3.6.1.5.5.7.48.1.2", der_octet_string(b"n" * 20))
    request_list = der_sequence(
        der_sequence(cid, tlv(0xA0, der_sequence(SERVICE_LOCATOR, PREFERRED_SIG_ALGS)))
    )
    extensions = tlv(0xA2, der_sequence(ACCEPTABLE_RESPONSES, PREFERRED_SIG_ALGS, nonce_ext))
    der = der_sequence(der_sequence(request_list, extensions))
    request = parse_ocsp_request(der)
    assert request.cert_ids[0].raw == cid
    assert request.nonce == b"n" * 20


def test_requestor_name_and_explicit_v1_are_accepted_OCSP_REQ_6(p256: Pki) -> None:
    cid = leaf_cert_id(p256, p256.leaf)
    requestor = tlv(0xA1, tlv(0x82, b"client.example"))  # [1] EXPLICIT GeneralName dNSName
    der = der_sequence(
        der_sequence(tlv(0xA0, b"\x02\x01\x00"), requestor, der_sequence(der_sequence(cid)))
    )
    assert parse_ocsp_request(der).cert_ids[0].raw == cid


@pytest.mark.parametrize("length", [0, 1, 16, 32, 33, 128, 129])
def test_nonce_lengths_OCSP_REQ_9(p256: Pki, length: int) -> None:
    nonce = bytes(range(256))[:length]
    der = encode_ocsp_request([leaf_cert_id(p256, p256.leaf)], nonce=nonce)
    if length == 0 or length > MAX_NONCE_LENGTH:
        with pytest.raises(MalformedRequest):
            parse_ocsp_request(der)
        return
    request = parse_ocsp_request(der)
    assert request.nonce == nonce
    signer, key_hash, _ = signer_setup(p256, delegated=False)
    response = build_ocsp_response(
        [single(request.cert_ids[0].raw, CertStatus.GOOD)],
        signer=signer,
        responder_key_hash=key_hash,
        produced_at=NOW,
        nonce=request.nonce,
    )
    ext = x509_ocsp.load_der_ocsp_response(response).extensions.get_extension_for_class(
        x509.OCSPNonce
    )
    assert ext.value.nonce == nonce  # OCSP-RESP-14: copied unchanged


def test_openssl_nonce_round_trip_OCSP_RESP_14(p256: Pki) -> None:
    der = openssl_request(p256, p256.leaf, args=("-nonce",))
    request = parse_ocsp_request(der)
    signer, key_hash, _ = signer_setup(p256, delegated=False)
    response = build_ocsp_response(
        [single(request.cert_ids[0].raw, CertStatus.GOOD)],
        signer=signer,
        responder_key_hash=key_hash,
        produced_at=NOW,
        nonce=request.nonce,
    )
    (p256.directory / "nonce-resp.der").write_bytes(response)
    result = subprocess.run(
        [OPENSSL, "ocsp", "-reqin", str(p256.directory / "req.der"), "-respin",
         str(p256.directory / "nonce-resp.der"), "-issuer", str(p256.ca_pem),
         "-CAfile", str(p256.ca_pem), "-resp_text"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert "Response verify OK" in output
    assert "WARNING: no nonce" not in output and "nonce verify error" not in output.lower()


def test_legacy_raw_nonce_is_accepted_OCSP_REQ_10(p256: Pki) -> None:
    cid = leaf_cert_id(p256, p256.leaf)
    raw_nonce = b"\x01\x02\x03\x04legacy"  # not a DER OCTET STRING: RFC 6960-era clients
    ext = _extension("1.3.6.1.5.5.7.48.1.2", raw_nonce)
    der = der_sequence(der_sequence(der_sequence(der_sequence(cid)), tlv(0xA2, der_sequence(ext))))
    assert parse_ocsp_request(der).nonce == raw_nonce


@pytest.mark.parametrize(
    ("serial", "content"),
    [
        (1, "01"),
        (0x7F, "7f"),
        (0x80, "0080"),
        (0, "00"),
        (-1, "ff"),
        (2**159 - 1, "7f" + "ff" * 19),  # 20 octets, the RFC 5280 maximum
        (2**159 + 5, "00" + "80" + "00" * 18 + "05"),  # legacy 21-octet form
    ],
)
@pytest.mark.parametrize("null_params", [True, False])
def test_serials_and_param_forms_OCSP_REQ_2_5(
    p256: Pki, serial: int, content: str, null_params: bool
) -> None:
    cid = cert_id_der(
        HashAlgorithm.SHA256,
        p256.ca.cert.subject.public_bytes(),
        subject_public_key_bits(p256.ca.cert),
        serial,
        null_params=null_params,
    )
    (parsed,) = parse_ocsp_request(encode_ocsp_request([cid])).cert_ids
    assert parsed.serial == serial
    assert parsed.serial_bytes.hex() == content
    assert parsed.raw == cid
    assert parsed.hash_algorithm is HashAlgorithm.SHA256


def test_non_minimal_serial_keeps_raw_bytes_OCSP_REQ_5(p256: Pki) -> None:
    good = leaf_cert_id(p256, p256.leaf2)  # serial 1 -> 02 01 01
    padded = good[:-3] + b"\x02\x02\x00\x01"
    padded = der_sequence(padded[2:])  # re-wrap with the new length
    (parsed,) = parse_ocsp_request(encode_ocsp_request([padded])).cert_ids
    assert parsed.serial == 1 and parsed.serial_bytes == b"\x01"
    assert parsed.raw == padded  # echoed exactly as sent (OCSP-RESP-9)


def test_unsupported_hash_is_not_malformed_OCSP_REQ_4(p256: Pki) -> None:
    cid = leaf_cert_id(p256, p256.leaf)
    md5 = der_sequence(der_oid("1.2.840.113549.2.5"), b"\x05\x00")
    sha1_alg = der_sequence(der_oid(HashAlgorithm.SHA1.oid), b"\x05\x00")
    rest = cid[2 + len(sha1_alg) :]
    for alg in (md5, der_sequence(der_oid(HashAlgorithm.SHA1.oid), b"\x04\x00")):
        odd = der_sequence(alg + rest)
        (parsed,) = parse_ocsp_request(encode_ocsp_request([odd])).cert_ids
        assert parsed.hash_algorithm is None
        assert parsed.raw == odd


def _valid_request(p256: Pki) -> bytes:
    return encode_ocsp_request([leaf_cert_id(p256, p256.leaf)], nonce=b"0123456789abcdef")


def test_malformed_requests_OCSP_REQ_1_11(p256: Pki) -> None:
    valid = _valid_request(p256)
    cid = leaf_cert_id(p256, p256.leaf)
    # BER indefinite length on the outer SEQUENCE
    ber = b"\x30\x80" + valid[2:] + b"\x00\x00"
    # version v2
    v2 = der_sequence(der_sequence(tlv(0xA0, b"\x02\x01\x01"), der_sequence(der_sequence(cid))))
    too_many = encode_ocsp_request([cid] * (MAX_CERT_IDS + 1))
    long_form_length = b"\x30\x81" + bytes([len(valid) - 2]) + valid[2:]  # non-minimal length
    cases = {
        "empty": b"",
        "garbage": b"hello",
        "trailing": valid + b"\x00",
        "ber": ber,
        "truncated": valid[:-1],
        "empty list": der_sequence(der_sequence(der_sequence())),
        "v2": v2,
        "too many": too_many,
        "non-minimal length": long_form_length,
        "not a sequence": b"\x04\x00",
        "duplicate nonce": der_sequence(
            der_sequence(
                der_sequence(der_sequence(cid)),
                tlv(0xA2, der_sequence(*[_extension("1.3.6.1.5.5.7.48.1.2", b"\x04\x01a")] * 2)),
            )
        ),
    }
    for name, der in cases.items():
        with pytest.raises(MalformedRequest):
            parse_ocsp_request(der)
            pytest.fail(f"{name} was accepted")
    assert len(parse_ocsp_request(encode_ocsp_request([cid] * MAX_CERT_IDS)).cert_ids) == 16


def _vector_requests() -> list[Path]:
    base = Path(cryptography_vectors.__file__).parent / "x509" / "ocsp"
    return sorted(p for p in base.glob("*.der") if "req" in p.name)


@pytest.mark.parametrize("path", _vector_requests(), ids=lambda p: p.name)
def test_cryptography_vectors_parse_or_malformed_OCSP_REQ_1(path: Path) -> None:
    expected_malformed = {"req-invalid-version.der", "req-duplicate-ext.der"}
    if path.name in expected_malformed:
        with pytest.raises(MalformedRequest):
            parse_ocsp_request(path.read_bytes())
        return
    try:
        request = parse_ocsp_request(path.read_bytes())
    except MalformedRequest:
        return
    assert request.cert_ids
    if path.name == "req-multi-sha1.der":
        assert len(request.cert_ids) == 2
    if path.name == "req-ext-nonce.der":
        assert request.nonce
    if path.name == "req-invalid-hash-alg.der":
        assert request.cert_ids[0].hash_algorithm is None


def test_vectors_present() -> None:
    assert len(_vector_requests()) >= 10


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_malformed_OCSP_REQ_1(data: bytes) -> None:
    with contextlib.suppress(MalformedRequest):
        parse_ocsp_request(data)


_SEED_REQUEST = encode_ocsp_request(
    [cert_id_der(HashAlgorithm.SHA256, b"\x30\x00", b"\x01" * 65, 0x80AB12)] * 2,
    nonce=b"0123456789abcdef",
)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(_SEED_REQUEST) - 1),
            st.integers(0, 255),
            st.sampled_from(["replace", "insert", "delete"]),
        ),
        min_size=1,
        max_size=4,
    ),
    st.integers(0, len(_SEED_REQUEST)),
)
def test_mutations_only_raise_malformed_OCSP_REQ_1(
    edits: list[tuple[int, int, str]], cut: int
) -> None:
    data = bytearray(_SEED_REQUEST)
    for position, value, action in edits:
        position = min(position, len(data) - 1)
        if action == "replace":
            data[position] = value
        elif action == "insert":
            data.insert(position, value)
        elif len(data) > 1:
            del data[position]
    for candidate in (bytes(data), bytes(data[:cut])):
        try:
            request = parse_ocsp_request(candidate)
        except MalformedRequest:
            continue
        for cid in request.cert_ids:  # whatever parses must be self-consistent
            assert cid.raw in candidate


# --- responses -----------------------------------------------------------------------------------

STATUS_CASES = [
    pytest.param(CertStatus.GOOD, None, id="good"),
    pytest.param(CertStatus.REVOKED, Reason.keyCompromise, id="revoked"),
    pytest.param(CertStatus.UNKNOWN, None, id="unknown"),
]


def _check_with_cryptography(
    response: bytes, pki: Pki, delegated: bool, status: CertStatus, reason: Reason | None
) -> None:
    parsed = x509_ocsp.load_der_ocsp_response(response)
    assert parsed.response_status is x509_ocsp.OCSPResponseStatus.SUCCESSFUL
    signer_party = pki.responder if delegated else pki.ca
    assert (
        parsed.responder_key_hash
        == hashlib.sha1(subject_public_key_bits(signer_party.cert)).digest()
    )  # OCSP-RESP-5: always SHA-1
    assert parsed.responder_name is None
    assert len(parsed.certificates) == (1 if delegated else 0)  # OCSP-SIGNER-8
    verify(signer_party.cert.public_key(), parsed.signature, parsed.tbs_response_bytes)
    assert parsed.certificate_status.name == status.name
    assert parsed.this_update_utc == THIS_UPDATE and parsed.next_update_utc == NEXT_UPDATE
    assert parsed.produced_at_utc == NOW
    if status is CertStatus.REVOKED:
        assert parsed.revocation_time_utc == REVOKED_AT
        assert parsed.revocation_reason is not None and reason is not None
        assert parsed.revocation_reason.name == reason.name.replace("C", "_c").lower()
    assert len(parsed.single_extensions) == 0  # never a reasonCode singleExtension (BR-12)


@pytest.mark.parametrize("delegated", [False, True], ids=["ca-signed", "delegated"])
@pytest.mark.parametrize(("status", "reason"), STATUS_CASES)
def test_response_oracles_OCSP_RESP_3_5_16(
    pki: Pki, delegated: bool, status: CertStatus, reason: Reason | None
) -> None:
    signer, key_hash, certs = signer_setup(pki, delegated)
    one = single(leaf_cert_id(pki, pki.leaf), status, reason)
    response = build_ocsp_response(
        [one], signer=signer, responder_key_hash=key_hash, produced_at=NOW, certs=certs
    )
    _check_with_cryptography(response, pki, delegated, status, reason)
    templated = ResponseTemplate(signer=signer, responder_key_hash=key_hash, certs=certs)
    _check_with_cryptography(templated.build(one, NOW), pki, delegated, status, reason)

    output = openssl_check(pki, response, pki.leaf)
    assert "Response verify OK" in output, output
    assert "Status times invalid" not in output
    assert f"a.example.pem: {status.value}" in output, output
    assert len(response) < 2048  # OCSP-HTTP-10

    # pkilint is slow to start: lint every key type and signer mode, all statuses for one.
    if status is CertStatus.REVOKED or pki.ca.name.endswith("p256"):
        result = pkilint(pki.directory, response)
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("alg", [HashAlgorithm.SHA256, HashAlgorithm.SHA384, HashAlgorithm.SHA512])
def test_sha2_cert_id_is_echoed_OCSP_RESP_9(p256: Pki, alg: HashAlgorithm) -> None:
    der = openssl_request(p256, p256.leaf, args=("-no_nonce", f"-{alg.hashlib_name}"))
    (cid,) = parse_ocsp_request(der).cert_ids
    signer, key_hash, certs = signer_setup(p256, delegated=True)
    response = build_ocsp_response(
        [single(cid.raw, CertStatus.GOOD)],
        signer=signer, responder_key_hash=key_hash, produced_at=NOW, certs=certs,
    )  # fmt: skip
    parsed = asn1_ocsp.OCSPResponse.load(response)
    echoed = parsed.basic_ocsp_response["tbs_response_data"]["responses"][0]["cert_id"].dump()
    assert echoed == cid.raw
    output = openssl_check(p256, response, p256.leaf, hash_flag=f"-{alg.hashlib_name}")
    assert "Response verify OK" in output and "a.example.pem: good" in output, output


def test_absent_params_cert_id_is_echoed_byte_for_byte_OCSP_RESP_9(p256: Pki) -> None:
    cid = cert_id_der(
        HashAlgorithm.SHA1,
        p256.ca.cert.subject.public_bytes(),
        subject_public_key_bits(p256.ca.cert),
        5,
        null_params=False,
    )
    signer, key_hash, _ = signer_setup(p256, delegated=False)
    response = build_ocsp_response(
        [single(cid, CertStatus.UNKNOWN)], signer=signer, responder_key_hash=key_hash,
        produced_at=NOW,
    )  # fmt: skip
    parsed = asn1_ocsp.OCSPResponse.load(response)
    assert parsed.basic_ocsp_response["tbs_response_data"]["responses"][0]["cert_id"].dump() == cid


def test_response_data_layout_OCSP_RESP_4_6_7(p256: Pki) -> None:
    signer, key_hash, _ = signer_setup(p256, delegated=False)
    response = build_ocsp_response(
        [single(leaf_cert_id(p256, p256.leaf), CertStatus.GOOD)],
        signer=signer, responder_key_hash=key_hash, produced_at=NOW,
    )  # fmt: skip
    parsed = asn1_ocsp.OCSPResponse.load(response)
    assert parsed["response_bytes"]["response_type"].dotted == "1.3.6.1.5.5.7.48.1.1"
    tbs = parsed.basic_ocsp_response["tbs_response_data"]
    # version omitted (v1 DEFAULT): the first element is responderID byKey [2].
    assert tbs.contents[:4] == b"\xa2\x16\x04\x14"
    produced = tbs["produced_at"].contents
    assert produced == NOW.strftime("%Y%m%d%H%M%SZ").encode()  # no fractions
    sr = tbs["responses"][0]
    assert sr["next_update"].native == NEXT_UPDATE
    assert sr["single_extensions"].native is None
    assert tbs["response_extensions"].native is None  # OCSP-RESP-15
    assert parsed.basic_ocsp_response["signature_algorithm"].dump() == signer.algorithm_identifier


def test_unspecified_reason_is_omitted_OCSP_RESP_12(p256: Pki) -> None:
    signer, key_hash, _ = signer_setup(p256, delegated=False)
    for reason in (Reason.unspecified, None):
        response = build_ocsp_response(
            [single(leaf_cert_id(p256, p256.leaf), CertStatus.REVOKED, reason)],
            signer=signer, responder_key_hash=key_hash, produced_at=NOW,
        )  # fmt: skip
        parsed = x509_ocsp.load_der_ocsp_response(response)
        assert parsed.certificate_status is x509_ocsp.OCSPCertStatus.REVOKED
        assert parsed.revocation_reason is None


def test_extended_revoke_extension_OCSP_RESP_13(p256: Pki) -> None:
    signer, key_hash, _ = signer_setup(p256, delegated=False)
    one = SingleResponse(
        cert_id_der=leaf_cert_id(p256, p256.leaf),
        status=CertStatus.REVOKED,
        this_update=THIS_UPDATE,
        next_update=NEXT_UPDATE,
        revocation_time=datetime(1970, 1, 1, tzinfo=UTC),
        revocation_reason=Reason.certificateHold,
    )
    response = build_ocsp_response(
        [one], signer=signer, responder_key_hash=key_hash, produced_at=NOW,
        nonce=b"abcdefgh", extended_revoke=True,
    )  # fmt: skip
    tbs = asn1_ocsp.OCSPResponse.load(response).basic_ocsp_response["tbs_response_data"]
    extensions = {e["extn_id"].dotted: e for e in tbs["response_extensions"]}
    assert extensions["1.3.6.1.5.5.7.48.1.9"]["extn_value"].contents == b"\x05\x00"
    assert extensions["1.3.6.1.5.5.7.48.1.9"]["critical"].native is False
    assert extensions["1.3.6.1.5.5.7.48.1.2"]["extn_value"].contents == b"\x04\x08abcdefgh"
    assert "Response verify OK" in openssl_check(p256, response, p256.leaf)


def test_template_equals_builder(pki: Pki) -> None:
    """Ed25519 and RSA PKCS#1 v1.5 sign deterministically: compare whole responses; ECDSA
    signatures are randomized, so compare tbsResponseData there."""
    full = pki.ca.name.endswith(("ed25519", "rsa2048"))
    for delegated in (False, True):
        signer, key_hash, certs = signer_setup(pki, delegated)
        template = ResponseTemplate(signer=signer, responder_key_hash=key_hash, certs=certs)
        for status, reason in [
            (CertStatus.GOOD, None),
            (CertStatus.REVOKED, Reason.cessationOfOperation),
            (CertStatus.REVOKED, None),
            (CertStatus.UNKNOWN, None),
        ]:
            one = single(leaf_cert_id(pki, pki.leaf), status, reason)
            a = template.build(one, NOW)
            b = build_ocsp_response(
                [one], signer=signer, responder_key_hash=key_hash, produced_at=NOW, certs=certs
            )
            if full:
                assert a == b
            else:
                ta = x509_ocsp.load_der_ocsp_response(a).tbs_response_bytes
                tb = x509_ocsp.load_der_ocsp_response(b).tbs_response_bytes
                assert ta == tb


def test_builder_rejects_inconsistent_input(p256: Pki) -> None:
    signer, key_hash, _ = signer_setup(p256, delegated=False)
    cid = leaf_cert_id(p256, p256.leaf)
    bad = [
        SingleResponse(cid, CertStatus.GOOD, NOW, NOW),  # nextUpdate must be later
        SingleResponse(cid, CertStatus.REVOKED, THIS_UPDATE, NEXT_UPDATE),  # no revocation time
    ]
    for one in bad:
        with pytest.raises(ValueError):
            build_ocsp_response([one], signer=signer, responder_key_hash=key_hash, produced_at=NOW)
    with pytest.raises(ValueError):
        build_ocsp_response([], signer=signer, responder_key_hash=key_hash, produced_at=NOW)
