"""Keys in an HSM: a Signer over PKCS#11 (python-pkcs11), selected by an RFC 7512 `pkcs11:` URI.

`pkcs11:token=LABEL;object=KEYLABEL` (or `id=%01`) names the private key; the module and the
user PIN come from the environment (`revoc.settings.hsm_environment`), never from the URI, the
database or a log. RSA (PKCS#1 v1.5 or PSS, SHA-256) and EC P-256/P-384 (ECDSA with SHA-256/384)
keys are accepted, like the file keys of revoc/signing.py.

One logged-in session per process and token: PKCS#11 state (C_Initialize, sessions) never
survives a fork, so signing processes open their own from the URI they are given, never a
handle. A session runs one operation at a time, hence the lock around each signature.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from revoc.der.algorithms import (
    ALG_ECDSA_SHA256,
    ALG_ECDSA_SHA384,
    ALG_RSA_PSS_SHA256,
    ALG_RSA_SHA256,
)
from revoc.key_policy import MIN_RSA_BITS, PSS_SALT_LENGTH, SigningError
from revoc.settings import SettingsError, hsm_environment

# RFC 7512 §2.3 path attributes we use or may meet; the PIN attributes are refused on purpose
# (a URI is stored in the database).
_PATH_ATTRIBUTES = {"token", "object", "id", "type", "serial", "manufacturer", "model",
                    "library-manufacturer", "library-description", "library-version"}
_PIN_ATTRIBUTES = {"pin-value", "pin-source"}
_QUERY_IGNORED = {"module-name", "module-path"}  # the module is REVOC_PKCS11_MODULE


@dataclass(frozen=True, slots=True)
class Pkcs11Uri:
    """The parts of a `pkcs11:` URI revoc uses to find one private key."""

    token: str | None
    object: str | None
    id: bytes | None
    serial: str | None

    def describe(self) -> str:
        """How errors name the key: label and id, never anything secret."""
        parts = []
        if self.token is not None:
            parts.append(f"token {self.token!r}")
        if self.object is not None:
            parts.append(f"object {self.object!r}")
        if self.id is not None:
            parts.append(f"id {self.id.hex()}")
        return ", ".join(parts)


def parse_pkcs11_uri(uri: str) -> Pkcs11Uri:
    """Parse an RFC 7512 URI; SigningError (one line) for anything revoc cannot use."""
    if uri[:7].lower() != "pkcs11:":
        raise SigningError(f"{uri!r} is not a pkcs11: URI")
    path, _, query = uri[7:].partition("?")
    values: dict[str, str | bytes] = {}
    for part in [p for p in path.split(";") if p] + [q for q in query.split("&") if q]:
        name, eq, raw = part.partition("=")
        name = name.strip().lower()
        if name in _PIN_ATTRIBUTES:
            raise SigningError(
                f"pkcs11 URI: {name} is not accepted (the URI is stored in the database); "
                "give the PIN in REVOC_PKCS11_PIN or REVOC_PKCS11_PIN_FILE")
        if not eq:
            raise SigningError(f"pkcs11 URI: attribute {name!r} has no value")
        if name in _QUERY_IGNORED:
            continue
        if name not in _PATH_ATTRIBUTES:
            raise SigningError(f"pkcs11 URI: unknown attribute {name!r}")
        if name in values:
            raise SigningError(f"pkcs11 URI: attribute {name!r} given twice")
        octets = unquote_to_bytes(raw)
        if name == "id":
            values[name] = octets
        else:
            try:
                values[name] = octets.decode("utf-8")
            except UnicodeDecodeError:
                raise SigningError(f"pkcs11 URI: {name} is not UTF-8") from None
    kind = values.get("type")
    if kind is not None and kind != "private":
        raise SigningError(f"pkcs11 URI: type={kind!s} does not name a private key")
    token = values.get("token")
    label = values.get("object")
    key_id = values.get("id")
    serial = values.get("serial")
    if token is None and serial is None:
        raise SigningError("pkcs11 URI: give token=LABEL (or serial=) to say which token")
    if label is None and key_id is None:
        raise SigningError("pkcs11 URI: give object=KEYLABEL or id=%.. to say which key")
    return Pkcs11Uri(
        token=token if isinstance(token, str) else None,
        object=label if isinstance(label, str) else None,
        id=key_id if isinstance(key_id, bytes) else None,
        serial=serial if isinstance(serial, str) else None,
    )


# Sessions of this process by (module, token label, token serial): a signer for every issuer on
# one token shares one login (PKCS#11 logs the whole process in). Closed with the process.
_SESSIONS: dict[tuple[str, str | None, str | None], Any] = {}
_SESSIONS_LOCK = threading.Lock()


def _session(module: str, uri: Pkcs11Uri, pin: str) -> Any:
    import pkcs11
    from pkcs11 import exceptions as p11e

    key = (module, uri.token, uri.serial)
    with _SESSIONS_LOCK:
        session = _SESSIONS.get(key)
        if session is not None:
            return session
        try:
            lib = pkcs11.lib(module)
        except Exception as exc:  # the loader raises RuntimeError/OSError/PKCS11Error
            raise SigningError(
                f"cannot load PKCS#11 module {module}: {type(exc).__name__}") from None
        try:
            token = lib.get_token(token_label=uri.token, token_serial=(
                uri.serial.encode() if uri.serial is not None else None))
        except p11e.NoSuchToken:
            wanted = (f"labelled {uri.token!r}" if uri.token is not None
                      else f"with serial {uri.serial!r}")
            raise SigningError(f"pkcs11: no token {wanted} in {module}") from None
        except p11e.MultipleTokensReturned:
            raise SigningError(f"pkcs11: several tokens match {uri.describe()}") from None
        try:
            session = token.open(user_pin=pin)
        except (p11e.PinIncorrect, p11e.PinLenRange, p11e.PinInvalid):
            raise SigningError(
                f"pkcs11: login to token {token.label!r} refused: wrong PIN") from None
        except p11e.PinLocked:
            raise SigningError(f"pkcs11: the user PIN of token {token.label!r} is locked") from None
        except p11e.PKCS11Error as exc:
            raise SigningError(
                f"pkcs11: cannot open a session on token {token.label!r}: "
                f"{type(exc).__name__}") from None
        _SESSIONS[key] = session
        return session


def _find(session: Any, uri: Pkcs11Uri, object_class: Any) -> list[Any]:
    from pkcs11 import Attribute

    template: dict[Any, Any] = {Attribute.CLASS: object_class}
    if uri.object is not None:
        template[Attribute.LABEL] = uri.object
    if uri.id is not None:
        template[Attribute.ID] = uri.id
    return list(session.get_objects(template))


def _public_key(session: Any, uri: Pkcs11Uri, private: Any, key_type: Any) -> PublicKeyTypes:
    """The key pair's public half: from the public key object, or for RSA from the private
    key's own modulus and exponent."""
    from pkcs11 import Attribute, KeyType, ObjectClass
    from pkcs11.util.ec import encode_ec_public_key
    from pkcs11.util.rsa import encode_rsa_public_key

    publics = _find(session, uri, ObjectClass.PUBLIC_KEY)
    if len(publics) == 1:
        if key_type == KeyType.RSA:
            der = encode_rsa_public_key(publics[0])
            return serialization.load_der_public_key(_rsa_spki(der))
        return serialization.load_der_public_key(encode_ec_public_key(publics[0]))
    if key_type == KeyType.RSA:
        numbers = rsa.RSAPublicNumbers(
            int.from_bytes(private[Attribute.PUBLIC_EXPONENT], "big"),
            int.from_bytes(private[Attribute.MODULUS], "big"))
        return numbers.public_key()
    raise SigningError(
        f"pkcs11: no public key object next to {uri.describe()}: import the key pair or "
        "its public key with the same label/id")


