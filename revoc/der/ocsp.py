"""OCSP codec (RFC 6960), pure bytes in / bytes out: requests in revoc/der/ocsp_request.py
(strict parsing, CertID and request encoders), responses in revoc/der/ocsp_response.py
(template assembly, error responses). This module gathers both for callers that use either.
"""

from __future__ import annotations

from revoc.der.ocsp_request import (
    MAX_CERT_IDS,
    MAX_NONCE_LENGTH,
    CertIdRequest,
    MalformedRequest,
    OcspRequest,
    cert_id_der,
    cert_id_prefix,
    encode_ocsp_request,
    parse_ocsp_request,
)
from revoc.der.ocsp_response import (
    BASIC_RESPONSE_TYPE,
    CERT_STATUS_GOOD,
    ERROR_RESPONSES,
    RESPONSE_STATUS_SUCCESSFUL,
    REVOKED_REASON_FIELD,
    ResponseTemplate,
    SingleResponse,
    build_ocsp_response,
    error_response,
    invalidity_single_extensions,
    responder_key_hash,
)

__all__ = [
    "BASIC_RESPONSE_TYPE",
    "CERT_STATUS_GOOD",
    "ERROR_RESPONSES",
    "MAX_CERT_IDS",
    "MAX_NONCE_LENGTH",
    "RESPONSE_STATUS_SUCCESSFUL",
    "REVOKED_REASON_FIELD",
    "CertIdRequest",
    "MalformedRequest",
    "OcspRequest",
    "ResponseTemplate",
    "SingleResponse",
    "build_ocsp_response",
    "cert_id_der",
    "cert_id_prefix",
    "encode_ocsp_request",
    "error_response",
    "invalidity_single_extensions",
    "parse_ocsp_request",
    "responder_key_hash",
]
