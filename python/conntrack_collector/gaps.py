"""Loss made visible on the stream: gap items, and the event numbers they account for.

Every event the collector receives gets a number, per process, in the order received (the
`sequence` header of its message: see docs/completeness.md). Events lost before they could be
published take numbers too: a gap item stands for them in the publish buffer, where they would
have been, so the numbers of what is published and the gaps together leave no hole. Gap items
are the body of a gap record (AMQP type `conntrack.gap`), published only with --gap-records;
without it they only move the numbering on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping

GAP_TYPE = "conntrack.gap"
# Events' JSON starts with {"Timestamp": never with this.
GAP_PREFIX = b'{"Type":"GAP"'
# Where events were lost: before we read them, refused by the full buffer, at stop.
KERNEL, BUFFER, SHUTDOWN = "kernel", "buffer", "shutdown"
# The reader reads the kernel's drops counter at least every 0.1 s: a kernel gap's From is
# set this much before the check that last saw the counter lower.
KERNEL_READ_SLACK_MS = 200


def gap_record(lost: int, where: str, from_ms: int, to_ms: int) -> bytes:
    """The body: `Lost` events lost at `Where`, some time within [From, To] (epoch ms)."""
    return (f'{{"Type":"GAP","Lost":{lost},"Where":"{where}","From":{from_ms},"To":{to_ms}}}'
            .encode())


def is_gap(item: bytes) -> bool:
    return item.startswith(GAP_PREFIX)


def lost_of(item: bytes) -> int:
    """How many event numbers a gap item stands for."""
    lost: int = json.loads(item)["Lost"]
    return lost


def now_ms() -> int:
    return int(time.time() * 1000)


class KernelLossWatch:
    """Turns the growth of the reader's `kernel_dropped` into kernel gap items."""

    def __init__(self, stream_stats: Callable[[], Mapping[str, object]],
                 clock_ms: Callable[[], int] = now_ms) -> None:
        self._stream_stats = stream_stats
        self._clock_ms = clock_ms
        self.dropped = 0
        self._checked_ms = clock_ms()

    def check(self) -> bytes | None:
        """A gap item for what the kernel dropped since the last check, or None."""
        try:
            value = self._stream_stats().get("kernel_dropped", 0)
        except Exception:  # noqa: BLE001 - a failed reader: the stop line reports it
            return None
        now = self._clock_ms()
        since, self._checked_ms = self._checked_ms, now
        if not isinstance(value, int) or value <= self.dropped:
            return None
        lost, self.dropped = value - self.dropped, value
        return gap_record(lost, KERNEL, since - KERNEL_READ_SLACK_MS, now)
