"""Sign and verify ``X-Aerostic-Signature``: ``sha256=<hex HMAC-SHA256 of the raw body>``."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence

from .errors import InvalidSignature

__all__ = [
    "SIGNATURE_HEADER",
    "Secrets",
    "normalize_secrets",
    "sign",
    "verify_signature",
    "verify_with_keys",
]

SIGNATURE_HEADER = "X-Aerostic-Signature"
_PREFIX = "sha256="
_HEX_LENGTH = 64
# A header is a few values at most; more is noise we refuse to loop over.
_MAX_CANDIDATES = 16

Secrets = str | bytes | Sequence[str | bytes]
Body = bytes | bytearray | memoryview


def _key(secret: str | bytes) -> bytes:
    # surrogateescape gives back the bytes of a secret read from a non-UTF-8 environment.
    if isinstance(secret, str):
        return secret.encode("utf-8", "surrogateescape")
    if isinstance(secret, (bytes, bytearray)):
        return bytes(secret)
    raise TypeError(f"got {type(secret).__name__}")


def normalize_secrets(secrets: Secrets) -> tuple[bytes, ...]:
    """Return the secrets as UTF-8 keys; raise ``ValueError`` if there is none or one is empty."""
    items: Iterable[str | bytes] = (
        (secrets,) if isinstance(secrets, (str, bytes, bytearray)) else secrets
    )
    try:
        keys = tuple(_key(item) for item in items)
    except (UnicodeEncodeError, TypeError) as error:
        raise ValueError(f"a webhook secret must be text or bytes: {error}") from None
    if not keys or not all(keys):
        raise ValueError(
            "a webhook secret is required and must not be empty: pass secret= "
            "or set AEROSTIC_WEBHOOK_SECRET"
        )
    return keys


def sign(body: Body, secret: str | bytes) -> str:
    """Return the ``X-Aerostic-Signature`` value for ``body`` signed with ``secret``."""
    return _PREFIX + hmac.digest(_key(secret), body, "sha256").hex()


def _candidates(header_value: str | bytes | None) -> list[bytes]:
    """Parse the header into 32-byte digests; raise ``InvalidSignature`` if none is well formed."""
    if header_value is None:
        raise InvalidSignature("signature header missing")
    if isinstance(header_value, (bytes, bytearray)):
        try:
            header_value = bytes(header_value).decode("ascii")
        except UnicodeDecodeError:
            raise InvalidSignature("signature header is not ASCII") from None
    if not isinstance(header_value, str):
        raise InvalidSignature("signature header is not text")
    if not header_value.isascii():
        raise InvalidSignature("signature header is not ASCII")
    parts = header_value.split(",", _MAX_CANDIDATES)[:_MAX_CANDIDATES]
    digests: list[bytes] = []
    for part in parts:
        value = part.strip()
        if value[: len(_PREFIX)].lower() != _PREFIX:
            continue
        hex_digest = value[len(_PREFIX) :]
        if len(hex_digest) != _HEX_LENGTH:
            continue
        try:
            digests.append(bytes.fromhex(hex_digest))
        except ValueError:
            continue
    if not digests:
        if not header_value.strip():
            raise InvalidSignature("signature header empty")
        raise InvalidSignature("signature header malformed (expected sha256=<64 hex digits>)")
    return digests


def verify_signature(body: Body, header_value: str | bytes | None, secrets: Secrets) -> None:
    """Check ``header_value`` against the HMAC of ``body`` under any of ``secrets``.

    Comparison is constant time. Several comma-separated ``sha256=`` values are accepted, so
    a sender may sign with an old and a new secret while they rotate. Any problem with the
    header raises ``InvalidSignature``; an empty ``secrets`` raises ``ValueError``.
    """
    verify_with_keys(body, header_value, normalize_secrets(secrets))


def verify_with_keys(body: Body, header_value: str | bytes | None, keys: Sequence[bytes]) -> None:
    """``verify_signature`` for keys already checked by ``normalize_secrets`` (the hot path)."""
    digests = _candidates(header_value)
    matched = False
    for key in keys:
        expected = hmac.digest(key, body, "sha256")
        for digest in digests:
            # No early exit: the time taken does not depend on which secret matched.
            matched |= hmac.compare_digest(expected, digest)
    if not matched:
        raise InvalidSignature("signature does not match any secret")
