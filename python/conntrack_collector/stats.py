"""Counters of the collector, in one object the metrics exporter and the live display read.

Every counter has a single writer thread (the reader loop or the publisher thread), so plain
integer attributes are enough under the GIL; readers may see a value a moment old. The delivery
counts are the ledger's (ledger.py): here they are only read, through `delivery`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

from . import _native
from .ledger import DeliveryCounts


class DropReason(str, Enum):
    """Why events accepted from the kernel were never delivered; the metrics' label values."""

    BUFFER_FULL = "buffer_full"  # the publish buffer was at its bound: the newest was refused
    SHUTDOWN = "shutdown"  # still unconfirmed when the shutdown timeout ran out
    FATAL = "fatal"  # still unconfirmed when a fatal error ended the run
    DISCARDED_AT_CLOSE = "discarded_at_close"  # read by the reader thread, never handed over

    def __str__(self) -> str:
        return self.value


EVENT_TYPES: tuple[str, ...] = tuple(_native.EVENT_TYPES)


def _no_reader() -> Mapping[str, Any]:
    return {}


@dataclass
class CollectorStats:
    # The reader's counters (EventStream.stats(); the collector plugs its stream's in): it
    # counts the events it hands over by type, so nobody reads the type back out of the JSON.
    reader_stats: Callable[[], Mapping[str, Any]] = _no_reader
    # Events the kernel could not queue for us (the reader's kernel_dropped, as last read).
    kernel_dropped: int = 0
    # Events refused or abandoned, by reason.
    dropped_by_reason: dict[DropReason, int] = field(default_factory=dict)

    # The publisher's ledger's counts (the publisher plugs its own in); zeros without one.
    delivery: DeliveryCounts = field(default_factory=DeliveryCounts)

    # Written by the publisher thread: what the connection is doing, for people to see.
    connections: int = 0  # successful connections, the first one included
    connection_state: str = "disconnected"  # "connecting", "connected", "blocked"
    connected_host: str = ""

    # Kept current by the buffer.
    publish_buffer_events: int = 0
    publish_buffer_bytes: int = 0

    @property
    def received_by_type(self) -> dict[str, int]:
        """Events the collector took from the reader, by type."""
        counts = self.reader_stats()
        return {t: int(counts.get(f"delivered_{t.lower()}", 0)) for t in EVENT_TYPES}

    @property
    def received(self) -> int:
        return sum(self.received_by_type.values())

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by_reason.values())

    def drop(self, reason: DropReason, events: int) -> None:
        self.dropped_by_reason[reason] = self.dropped_by_reason.get(reason, 0) + events

    # Read-only views of the ledger's counts, in events (a batch counts its events).
    @property
    def published(self) -> int:
        return self.delivery.published

    @property
    def republished(self) -> int:
        return self.delivery.republished

    @property
    def confirmed(self) -> int:
        return self.delivery.confirmed

    @property
    def nacked(self) -> int:
        return self.delivery.nacked

    @property
    def returned(self) -> int:
        return self.delivery.returned

    @property
    def in_flight_events(self) -> int:
        return self.delivery.in_flight_events

    @property
    def awaiting_republish_events(self) -> int:
        return self.delivery.awaiting_events
