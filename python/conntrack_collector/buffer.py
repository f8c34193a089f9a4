"""The bounded buffer between the reader loop and the publisher thread.

The reader never waits on the broker: `put` never blocks. When the buffer is full (in events
or in bytes) the NEWEST event is refused, counted and logged. We drop the newest rather than
the oldest so that what is queued stays one gap-free stretch of the event stream, and so that
events already handed to the publisher (perhaps published, waiting for a confirm) never vanish.
Refused events leave a gap item (gaps.py) where they would have been, before the next event
kept; gap items are outside the bounds (a run of refusals makes one).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from typing import Callable

from . import gaps
from .stats import CollectorStats, DropReason

log = logging.getLogger("conntrack_collector")

DROP_LOG_INTERVAL_S = 10.0


class EventBuffer:
    def __init__(self, max_events: int, max_bytes: int, stats: CollectorStats) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._stats = stats
        self._events: deque[bytes] = deque()
        self._bytes = 0
        self._lock = threading.Lock()
        # Called (outside the lock) on the first put after the consumer found us empty.
        self._waker: Callable[[], None] | None = None
        self._drops_unlogged = 0
        self._last_drop_log = 0.0
        self._refused: list[int] | None = None  # [events, from_ms, to_ms] since the last kept
        self._gap_items = 0  # of what it holds

    def put(self, event: bytes) -> bool:
        """Queue one event; False when it was dropped because the buffer is full."""
        size = len(event)
        with self._lock:
            if len(self._events) >= self.max_events or self._bytes + size > self.max_bytes:
                self._dropped()
                return False
            if self._refused is not None:
                self._append_refused()
            self._events.append(event)
            self._bytes += size
            self._stats.publish_buffer_events = len(self._events)
            self._stats.publish_buffer_bytes = self._bytes
            waker, self._waker = self._waker, None
        if waker is not None:
            waker()
        return True

    def put_gap(self, item: bytes | None) -> None:
        """Queue a gap item (gaps.gap_record), whatever the bounds: it stands for lost events.
        Before it, the gap item of events refused since the last one kept, if any (None: only
        that one, at stop)."""
        with self._lock:
            if self._refused is not None:
                self._append_refused()
            if item is not None:
                self._events.append(item)
                self._bytes += len(item)
                self._gap_items += 1
            self._stats.publish_buffer_events = len(self._events)
            waker, self._waker = self._waker, None
        if waker is not None:
            waker()

    def _append_refused(self) -> None:
        lost, from_ms, to_ms = self._refused or (0, 0, 0)
        self._refused = None
        item = gaps.gap_record(lost, gaps.BUFFER, from_ms, to_ms)
        self._events.append(item)
        self._bytes += len(item)
        self._gap_items += 1

    def put_many(self, events: list[bytes]) -> int:
        """Queue events in order; returns how many were kept (the rest dropped as full)."""
        return sum(self.put(event) for event in events)

    def take(self, max_events: int, *, max_bytes: int | None = None,
             waker: Callable[[], None] | None = None) -> list[bytes]:
        """Up to max_events of the oldest events, and no more than max_bytes of them (but at
        least one, whatever its size); those before a gap item, or the gap item alone. When there are none and a waker is given, it is called
        once by the next put, so the consumer need not poll."""
        with self._lock:
            events = self._events
            n = min(max_events, len(events))
            if max_bytes is not None:
                size, fit = 0, 0
                for event in itertools.islice(events, n):
                    if fit and size + len(event) > max_bytes:
                        break
                    size += len(event)
                    fit += 1
                n = fit
            if self._gap_items:  # a gap item comes alone: it is a message of its own
                for i, item in enumerate(itertools.islice(events, n)):
                    if gaps.is_gap(item):
                        n = max(i, 1)
                        break
            taken = [events.popleft() for _ in range(n)]
            if self._gap_items:
                self._gap_items -= sum(map(gaps.is_gap, taken))
            self._bytes -= sum(map(len, taken))
            self._stats.publish_buffer_events = len(events)
            self._stats.publish_buffer_bytes = self._bytes
            if not taken:
                self._waker = waker
            return taken

    def release(self, events: int, bytes_: int) -> None:
        """Events taken earlier are confirmed or dropped. A no-op here: this buffer bounds
        only what it holds (the in-flight window bounds the rest)."""

    def clear(self) -> int:
        """Empty the buffer (at shutdown); returns how many events it held."""
        with self._lock:
            n = len(self._events) - self._gap_items
            self._gap_items = 0
            self._events.clear()
            self._bytes = 0
            self._stats.publish_buffer_events = 0
            self._stats.publish_buffer_bytes = 0
            self._waker = None
            return n

    def __len__(self) -> int:
        """Items held: events, and gap items."""
        return len(self._events)

    @property
    def events_held(self) -> int:
        """Events held (gap items are not events)."""
        return len(self._events) - self._gap_items

    def _dropped(self) -> None:
        self._stats.drop(DropReason.BUFFER_FULL, 1)
        now_ms = gaps.now_ms()
        if self._refused is None:
            self._refused = [0, now_ms, now_ms]
        self._refused[0] += 1
        self._refused[2] = now_ms
        self._drops_unlogged += 1
        now = time.monotonic()
        # The first drop is logged at once, later ones summed up every DROP_LOG_INTERVAL_S.
        if now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
            log.warning(
                "buffer full (%d events, %d bytes; bounds %d events, %d bytes): "
                "dropped %d event(s) since the last report",
                len(self._events), self._bytes, self.max_events, self.max_bytes,
                self._drops_unlogged,
            )
            self._drops_unlogged = 0
            self._last_drop_log = now

    def flush_drop_log(self) -> None:
        """Report drops not yet logged (at shutdown)."""
        if self._drops_unlogged:
            log.warning("buffer full: dropped %d event(s) since the last report",
                        self._drops_unlogged)
            self._drops_unlogged = 0
