"""Counters of the collector, in one object that the metrics exporter and the progress display read.

Every counter has a single writer thread (the reader loop or the publisher thread), so plain
integer attributes are enough under the GIL; readers may see a value a moment old.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class DropReason(str, Enum):
    """Why events accepted from the kernel were never delivered; the metrics' label values."""

    BUFFER_FULL = "buffer_full"  # the publish buffer was at its bound: the newest was refused
    SHUTDOWN = "shutdown"  # still unconfirmed when the shutdown timeout ran out
    FATAL = "fatal"  # still unconfirmed when a fatal error ended the run
    DISCARDED_AT_CLOSE = "discarded_at_close"  # read by the reader thread, never handed over

    def __str__(self) -> str:
        return self.value


@dataclass
class CollectorStats:
    # Written by the reader loop.
    received_by_type: dict[str, int] = field(
        default_factory=lambda: {"NEW": 0, "UPDATE": 0, "DESTROY": 0}
    )
    # Events refused or abandoned, by reason.
    dropped_by_reason: dict[DropReason, int] = field(default_factory=dict)

    # Written by the publisher thread. Counted in events, not messages (a batch counts its events).
    published: int = 0  # first publish of an event
    republished: int = 0  # published again after a nack, a return or a lost connection
    confirmed: int = 0  # acked by the broker: delivered
    nacked: int = 0
    returned: int = 0
    messages_confirmed: int = 0
    connections: int = 0  # successful connections, the first one included
    connection_state: str = "disconnected"  # "connecting", "connected", "blocked"
    connected_host: str = ""
    # Publish-to-confirm latency, summed over confirmed messages.
    confirm_latency_s_sum: float = 0.0
    confirm_latency_count: int = 0

    # Kept current by the buffer.
    publish_buffer_events: int = 0
    publish_buffer_bytes: int = 0
    in_flight_events: int = 0

    @property
    def received(self) -> int:
        return sum(self.received_by_type.values())

    @property
    def dropped(self) -> int:
        return sum(self.dropped_by_reason.values())

    def drop(self, reason: DropReason, events: int) -> None:
        self.dropped_by_reason[reason] = self.dropped_by_reason.get(reason, 0) + events
