"""Tamper evidence: every stored event is chained to the one before it.

The stored record of each event is ``digest || payload`` where::

    digest = SHA-256(previous digest || originator id || version || topic || 0 || payload)

(:func:`~klarna_flow._store.codec.link`, with the rest of the stored format
in :mod:`klarna_flow._store.codec`), and the first event of a payment chains
to a per-application genesis. The
digest covers the bytes as stored (secrets are already sealed there), so
checking the chain needs no key and never decodes an event. Writing costs one
hash per event; the previous digest comes from the load that preceded every
command (kept in a small cache), or from one indexed read when it is not there.
The cache learns a written digest only once its insert succeeded, so a save
that lost a race never poisons the chain of the one that won.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable
from typing import Any
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import AggregateRecorder, Mapper, StoredEvent

from klarna_flow._store.codec import link, split

__all__ = ["ChainedMapper", "genesis", "link"]

_CACHE_LIMIT = 100_000


def genesis(application_name: str) -> bytes:
    """The digest every payment's first event chains to."""
    return hashlib.sha256(b"klarna_flow genesis\x00" + application_name.encode()).digest()


class _Payload(StoredEvent):
    """A stored record seen without its digest (cheaper than a new frozen dataclass)."""

    def __init__(self, stored: StoredEvent, payload: bytes) -> None:
        d = self.__dict__
        d["originator_id"] = stored.originator_id
        d["originator_version"] = stored.originator_version
        d["topic"] = stored.topic
        d["state"] = payload


class ChainedMapper(Mapper[UUID]):
    """An eventsourcing ``Mapper`` that prefixes each record with its chain digest."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.genesis = genesis("Application")
        self.recorder: AggregateRecorder | None = None
        self._heads: dict[UUID | str, tuple[int, bytes]] = {}
        self._local = threading.local()  # digests mapped by this thread, not yet saved

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        plain = super().to_stored_event(domain_event)
        oid, version = plain.originator_id, plain.originator_version
        digest = link(self._head_before(oid, version), oid, version, plain.topic, plain.state)
        self._unsaved()[oid] = (version, digest)
        return StoredEvent(oid, version, plain.topic, digest + plain.state)

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        digest, payload = split(stored_event.state)
        self._remember(stored_event.originator_id, stored_event.originator_version, digest)
        return super().to_domain_event(_Payload(stored_event, payload))

    def _unsaved(self) -> dict[UUID | str, tuple[int, bytes]]:
        heads: dict[UUID | str, tuple[int, bytes]] | None = getattr(self._local, "heads", None)
        if heads is None:
            heads = self._local.heads = {}
        return heads

    def settle(self, saved: Iterable[StoredEvent]) -> None:
        """Learn the digests of records whose insert succeeded."""
        for record in saved:
            self._remember(record.originator_id, record.originator_version, split(record.state)[0])
        self._unsaved().clear()

    def discard(self) -> None:
        """Forget digests mapped for an insert that failed."""
        self._unsaved().clear()

    def _remember(self, oid: UUID | str, version: int, digest: bytes) -> None:
        # One dict store is atomic; the size check may race, which only means
        # an occasional early clear (misses fall back to one indexed read).
        if len(self._heads) >= _CACHE_LIMIT:
            self._heads.clear()
        self._heads[oid] = (version, digest)

    def _head_before(self, oid: UUID | str, version: int) -> bytes:
        if version == 1:
            return self.genesis
        unsaved = self._unsaved().get(oid)  # an earlier event of the same save
        if unsaved is not None and unsaved[0] == version - 1:
            return unsaved[1]
        cached = self._heads.get(oid)
        if cached is not None and cached[0] == version - 1:
            return cached[1]
        if self.recorder is None:  # pragma: no cover - wired by the application
            msg = "ChainedMapper has no recorder to read the previous digest from"
            raise RuntimeError(msg)
        previous = self.recorder.select_events(oid, lte=version - 1, desc=True, limit=1)
        if not previous or previous[0].originator_version != version - 1:
            # The insert will conflict or the chain is broken; either way the
            # digest cannot link to a record that is not there.
            return self.genesis
        return split(previous[0].state)[0]
