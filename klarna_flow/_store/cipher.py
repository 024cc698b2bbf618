"""Sealing of session and customer tokens at rest (AES-GCM, ``cryptography``).

Only the secret fields are encrypted, not whole events: the rest of every
event stays readable, so audit trails, exports and chain verification work for
someone who holds no token key. Each sealed value names the key that sealed it
(a fingerprint of the key), so keys can be rotated: seal with the current key,
open with whichever key the value names. The payment id and field name are
bound as associated data, so a sealed token cannot be moved to another payment.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable, Mapping

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from klarna_flow._domain.sealed import PLAINTEXT_KEY_ID, SealedSecret
from klarna_flow._errors import ConfigurationError

__all__ = [
    "CIPHER_KEY_ENV",
    "OLD_CIPHER_KEYS_ENV",
    "TokenCipher",
    "generate_key",
    "key_id",
    "parse_key",
]

CIPHER_KEY_ENV = "KLARNA_FLOW_CIPHER_KEY"
OLD_CIPHER_KEYS_ENV = "KLARNA_FLOW_OLD_CIPHER_KEYS"
_KEY_SIZE = 32


def generate_key() -> str:
    """A new random key, base64-encoded (the format of ``KLARNA_FLOW_CIPHER_KEY``)."""
    return base64.b64encode(os.urandom(_KEY_SIZE)).decode()


def parse_key(key: str | bytes) -> bytes:
    """32 raw bytes from a base64 string or raw bytes.

    Raises:
        ConfigurationError: not base64 of exactly 32 bytes (the key is not echoed).
    """
    if isinstance(key, bytes) and len(key) == _KEY_SIZE:
        return key
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raw = b""
    if len(raw) != _KEY_SIZE:
        msg = "cipher key must be the base64 encoding of 32 random bytes"
        raise ConfigurationError(msg)
    return raw


def key_id(raw: bytes) -> str:
    """A public fingerprint naming a key (never the key itself)."""
    return "k-" + hashlib.sha256(b"klarna_flow key id\x00" + raw).hexdigest()[:16]


class TokenCipher:
    """Seals and opens token strings.

    Args:
        current: the key new values are sealed with (base64 or 32 raw bytes);
            None with ``plaintext=True`` stores values unencrypted.
        old: earlier keys, still accepted for opening old values.
        plaintext: explicit opt-in to store new values in clear (local
            development only).
    """

    def __init__(
        self,
        current: str | bytes | None,
        old: Iterable[str | bytes] = (),
        *,
        plaintext: bool = False,
    ) -> None:
        self._keys: dict[str, AESGCM] = {}
        self._current: str | None = None
        for key in old:
            raw = parse_key(key)
            self._keys[key_id(raw)] = AESGCM(raw)
        if current is not None:
            raw = parse_key(current)
            self._current = key_id(raw)
            self._keys[self._current] = AESGCM(raw)
        elif not plaintext:
            msg = "TokenCipher needs a current key unless plaintext=True"
            raise ConfigurationError(msg)

    @classmethod
    def ephemeral(cls) -> TokenCipher:
        """A cipher with a random key that lives as long as the process."""
        return cls(generate_key())

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, plaintext: bool = False) -> TokenCipher | None:
        """From ``KLARNA_FLOW_CIPHER_KEY`` (+ comma-separated old keys), or None."""
        current = env.get(CIPHER_KEY_ENV, "").strip() or None
        old = [k for k in env.get(OLD_CIPHER_KEYS_ENV, "").replace(",", " ").split() if k]
        if current is None and not plaintext:
            return None
        return cls(current, old, plaintext=plaintext)

    @property
    def current_key_id(self) -> str:
        return self._current or PLAINTEXT_KEY_ID

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._keys)

    def seal(self, plaintext: str, *, aad: bytes) -> SealedSecret:
        if self._current is None:
            return SealedSecret(PLAINTEXT_KEY_ID, "", plaintext)
        nonce = os.urandom(12)
        ct = self._keys[self._current].encrypt(nonce, plaintext.encode(), aad)
        return SealedSecret(
            self._current,
            base64.b64encode(nonce).decode(),
            base64.b64encode(ct).decode(),
        )

    def open(self, sealed: SealedSecret, *, aad: bytes) -> str:
        """The secret in clear.

        Raises:
            ConfigurationError: the key that sealed it is not configured, or
                the value does not authenticate under it.
        """
        if sealed.key_id == PLAINTEXT_KEY_ID:
            return sealed.ciphertext
        aes = self._keys.get(sealed.key_id)
        if aes is None:
            msg = f"no cipher key with id {sealed.key_id} is configured to open this token"
            raise ConfigurationError(msg)
        try:
            nonce = base64.b64decode(sealed.nonce)
            return aes.decrypt(nonce, base64.b64decode(sealed.ciphertext), aad).decode()
        except (InvalidTag, binascii.Error, ValueError) as e:
            msg = f"sealed token does not authenticate under key {sealed.key_id}"
            raise ConfigurationError(msg) from e

    def __repr__(self) -> str:
        return f"TokenCipher(current={self.current_key_id!r}, keys={len(self._keys)})"
