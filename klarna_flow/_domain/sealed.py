"""Secrets as the domain holds them: sealed, with the id of the key that sealed them.

The domain never sees a token in clear; the application seals tokens before
recording them and opens them only to call Klarna. A sealed value's ``repr``
shows the key id and nothing of the secret.
"""

from __future__ import annotations

import attrs

__all__ = ["PLAINTEXT_KEY_ID", "SealedSecret"]

PLAINTEXT_KEY_ID = "plaintext"
"""Key id of values stored unencrypted (explicit local-development opt-in only)."""


@attrs.frozen(repr=False)
class SealedSecret:
    """An encrypted secret: key id, nonce and ciphertext (base64 text)."""

    key_id: str
    nonce: str
    ciphertext: str

    def __repr__(self) -> str:
        return f"SealedSecret(key_id={self.key_id!r})"
