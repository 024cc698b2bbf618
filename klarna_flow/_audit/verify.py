"""Verifying the hash chain of stored events: tamper evidence with no key.

Each stored record is ``digest || payload`` with ``digest = link(previous
digest, payment id, version, topic, payload)`` (see :mod:`klarna_flow._store.chain`;
the format is read through :mod:`klarna_flow._store.codec`).
Verification recomputes every link over the bytes as stored, never decoding an
event, and names the first payment and version that does not check out:

=============  ================================================================
problem        what was found
=============  ================================================================
``altered``    the record does not match its digest, or does not chain to the
               record before it (edited, replaced, or inserted)
``missing``    a version is absent between the first and the last stored one
``reordered``  the record that belongs at this version is stored at another
               (versions or contents of two records swapped)
``unreadable`` the stored state is too short to hold a digest (or not bytes)
``truncated``  the chain heads (written in the events' transaction) or the
               payment index saw a later version than the log now holds (the
               last events were deleted)
=============  ================================================================

The chain uses no secret, so it shows edits made by anyone who did not also
recompute every later digest; the chain heads (see :mod:`klarna_flow._store.heads`)
catch a deleted tail without relying on any read model having caught up.

A whole-log check streams on SQLite and PostgreSQL: the log is read a page at
a time, and memory holds the chain heads of recent payments only (up to
:data:`HEADS_KEPT` twice); a payment seen longer ago takes its head from its
last record before, read back from the log, so the result is the one of a walk
that remembers every payment. Deleted tails are found by the database, which
compares the chain heads table with the log.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol
from uuid import UUID

import attrs
from eventsourcing.persistence import ApplicationRecorder

from klarna_flow._errors import PaymentNotFound
from klarna_flow._store.codec import has_digest, linked_digest
from klarna_flow._store.heads import HeadsRecorder, known_heads
from klarna_flow._store.projections import Progress
from klarna_flow._store.read_models import EventLog, LogRecord, ReadModelStore, as_uuid

__all__ = ["PROBLEMS", "ChainVerifier", "Finding", "VerificationReport"]

PROBLEMS = ("altered", "missing", "reordered", "unreadable", "truncated")
PAGE_SIZE = 2000
MAX_FINDINGS = 100
HEADS_KEPT = 10_000
"""Chain heads a streaming check keeps per generation (two generations)."""


@attrs.frozen
class Finding:
    """One payment whose stored history does not check out, from ``version`` on."""

    payment_id: UUID
    version: int
    problem: str
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "payment_id": str(self.payment_id),
            "version": self.version,
            "problem": self.problem,
            "detail": self.detail,
        }


@attrs.frozen
class VerificationReport:
    """The result of ``verify()``.

    Attributes:
        events_checked: stored records read.
        payments_checked: payments whose records were read.
        findings: one per payment that does not check out (at most 100), the
            first found first (log order, then deleted tails).
    """

    events_checked: int
    payments_checked: int
    findings: tuple[Finding, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every record checked out."""
        return not self.findings

    @property
    def finding(self) -> Finding | None:
        """The first finding, or None."""
        return self.findings[0] if self.findings else None

    @property
    def payment_id(self) -> UUID | None:
        return self.findings[0].payment_id if self.findings else None

    @property
    def version(self) -> int | None:
        return self.findings[0].version if self.findings else None

    @property
    def problem(self) -> str | None:
        return self.findings[0].problem if self.findings else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events_checked": self.events_checked,
            "payments_checked": self.payments_checked,
            "findings": [f.as_dict() for f in self.findings],
        }


class _Record(Protocol):
    """A stored record, from ``select_events`` or ``select_notifications``."""

    @property
    def originator_version(self) -> int: ...

    @property
    def topic(self) -> str: ...

    @property
    def state(self) -> bytes: ...


