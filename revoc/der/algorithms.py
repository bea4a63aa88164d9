"""Signature AlgorithmIdentifiers, byte for byte, as OCSP responses and CRLs carry them.

Pure constants: the encoders repeat whichever of these the signer names (CONFORMANCE
OCSP-RESP-17), so the exact bytes live here, next to the codecs, and nowhere else.
"""

from __future__ import annotations

# CA/B Forum BR §7.1.3.2.1: sha256WithRSAEncryption WITH explicit NULL parameters.
ALG_RSA_SHA256 = bytes.fromhex("300d06092a864886f70d01010b0500")
# BR §7.1.3.2.1: RSASSA-PSS, SHA-256, MGF1-SHA-256, salt 32 (trailerField default), the one
# PSS encoding the BR allows for SHA-256 (RFC 4055 §3.1).
ALG_RSA_PSS_SHA256 = bytes.fromhex(
    "304106092a864886f70d01010a3034a00f300d06096086480165030402010500a11c301a06092a864886f70d"
    "010108300d06096086480165030402010500a203020120"
)
# BR §7.1.3.2.2: ecdsa-with-SHA256 / -SHA384, parameters absent.
ALG_ECDSA_SHA256 = bytes.fromhex("300a06082a8648ce3d040302")
ALG_ECDSA_SHA384 = bytes.fromhex("300a06082a8648ce3d040303")
# RFC 8410 §3: id-Ed25519, parameters absent.
ALG_ED25519 = bytes.fromhex("300506032b6570")
# FIPS 204 ML-DSA, IETF LAMPS X.509 profile (RFC 9881): id-ml-dsa-44/65/87 =
# 2.16.840.1.101.3.4.3.17/18/19, parameters absent; pure ML-DSA, empty context string.
ALG_ML_DSA_44 = bytes.fromhex("300b0609608648016503040311")
ALG_ML_DSA_65 = bytes.fromhex("300b0609608648016503040312")
ALG_ML_DSA_87 = bytes.fromhex("300b0609608648016503040313")

NAMES: dict[bytes, str] = {
    ALG_RSA_SHA256: "sha256WithRSAEncryption",
    ALG_RSA_PSS_SHA256: "RSASSA-PSS-SHA256",
    ALG_ECDSA_SHA256: "ecdsa-with-SHA256",
    ALG_ECDSA_SHA384: "ecdsa-with-SHA384",
    ALG_ED25519: "Ed25519",
    ALG_ML_DSA_44: "ML-DSA-44",
    ALG_ML_DSA_65: "ML-DSA-65",
    ALG_ML_DSA_87: "ML-DSA-87",
}
