"""What file keys (revoc/signing.py) and HSM keys (revoc/hsm.py) share, in a module of its own so
neither imports the other at load time."""

from __future__ import annotations

MIN_RSA_BITS = 2048
# RSASSA-PSS as the BR encode it for SHA-256: MGF1 with SHA-256, salt length 32.
PSS_SALT_LENGTH = 32


class SigningError(Exception):
    """A key cannot be used for signing; the message says what to do about it."""