def check_records(
    genesis: bytes,
    payment_id: UUID,
    records: Sequence[_Record],
    indexed_version: int | None = None,
) -> Finding | None:
    """The first problem in one payment's records (in version order), if any."""
    previous = genesis
    for position, record in enumerate(records):
        expected = position + 1
        state = record.state
        if not has_digest(state):
            return Finding(payment_id, expected, "unreadable", "stored state holds no digest")
        if record.originator_version != expected:
            return Finding(
                payment_id,
                expected,
                "missing",
                f"version {expected} is not stored (next is {record.originator_version})",
            )
        digest = linked_digest(previous, payment_id, expected, record.topic, state)
        if digest is None:
            return _mismatch(payment_id, expected, previous, records[position + 1 :])
        previous = digest
    if indexed_version is not None and indexed_version > len(records):
        return Finding(
            payment_id,
            len(records) + 1,
            "truncated",
            f"the payment index saw version {indexed_version}; "
            f"the log holds {len(records)} event(s)",
        )
    return None


def _mismatch(payment_id: UUID, version: int, previous: bytes, later: Sequence[_Record]) -> Finding:
    for record in later:
        if not has_digest(record.state):
            continue
        if linked_digest(previous, payment_id, version, record.topic, record.state) is not None:
            return Finding(
                payment_id,
                version,
                "reordered",
                f"the record of version {version} is stored as version {record.originator_version}",
            )
    return Finding(
        payment_id,
        version,
        "altered",
        "the stored record does not match its digest or the record before it",
    )


class ChainVerifier:
    """Walks stored records and checks their chain.

    Args:
        recorder: the application recorder (events and notification log),
            with chain heads when it keeps them (:class:`HeadsRecorder`).
        genesis: the digest every payment's first event chains to.
        index: the payment index, whose versions reveal a deleted tail too
            (for stores without heads).
    """

    def __init__(
        self,
        recorder: ApplicationRecorder,
        genesis: bytes,
        index: ReadModelStore | None = None,
    ) -> None:
        self.recorder = recorder
        self.genesis = genesis
        self.index = index

    def payment(self, payment_id: UUID) -> VerificationReport:
        """Check one payment's records.

        Raises:
            PaymentNotFound: no record is stored and the index knows nothing of it.
        """
        records = self.recorder.select_events(payment_id)
        row = self.index.rows([payment_id]).get(payment_id) if self.index else None
        head = (
            self.recorder.head_version(payment_id)
            if isinstance(self.recorder, HeadsRecorder)
            else None
        )
        seen = max((v for v in (head, row.version if row else None) if v is not None), default=None)
        if not records and seen is None:
            raise PaymentNotFound(payment_id)
        finding = check_records(self.genesis, payment_id, records, seen)
        return VerificationReport(len(records), 1, (finding,) if finding else ())

    def last_versions(self) -> Iterable[tuple[UUID, int]]:
        """Each payment's last version: from the chain heads, or the index without them."""
        heads = known_heads(self.recorder)
        if heads is not None:
            return heads
        return self.index.versions() if self.index else ()

    def log(self, *, progress: Progress | None = None) -> VerificationReport:
        """Check every record of the notification log, a page at a time.

        Follows each payment's chain (its last version and digest); a record
        that does not extend its payment's chain is looked at again with the
        payment's own records in version order, which says what is wrong.
        """
        events = EventLog.of(self.recorder)
        if events is not None:
            return _Stream(self, events).run(progress)
        walk = _Walk(self)
        total = (self.recorder.max_notification_id() or 0) if progress else 0
        start = 1
        while page := self.recorder.select_notifications(start=start, limit=PAGE_SIZE):
            walk.page(page)
            start = page[-1].id + 1
            if progress:
                progress(page[-1].id, total)
        walk.check_tails()
        return VerificationReport(
            walk.events, len(walk.heads) + len(walk.settled), tuple(walk.findings)
        )

    def recheck(
        self, payment_id: UUID, indexed_version: int | None = None
    ) -> tuple[Finding | None, int]:
        """(finding, stored version count) from the payment's own records."""
        records = self.recorder.select_events(payment_id)
        return check_records(self.genesis, payment_id, records, indexed_version), len(records)


