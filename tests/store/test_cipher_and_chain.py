"""Tokens sealed at rest, and every stored event chained to the one before it.

The chain is checked from the outside: the stored records are read through the
application's recorder and their digests recomputed here from the formula the
design documents, so a change of format or a broken link shows up as a failure::

    digest = SHA-256(previous digest || payment id || version || topic || 0 || payload)
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from pathlib import Path
from uuid import UUID

import pytest

from klarna_flow import (
    ConcurrentModification,
    ConfigurationError,
    Flow,
    Payments,
    PaymentState,
    SealedSecret,
    TokenCipher,
    generate_key,
)

MakePayments = Callable[..., Payments]
AAD = b"payment-1/session_token"
SECRET = "krn:payment:eu1:klarna-network-session-token:secret-value"

# -- TokenCipher -------------------------------------------------------------------


def test_generated_keys_are_base64_of_32_random_bytes() -> None:
    keys = {generate_key() for _ in range(5)}
    assert len(keys) == 5
    for key in keys:
        assert len(base64.b64decode(key, validate=True)) == 32


def test_seal_and_open() -> None:
    cipher = TokenCipher(generate_key())
    sealed = cipher.seal(SECRET, aad=AAD)
    assert isinstance(sealed, SealedSecret)
    assert sealed.key_id == cipher.current_key_id
    assert SECRET not in sealed.ciphertext
    assert SECRET not in repr(sealed)
    assert sealed.ciphertext not in repr(sealed)
    assert cipher.open(sealed, aad=AAD) == SECRET


def test_every_seal_uses_a_fresh_nonce() -> None:
    cipher = TokenCipher(generate_key())
    one, two = cipher.seal(SECRET, aad=AAD), cipher.seal(SECRET, aad=AAD)
    assert one.nonce != two.nonce
    assert one.ciphertext != two.ciphertext


def test_a_sealed_token_is_bound_to_its_associated_data() -> None:
    cipher = TokenCipher(generate_key())
    sealed = cipher.seal(SECRET, aad=AAD)
    with pytest.raises(ConfigurationError, match="does not authenticate") as info:
        cipher.open(sealed, aad=b"payment-2/session_token")
    assert SECRET not in str(info.value)


def test_a_tampered_ciphertext_does_not_open() -> None:
    cipher = TokenCipher(generate_key())
    sealed = cipher.seal(SECRET, aad=AAD)
    raw = bytearray(base64.b64decode(sealed.ciphertext))
    raw[0] ^= 1
    forged = SealedSecret(sealed.key_id, sealed.nonce, base64.b64encode(raw).decode())
    with pytest.raises(ConfigurationError):
        cipher.open(forged, aad=AAD)


def test_opening_needs_the_key_that_sealed() -> None:
    sealed = TokenCipher(generate_key()).seal(SECRET, aad=AAD)
    other = TokenCipher(generate_key())
    with pytest.raises(ConfigurationError, match=sealed.key_id):
        other.open(sealed, aad=AAD)


def test_keys_rotate_new_values_use_the_current_key() -> None:
    old, new = generate_key(), generate_key()
    sealed_before = TokenCipher(old).seal(SECRET, aad=AAD)
    rotated = TokenCipher(new, old=[old])
    assert rotated.open(sealed_before, aad=AAD) == SECRET
    assert rotated.seal(SECRET, aad=AAD).key_id == TokenCipher(new).current_key_id
    assert rotated.key_ids == {sealed_before.key_id, rotated.current_key_id}


def test_raw_bytes_and_base64_name_the_same_key() -> None:
    raw = bytes(range(32))
    assert (
        TokenCipher(raw).current_key_id
        == TokenCipher(base64.b64encode(raw).decode()).current_key_id
    )


@pytest.mark.parametrize(
    "key",
    ["", "not base64!", base64.b64encode(b"x" * 31).decode(), base64.b64encode(b"x" * 33).decode()],
    ids=["empty", "not-base64", "31-bytes", "33-bytes"],
)
def test_a_bad_key_is_refused_without_being_echoed(key: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        TokenCipher(key)
    if key:
        assert key not in str(info.value)


def test_plaintext_storage_is_an_explicit_opt_in() -> None:
    with pytest.raises(ConfigurationError, match="plaintext"):
        TokenCipher(None)
    cipher = TokenCipher(None, plaintext=True)
    sealed = cipher.seal(SECRET, aad=AAD)
    assert sealed.key_id == cipher.current_key_id == "plaintext"
    assert cipher.open(sealed, aad=b"anything") == SECRET
    assert SECRET not in repr(sealed)


def test_the_cipher_never_shows_its_key() -> None:
    key = generate_key()
    cipher = TokenCipher(key, old=[generate_key()])
    assert key not in repr(cipher)
    assert cipher.current_key_id in repr(cipher)


def test_cipher_from_the_environment() -> None:
    old, new = generate_key(), generate_key()
    env = {"KLARNA_FLOW_CIPHER_KEY": new, "KLARNA_FLOW_OLD_CIPHER_KEYS": f" {old}, "}
    cipher = TokenCipher.from_env(env)
    assert cipher is not None
    assert cipher.current_key_id == TokenCipher(new).current_key_id
    assert len(cipher.key_ids) == 2
    assert TokenCipher.from_env({}) is None
    plain = TokenCipher.from_env({}, plaintext=True)
    assert plain is not None
    assert plain.current_key_id == "plaintext"


# -- tokens at rest in Payments -----------------------------------------------------


def _completed(payments: Payments, token: str) -> UUID:
    pid = payments.create(flow=Flow.AUTHORIZATION, amount=500, currency="NOK", reference="sealed-1")
    payments.complete(pid, session_token=token)
    return pid


def test_tokens_are_stored_sealed(payments: Payments, session_token: str) -> None:
    pid = _completed(payments, session_token)
    for record in payments._store.recorder.select_events(pid):
        assert session_token.encode() not in record.state
    sealed = payments.get(pid).session_token
    assert sealed is not None
    assert sealed.key_id == payments.cipher.current_key_id
    assert payments._store.unseal(pid, "session_token", sealed) == session_token


def test_a_sealed_token_cannot_be_moved_to_another_payment(
    payments: Payments, session_token: str
) -> None:
    pid = _completed(payments, session_token)
    sealed = payments.get(pid).session_token
    assert sealed is not None
    with pytest.raises(ConfigurationError):
        payments._store.unseal(UUID(int=pid.int ^ 1), "session_token", sealed)
    with pytest.raises(ConfigurationError):
        payments._store.unseal(pid, "customer_token", sealed)


def test_the_sqlite_file_holds_no_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, session_token: str
) -> None:
    monkeypatch.delenv("KLARNA_FLOW_CIPHER_KEY", raising=False)
    path = tmp_path / "payments.sqlite"
    payments = Payments.sqlite(path, cipher=TokenCipher(generate_key()))
    try:
        _completed(payments, session_token)
    finally:
        payments.close()
    assert session_token.encode() not in path.read_bytes()


def test_a_durable_store_needs_a_key_or_an_explicit_opt_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KLARNA_FLOW_CIPHER_KEY", raising=False)
    monkeypatch.delenv("KLARNA_FLOW_ALLOW_PLAINTEXT", raising=False)
    with pytest.raises(ConfigurationError, match="KLARNA_FLOW_CIPHER_KEY"):
        Payments.sqlite(tmp_path / "a.sqlite")
    payments = Payments.sqlite(tmp_path / "b.sqlite", allow_plaintext=True)
    try:
        assert payments.cipher.current_key_id == "plaintext"
    finally:
        payments.close()


def test_a_rotated_key_still_opens_old_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, session_token: str
) -> None:
    monkeypatch.delenv("KLARNA_FLOW_CIPHER_KEY", raising=False)
    old, new = generate_key(), generate_key()
    path = tmp_path / "payments.sqlite"
    before = Payments.sqlite(path, cipher=TokenCipher(old))
    pid = _completed(before, session_token)
    before.close()
    after = Payments.sqlite(path, cipher=TokenCipher(new, old=[old]))
    try:
        sealed = after.get(pid).session_token
        assert sealed is not None
        assert sealed.key_id == TokenCipher(old).current_key_id
        assert after._store.unseal(pid, "session_token", sealed) == session_token
    finally:
        after.close()


# -- the hash chain -----------------------------------------------------------------

DIGEST_SIZE = 32


def _genesis(application_name: str) -> bytes:
    return hashlib.sha256(b"klarna_flow genesis\x00" + application_name.encode()).digest()


def _link(previous: bytes, payment_id: UUID, version: int, topic: str, payload: bytes) -> bytes:
    h = hashlib.sha256(previous)
    h.update(payment_id.bytes)
    h.update(version.to_bytes(8, "big", signed=True))
    h.update(topic.encode())
    h.update(b"\x00")
    h.update(payload)
    return h.digest()


def broken_links(payments: Payments, payment_id: UUID) -> list[int]:
    """Versions whose stored digest does not follow from the record before."""
    previous = _genesis(payments._store.name)
    broken = []
    for record in payments._store.recorder.select_events(payment_id):
        digest, payload = record.state[:DIGEST_SIZE], record.state[DIGEST_SIZE:]
        expected = _link(previous, payment_id, record.originator_version, record.topic, payload)
        if digest != expected:
            broken.append(record.originator_version)
        previous = digest
    return broken


def _full_history(payments: Payments, session_token: str) -> UUID:
    pid = _completed(payments, session_token)
    payment = payments.get(pid)
    payment.request_authorization(idempotency_key="key-1", now=payments.now())
    payments._store.save_payment(payment)
    payment = payments.get(pid)
    payment.approve(
        payment_transaction_id="krn:payment:eu1:transaction:1",
        correlation_id=None,
        transaction_expires_at=None,
        now=payments.now(),
        cause="command:test",
    )
    payments._store.save_payment(payment)
    return pid


def test_every_stored_event_is_chained_to_the_one_before(
    payments: Payments, session_token: str
) -> None:
    pid = _full_history(payments, session_token)
    records = payments._store.recorder.select_events(pid)
    assert [r.originator_version for r in records] == [1, 2, 3, 4]
    assert broken_links(payments, pid) == []
    assert payments.get(pid).state is PaymentState.AUTHORIZED


def test_the_chain_starts_at_a_genesis_of_the_application(
    payments: Payments, session_token: str
) -> None:
    pid = _completed(payments, session_token)
    first = payments._store.recorder.select_events(pid)[0]
    payload = first.state[DIGEST_SIZE:]
    assert first.state[:DIGEST_SIZE] == _link(_genesis("Payments"), pid, 1, first.topic, payload)


def test_an_altered_record_no_longer_matches_its_digest(
    payments: Payments, session_token: str
) -> None:
    pid = _full_history(payments, session_token)
    first = payments._store.recorder.select_events(pid)[0]
    digest, payload = first.state[:DIGEST_SIZE], first.state[DIGEST_SIZE:]
    altered = payload.replace(b"NOK", b"SEK")
    assert altered != payload
    assert _link(_genesis("Payments"), pid, 1, first.topic, payload) == digest
    assert _link(_genesis("Payments"), pid, 1, first.topic, altered) != digest


def test_the_chain_continues_across_application_instances(
    store: str, make_payments: MakePayments, session_token: str
) -> None:
    if store == "memory":
        pytest.skip("each in-memory application has a store of its own")
    first = make_payments()
    pid = _completed(first, session_token)
    second = make_payments()
    payment = second.get(pid)
    payment.cancel(now=second.now())
    second._store.save_payment(payment)
    assert broken_links(second, pid) == []


def test_a_refused_concurrent_save_leaves_the_chain_intact(
    payments: Payments, session_token: str
) -> None:
    pid = payments.create(flow=Flow.AUTHORIZATION, amount=500, currency="NOK", reference="race")
    winner, loser = payments.get(pid), payments.get(pid)
    for payment in (winner, loser):
        payment.complete(
            session_token=payments._store.seal(pid, "session_token", session_token),
            customer_token=None,
            completed_at=payments.now(),
            now=payments.now(),
        )
    payments._store.save_payment(winner)
    with pytest.raises(ConcurrentModification):
        payments._store.save_payment(loser)
    winner.request_authorization(idempotency_key="key-1", now=payments.now())
    payments._store.save_payment(winner)
    assert broken_links(payments, pid) == []