def _rsa_spki(rsa_public_key_der: bytes) -> bytes:
    """Wrap a PKCS#1 RSAPublicKey into a SubjectPublicKeyInfo."""
    from revoc.der.asn1 import der_bit_string, der_sequence

    algorithm = bytes.fromhex("300d06092a864886f70d0101010500")
    return der_sequence(algorithm, der_bit_string(rsa_public_key_der))


@dataclass(frozen=True, slots=True)
class _Resolved:
    """A key found on a token: what a Pkcs11Signer needs, and the session it came from."""

    public_key: PublicKeyTypes
    algorithm_identifier: bytes
    sign: Callable[[bytes], bytes]
    session_key: tuple[str, str | None, str | None]


def _spki(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def _forget_session(session_key: tuple[str, str | None, str | None]) -> None:
    with _SESSIONS_LOCK:
        session = _SESSIONS.pop(session_key, None)
    if session is not None:
        with contextlib.suppress(Exception):  # already dead: that is why it is forgotten
            session.close()


class Pkcs11Signer:
    """A Signer whose private key never leaves the token.

    When the token fails an operation (session closed, token reinserted, HSM restarted) the
    signer logs in again once and retries, provided the key it finds is the same one; otherwise
    the error is a one-line SigningError and nothing is signed.
    """

    __slots__ = ("_algorithm_identifier", "_lock", "_public_key", "_rsa_pss", "_session_key",
                 "_sign", "uri")

    def __init__(self, uri: str, resolved: _Resolved, *, rsa_pss: bool) -> None:
        self.uri = uri
        self._rsa_pss = rsa_pss
        self._public_key = resolved.public_key
        self._algorithm_identifier = resolved.algorithm_identifier
        self._sign = resolved.sign
        self._session_key = resolved.session_key
        self._lock = threading.Lock()

    @property
    def algorithm_identifier(self) -> bytes:
        return self._algorithm_identifier

    @property
    def public_key(self) -> PublicKeyTypes:
        return self._public_key

    def sign(self, data: bytes) -> bytes:
        from pkcs11 import exceptions as p11e

        # bytes(): python-pkcs11 takes bytes only; the CRL assembler passes a memoryview.
        data = bytes(data)
        with self._lock:
            try:
                return self._sign(data)
            except p11e.PKCS11Error as exc:
                first = type(exc).__name__
            _forget_session(self._session_key)
            try:
                resolved = _resolve(self.uri, rsa_pss=self._rsa_pss)
            except SigningError as exc:
                raise SigningError(
                    f"pkcs11: signing with {self.uri} failed ({first}); logging in again: "
                    f"{exc}") from None
            if (_spki(resolved.public_key) != _spki(self._public_key)
                    or resolved.algorithm_identifier != self._algorithm_identifier):
                raise SigningError(
                    f"pkcs11: the key behind {self.uri} changed; restart to sign with it")
            self._sign = resolved.sign
            self._session_key = resolved.session_key
            try:
                return self._sign(data)
            except p11e.PKCS11Error as exc:
                raise SigningError(
                    f"pkcs11: signing with {self.uri} failed: {type(exc).__name__}") from None


def open_pkcs11_signer(uri_text: str, *, rsa_pss: bool = False) -> Pkcs11Signer:
    """Log in (once per process and token) and find the key; SigningError on any failure."""
    return Pkcs11Signer(uri_text, _resolve(uri_text, rsa_pss=rsa_pss), rsa_pss=rsa_pss)


def _resolve(uri_text: str, *, rsa_pss: bool) -> _Resolved:
    uri = parse_pkcs11_uri(uri_text)
    try:
        import pkcs11
    except ImportError:
        raise SigningError(
            "pkcs11: URI given but python-pkcs11 is not installed (pip install 'revoc[hsm]')"
        ) from None
    from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
    from pkcs11 import exceptions as p11e
    from pkcs11.util.ec import encode_ecdsa_signature

    try:
        env = hsm_environment()
    except SettingsError as exc:
        raise SigningError(str(exc)) from None
    if env.module is None:
        raise SigningError("pkcs11 URI given but REVOC_PKCS11_MODULE (the module path) is unset")
    if env.pin is None:
        raise SigningError(
            "pkcs11 URI given but no PIN: set REVOC_PKCS11_PIN or REVOC_PKCS11_PIN_FILE")
    session_key = (env.module, uri.token, uri.serial)
    session = _session(env.module, uri, env.pin)
    try:
        privates = _find(session, uri, ObjectClass.PRIVATE_KEY)
        if not privates:
            others = _find(session, uri, ObjectClass.SECRET_KEY)
            if others:
                raise SigningError(
                    f"pkcs11: {uri.describe()} is a secret key, not an RSA or EC private key")
            raise SigningError(f"pkcs11: no private key with {uri.describe()}")
        if len(privates) > 1:
            raise SigningError(f"pkcs11: several private keys match {uri.describe()}; add id=")
        private = privates[0]
        key_type = private[Attribute.KEY_TYPE]
        public_key = _public_key(session, uri, private, key_type)
    except p11e.PKCS11Error as exc:
        _forget_session(session_key)
        raise SigningError(
            f"pkcs11: cannot read {uri.describe()}: {type(exc).__name__}") from None
    sign_raw = private.sign
    if key_type == KeyType.RSA:
        assert isinstance(public_key, rsa.RSAPublicKey)
        if public_key.key_size < MIN_RSA_BITS:
            raise SigningError(
                f"pkcs11: RSA key {uri.describe()} has {public_key.key_size} bits; use at least "
                f"{MIN_RSA_BITS}")
        if rsa_pss:
            params = (Mechanism.SHA256, pkcs11.MGF.SHA256, PSS_SALT_LENGTH)
            return _Resolved(
                public_key, ALG_RSA_PSS_SHA256,
                lambda data: bytes(sign_raw(data, mechanism=Mechanism.SHA256_RSA_PKCS_PSS,
                                            mechanism_param=params)), session_key)
        return _Resolved(
            public_key, ALG_RSA_SHA256,
            lambda data: bytes(sign_raw(data, mechanism=Mechanism.SHA256_RSA_PKCS)), session_key)
    if key_type == KeyType.EC:
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        curve = public_key.curve
        if isinstance(curve, ec.SECP256R1):
            digest, algorithm = hashlib.sha256, ALG_ECDSA_SHA256
        elif isinstance(curve, ec.SECP384R1):
            digest, algorithm = hashlib.sha384, ALG_ECDSA_SHA384
        else:
            raise SigningError(
                f"pkcs11: EC key {uri.describe()} is on {curve.name}; use P-256 or P-384")
        # Hash here, raw ECDSA on the token (the mechanism every token has); PKCS#11 returns
        # r || s, X.509 wants the DER Ecdsa-Sig-Value.
        return _Resolved(
            public_key, algorithm,
            lambda data: encode_ecdsa_signature(
                sign_raw(digest(data).digest(), mechanism=Mechanism.ECDSA)), session_key)
    name = getattr(key_type, "name", str(key_type))
    raise SigningError(f"pkcs11: {uri.describe()} is a {name} key; use an RSA or EC key")


__all__ = ["Pkcs11Signer", "Pkcs11Uri", "open_pkcs11_signer", "parse_pkcs11_uri"]