class _Walk:
    """The state of one pass over the notification log.

    Payments are keyed by ``uuid.int`` here: hashing and comparing ints is
    done in C, where ``UUID`` does it in Python, and this loop runs per event.
    """

    def __init__(self, verifier: ChainVerifier) -> None:
        self.verifier = verifier
        self.heads: dict[int, tuple[int, bytes]] = {}  # payment -> (version, digest)
        self.settled: dict[int, int] = {}  # rechecked in full: payment -> versions stored
        self.bad: set[int] = set()
        self.findings: list[Finding] = []
        self.events = 0

    def page(self, page: Sequence[Any]) -> None:
        heads, settled = self.heads, self.settled
        genesis = self.verifier.genesis
        for n in page:
            oid = n.originator_id
            try:
                key = oid.int
            except AttributeError:  # not a UUID: the recheck says what
                self._recheck(as_uuid(oid))
                continue
            if key in settled:
                continue
            version = n.originator_version
            head = heads.get(key)
            if head is None:
                in_order, previous = version == 1, genesis
            else:
                in_order, previous = version == head[0] + 1, head[1]
            if in_order:
                try:
                    digest = linked_digest(previous, oid, version, n.topic, n.state)
                except TypeError:  # the state is not bytes: the recheck says what
                    digest = None
                if digest is not None:
                    heads[key] = (version, digest)
                    continue
            self._recheck(oid)
        self.events += len(page)

    def _recheck(self, payment_id: UUID) -> None:
        finding, stored = self.verifier.recheck(payment_id)
        self.heads.pop(payment_id.int, None)
        self.settled[payment_id.int] = stored
        if finding is not None:
            self._found(finding)

    def _found(self, finding: Finding) -> None:
        self.bad.add(finding.payment_id.int)
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append(finding)

    def check_tails(self) -> None:
        """Compare each payment's last stored version with its head and the index."""
        for payment_id, version in self.verifier.last_versions():
            key = payment_id.int
            if key in self.bad:
                continue
            head = self.heads.get(key)
            stored = head[0] if head is not None else self.settled.get(key, 0)
            if version > stored:
                # Look again: a writer may have appended after the walk passed.
                finding, _ = self.verifier.recheck(payment_id, version)
                if finding is not None:
                    self._found(finding)


