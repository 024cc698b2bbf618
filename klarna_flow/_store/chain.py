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
from collections.abc import Hashable, Iterable
from typing import Any, cast
from uuid import UUID

from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    AggregateRecorder,
    Mapper,
    MapperDeserialisationError,
    StoredEvent,
    find_id_convertor,
)
from eventsourcing.utils import TopicError, get_topic, resolve_topic

from klarna_flow._store.codec import TYPED, EventCodec, link, split

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
    """An eventsourcing ``Mapper`` that prefixes each record with its chain digest,
    and writes (and reads) the payload with klarna_flow's :class:`EventCodec`
    (its transcoder reads and writes the legacy format)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.codec = EventCodec(self.transcoder)
        self.genesis = genesis("Application")
        self.recorder: AggregateRecorder | None = None
        self._heads: dict[UUID | str, tuple[int, bytes]] = {}
        self._local = threading.local()  # digests mapped by this thread, not yet saved

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        # eventsourcing's Mapper.to_stored_event, with the payload from the codec.
        event_class = type(domain_event)
        topic = get_topic(event_class)
        state = dict(vars(domain_event))
        oid = state.pop("originator_id")
        version = state.pop("originator_version")
        class_version = getattr(event_class, "class_version", 1)
        if class_version > 1:
            state["class_version"] = class_version
        payload = self.codec.encode(topic, state)
        digest = link(self._head_before(oid, version), oid, version, topic, payload)
        self._unsaved()[oid] = (version, digest)
        return StoredEvent(oid, version, topic, digest + payload)

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        digest, payload = split(stored_event.state)
        self._remember(stored_event.originator_id, stored_event.originator_version, digest)
        if payload[:1] != TYPED:
            return super().to_domain_event(_Payload(stored_event, payload))
        return self._typed_event(stored_event, payload)

    def _typed_event(self, stored: StoredEvent, payload: bytes) -> DomainEventProtocol[UUID]:
        # eventsourcing's Mapper.to_domain_event, with the state from the codec.
        topic, oid = stored.topic, stored.originator_id
        try:
            event_class = resolve_topic(topic)
            state = self.codec.decode(topic, payload)
        except (TopicError, ValueError, TypeError) as e:
            msg = (
                f"Failed to deserialise state of stored event with topic '{topic}', "
                f"originator_id '{oid}' and originator_version {stored.originator_version}: {e}"
            )
            raise MapperDeserialisationError(msg) from e
        state["originator_id"] = find_id_convertor(event_class, cast(Hashable, type(oid)))(oid)
        state["originator_version"] = stored.originator_version
        class_version = getattr(event_class, "class_version", 1)
        from_version = state.pop("class_version", 1)
        while from_version < class_version:
            getattr(event_class, f"upcast_v{from_version}_v{from_version + 1}")(state)
            from_version += 1
        event: DomainEventProtocol[UUID] = object.__new__(event_class)
        object.__setattr__(event, "__dict__", state)
        return event

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
