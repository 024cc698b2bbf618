"""Signed notifications (webhooks) in Klarna's envelope, as FakeKlarna sends them."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from klarna_flow._errors import InvalidInput
from klarna_flow._shared.validation import check_aware
from klarna_flow.klarna._webhooks import check_signing_keys
from klarna_flow.testing._fake_records import SignedNotification
from klarna_flow.testing._fake_wire import iso_millis

__all__ = ["DEFAULT_KEY_ID", "Signer", "iso_millis"]

DEFAULT_KEY_ID = "fake-key-1"


class Signer:
    """Signs bodies with HMAC-SHA256 and wraps payloads in the v2 envelope.

    Args:
        signing_keys: key id -> secret bytes (or str, used as UTF-8), checked
            as ``Payments`` checks them; one random key when None or empty.
    """

    def __init__(self, signing_keys: Mapping[str, bytes | str] | None = None) -> None:
        keys = check_signing_keys(signing_keys if signing_keys is not None else {})
        if not keys:
            keys = {DEFAULT_KEY_ID: secrets.token_bytes(32)}
        self.signing_keys = keys
        self.default_key_id = next(iter(keys))

    def sign(self, body: bytes, key_id: str | None = None) -> dict[str, str]:
        """The signature headers for ``body`` (``Klarna-Signature`` is hex)."""
        key_id = key_id or self.default_key_id
        if key_id not in self.signing_keys:
            raise InvalidInput("key_id", f"unknown signing key {key_id!r}")
        signature = hmac.new(self.signing_keys[key_id], body, hashlib.sha256)
        return {
            "Content-Type": "application/json",
            "Klarna-Signature": signature.hexdigest(),
            "Klarna-Signing-Key-Id": key_id,
        }

    def notification(
        self,
        event_type: str,
        payload: Mapping[str, Any],
        *,
        account: str,
        occurred_at: datetime,
        event_id: str | None = None,
        key_id: str | None = None,
    ) -> SignedNotification:
        """A signed notification of ``event_type`` carrying ``payload``."""
        metadata = {
            "event_type": event_type,
            "event_id": event_id or str(uuid.uuid4()),
            "event_version": "v2",
            "occurred_at": iso_millis(check_aware(occurred_at, "occurred_at")),
            "correlation_id": str(uuid.uuid4()),
            "subject_account_id": account,
            "recipient_account_id": account,
            "product_instance_id": "krn:partner:global:product-instance:fake-klarna",
            "webhook_id": "krn:partner:global:notification:webhook:fake-klarna",
            "live": False,
        }
        envelope = {"metadata": metadata, "payload": dict(payload)}
        body = json.dumps(envelope, separators=(",", ":")).encode()
        return SignedNotification(body=body, headers=self.sign(body, key_id))