class _Stream:
    """One pass over the log of an SQL store, in memory that does not grow
    with the number of payments: the walk of :class:`_Walk`, with the chain
    heads of recent payments only.

    A payment is keyed by its id's hex digits (as :class:`EventLog` reads
    it). Its head (last version, digest, id) is kept while the payment is
    recent: two generations of :data:`HEADS_KEPT`, the older dropped when the
    newer fills. A record of a payment not held is checked against the
    payment's last record before it in the log (read back, a page's worth at
    once): that record extended the chain when it was walked, or the payment
    would be settled, so its stored digest is the head the walk had.
    Rechecked payments stay known (``settled``, and ``bad`` with a finding),
    as many as the log has damaged payments.
    """

    def __init__(self, verifier: ChainVerifier, events: EventLog) -> None:
        self.verifier = verifier
        self.log = events
        self.heads: dict[str, tuple[int, bytes, UUID]] = {}
        self.older: dict[str, tuple[int, bytes, UUID]] = {}
        self.looked_up: dict[str, tuple[int, Any, int] | None] = {}  # see _look_up
        self.settled: dict[str, int] = {}  # rechecked in full: payment -> versions stored
        self.bad: set[str] = set()
        self.findings: list[Finding] = []
        self.events = 0
        self.payments = 0

    def run(self, progress: Progress | None) -> VerificationReport:
        recorder = self.verifier.recorder
        total = (recorder.max_notification_id() or 0) if progress else 0
        position = 0
        while page := self.log.page(position, PAGE_SIZE):
            self.page(page)
            position = page[-1][0]
            if progress:
                progress(position, total)
        self.check_tails()
        return VerificationReport(self.events, self.payments, tuple(self.findings))

    def page(self, page: Sequence[LogRecord]) -> None:
        heads, settled, genesis = self.heads, self.settled, self.verifier.genesis
        self.looked_up = {}
        for at, (_, oid, version, topic, state) in enumerate(page):
            if settled and oid in settled:
                continue
            head = heads.get(oid) or self._recalled(oid, version, page, at)
            if head is None:  # the payment's first record in the log
                self.payments += 1
                payment_id = as_uuid(oid)
                in_order, previous = version == 1, genesis
            else:
                payment_id = head[2]
                in_order, previous = version == head[0] + 1, head[1]
            if in_order:
                try:
                    digest = linked_digest(previous, payment_id, version, topic, state)
                except TypeError:  # the state is not bytes: the recheck says what
                    digest = None
                if digest is not None:
                    heads[oid] = (version, digest, payment_id)
                    if self.looked_up:  # an answer read back before this record is stale now
                        self.looked_up.pop(oid, None)
                    if len(heads) >= HEADS_KEPT:
                        self.older, self.heads = heads, {}
                        heads = self.heads
                    continue
            self._recheck(oid, payment_id)
        self.events += len(page)

    def _recalled(
        self, oid: str, version: int, page: Sequence[LogRecord], at: int
    ) -> tuple[int, bytes, UUID] | None:
        """The head of a payment not among the recent ones: from the older
        generation, or from its last record before in the log; None if it
        has none (its first record, version 1 always)."""
        head = self.older.pop(oid, None)
        if head is not None:
            self.heads[oid] = head
            return head
        if version == 1:  # the payment's first record: a version 1 is stored once
            return None
        if oid not in self.looked_up:
            self._look_up(page, at)
        found = self.looked_up.pop(oid)  # good for this record only
        if found is None:
            return None
        return found[0], found[1], as_uuid(oid)

    def _look_up(self, page: Sequence[LogRecord], at: int) -> None:
        """Read back the last record before this one of each payment of the
        rest of the page that is not held, in one go. An answer holds until
        the payment's next record is checked (its first from here on), or its
        head is kept again."""
        held, older, settled = self.heads, self.older, self.settled
        wanted = {
            oid
            for _, oid, version, _, _ in page[at:]
            if version != 1 and oid not in held and oid not in older and oid not in settled
        }
        found = self.log.latest_before(wanted, page[at][0])
        self.looked_up.update(found)
        self.looked_up.update((oid, None) for oid in wanted - found.keys())

    def _recheck(self, oid: str, payment_id: UUID) -> None:
        finding, stored = self.verifier.recheck(payment_id)
        self.heads.pop(oid, None)
        self.older.pop(oid, None)
        self.settled[oid] = stored
        if finding is not None:
            self._found(oid, finding)

    def _found(self, oid: str, finding: Finding) -> None:
        self.bad.add(oid)
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append(finding)

    def check_tails(self) -> None:
        """Payments whose chain head (or, without heads, index row) saw a later
        version than the log holds: looked at again, a writer may have appended."""
        if len(self.findings) >= MAX_FINDINGS:
            return
        if self.log.has_heads():
            ahead: Iterable[tuple[str, int]] = self.log.ahead_of_log()
        else:
            ahead = self._ahead_of_index()
        for oid, version in ahead:
            if oid in self.bad:
                continue
            finding, _ = self.verifier.recheck(as_uuid(oid), version)
            if finding is not None:
                self._found(oid, finding)

    def _ahead_of_index(self) -> Iterable[tuple[str, int]]:
        """Rows of the payment index above the log's last version (a store
        opened read-only before its first writer added chain heads)."""
        index = self.verifier.index
        rows = (
            [(payment_id.hex, version) for payment_id, version in index.versions()] if index else []
        )
        for start in range(0, len(rows), PAGE_SIZE):
            chunk = rows[start : start + PAGE_SIZE]
            stored = self.log.last_versions(oid for oid, _ in chunk)
            yield from ((oid, v) for oid, v in chunk if v > stored.get(oid, 0))
