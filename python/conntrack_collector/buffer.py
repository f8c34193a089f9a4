"""The bounded buffer between the reader loop and the publisher thread.

The reader never waits on the broker: `put_many` never blocks. When the bound would be
exceeded (in events or in bytes) the NEWEST events are refused, counted and logged. We drop the
newest rather than the oldest so that what is queued stays one gap-free stretch of the event
stream, and so that events already handed to the publisher (perhaps published, waiting for a
confirm) never vanish.

What the bound counts is what the collector really holds: the events waiting here, and those
taken by the publisher and not yet confirmed (in flight, or waiting to be published again),
which `release` gives back when the broker confirms them. Waiting events are kept compact,
their JSON bytes concatenated in chunks with an array of where each ends (4 bytes an event
beside its JSON), not as one Python object each (about 40 bytes more an event, and a
fragmented heap); taken events are Python objects again. An event is let in only if the bound
has room for it at what it will cost once taken (its JSON and EVENT_OVERHEAD_BYTES), so
taking never pushes what is held over the bound. The default bound is a share of the
machine's memory (`default_max_bytes`).

A large backlog is packed: a chunk closed while more than PACK_AFTER_BYTES of JSON wait, and
another chunk before it, will wait a while, so it is compressed (zlib, its fastest level) and
unpacked when the publisher reaches it. Once packing has caught up, what is unpacked is the
chunk taken from, the one filled, and at most PACK_AFTER_BYTES between them, so a large
backlog's memory is about its compressed size plus 34 MiB. A smaller one is not worth the CPU
(about 3 us an event, on the two cores the reader shares at a burst's peak: packing every
backlog cost the instant-ack sink a tenth of its rate; docs/benchmarks.md). Packing runs on a
thread of its own, started when a chunk is to be packed and ended when none is left, and only
while the reader loop keeps up (its last put was not a full batch): packing during a flood,
on the reader loop's thread or on its own, made the kernel drop up to 9 % of some 200k-flow
flushes. So a flood's backlog is packed once the flood is over, and its peak is not lowered. The bound still counts every event at its JSON size: packing
lowers what memory holds, not how many events the bound lets in.

Refused events leave a gap item (gaps.py) where they would have been, before the next event
kept; a gap item is an entry of its own between chunks, outside the bounds (a run of refusals
makes one), and `take` hands it out alone: it is a message of its own.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import threading
import time
import zlib
from array import array
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Callable

from . import gaps
from .stats import CollectorStats, DropReason

log = logging.getLogger("conntrack_collector")

DROP_LOG_INTERVAL_S = 10.0
# A chunk of waiting events is closed at this size; a consumed one is freed at once.
CHUNK_BYTES = 1 << 20
# Packing is zlib's fastest level: on x86_64 about 5 ms a MiB to pack and 2 ms to unpack
# events with varied addresses, to a seventh of their size (docs/cli.md); slower levels gain
# little on such text.
PACK_LEVEL = 1
# Chunks closed while more JSON than this waits are packed.
PACK_AFTER_BYTES = 32 << 20
# What a waiting event costs beside its JSON: its end offset (array "I").
INDEX_BYTES = 4
# What an event taken by the publisher costs beside its JSON: a bytes object's header (33 B)
# and its slot in a tuple, rounded up to the allocator's granule.
EVENT_OVERHEAD_BYTES = 48

# --max-buffer-bytes by default: this share of MemTotal, within these bounds, so that a
# long outage on a 128 MiB router fills 16 MiB, not the whole memory.
MEMORY_SHARE = 8  # 1/8 of MemTotal
MIN_DEFAULT_BYTES = 16 << 20
MAX_DEFAULT_BYTES = 1 << 30
MEMINFO = Path("/proc/meminfo")


def default_max_bytes(meminfo: Path = MEMINFO) -> int:
    """1/8 of the machine's memory (MemTotal), at least 16 MiB and at most 1 GiB; 16 MiB when
    MemTotal cannot be read."""
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
                return max(MIN_DEFAULT_BYTES, min(MAX_DEFAULT_BYTES, total // MEMORY_SHARE))
    except (OSError, ValueError, IndexError):
        pass
    return MIN_DEFAULT_BYTES


class _Chunk:
    """Events' JSON one after the other; `ends[i]` is where event i ends; `first` the first
    event not yet taken. While packed, `data` is empty and `packed` holds it compressed."""

    __slots__ = ("data", "ends", "first", "packed")

    def __init__(self) -> None:
        self.data: bytearray | bytes = bytearray()
        self.ends = array("I")
        self.first = 0
        self.packed: bytes | None = None

    @property
    def memory_bytes(self) -> int:
        """Its JSON, packed or not, and its index, taken events included until it is freed."""
        data = self.packed if self.packed is not None else self.data
        return len(data) + self.ends.itemsize * len(self.ends)

    def __len__(self) -> int:
        return len(self.ends) - self.first

    def start_of(self, i: int) -> int:
        return self.ends[i - 1] if i else 0


class EventBuffer:
    def __init__(self, max_events: int, max_bytes: int, stats: CollectorStats) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._stats = stats
        self._chunks: deque[_Chunk | bytes] = deque()  # bytes: a gap item
        self._filling: _Chunk | None = None  # the chunk puts append to
        self._packing = threading.Condition()  # guards the two below; notified when idle
        self._to_pack: deque[_Chunk] = deque()
        self._packer_running = False
        self._reader_behind = False  # as the last put said
        self._events = 0  # waiting here
        self._bytes = 0  # their JSON bytes
        self._taken_events = 0  # taken, not yet released
        self._taken_bytes = 0  # their JSON bytes and overhead
        self._lock = threading.Lock()
        # Called (outside the lock) on the first put after the consumer found us empty.
        self._waker: Callable[[], None] | None = None
        self._drops_unlogged = 0
        self._last_drop_log = 0.0
        self._refused: list[int] | None = None  # [events, from_ms, to_ms] since the last kept
        self._gap_items = 0  # waiting here

    @property
    def held_bytes(self) -> int:
        """What is held: waiting events with their index, taken ones with their overhead."""
        return self._bytes + INDEX_BYTES * self._events + self._taken_bytes

    @property
    def committed_bytes(self) -> int:
        """What the bound counts: what is held once every waiting event is taken too."""
        return self._bytes + EVENT_OVERHEAD_BYTES * self._events + self._taken_bytes

    @property
    def memory_bytes(self) -> int:
        """What the chunks of waiting events really take, packed or not."""
        with self._lock:
            return sum(c.memory_bytes for c in self._chunks if isinstance(c, _Chunk))

    @property
    def held_events(self) -> int:
        return self._events + self._taken_events

    def put(self, event: bytes) -> bool:
        """Queue one event; False when it was dropped because the buffer is full."""
        return self.put_many((event,)) == 1

    def put_many(self, events: Sequence[bytes], *, reader_behind: bool = False) -> int:
        """Queue events in order; returns how many were kept (the first ones: the rest are
        dropped as the bound is reached). `reader_behind`: more events wait to be read (the
        caller got a full batch); packing waits until a put says otherwise."""
        if not events:
            if reader_behind != self._reader_behind:
                self._to_packer(None, reader_behind)
            return 0
        sizes = list(map(len, events))
        with self._lock:
            room_events = self.max_events - self.held_events
            room_bytes = self.max_bytes - self.committed_bytes
            kept = len(events)
            total = sum(sizes)
            if kept > room_events or total + EVENT_OVERHEAD_BYTES * kept > room_bytes:
                kept = max(0, min(kept, room_events))
                # The longest prefix within the bytes left.
                costs = itertools.accumulate(size + EVENT_OVERHEAD_BYTES for size in sizes[:kept])
                kept = bisect.bisect_right(list(costs), room_bytes)
                total = sum(sizes[:kept])
            closed = None
            if kept:
                if self._refused is not None:
                    self._append_refused()
                closed = self._append(events, sizes, kept)
                self._events += kept
                self._bytes += total
                self._publish_counts()
                waker, self._waker = self._waker, None
            else:
                waker = None
            if kept < len(events):
                self._dropped(len(events) - kept)
        if waker is not None:
            waker()
        if closed is not None or reader_behind != self._reader_behind:
            self._to_packer(closed, reader_behind)
        return kept

    def put_gap(self, item: bytes | None) -> None:
        """Queue a gap item (gaps.gap_record), whatever the bounds: it stands for lost events.
        Before it, the gap item of events refused since the last one kept, if any (None: only
        that one, at stop)."""
        with self._lock:
            if self._refused is not None:
                self._append_refused()
            if item is not None:
                self._chunks.append(item)
                self._gap_items += 1
            self._publish_counts()
            waker, self._waker = self._waker, None
        if waker is not None:
            waker()

    def _append_refused(self) -> None:
        lost, from_ms, to_ms = self._refused or (0, 0, 0)
        self._refused = None
        self._chunks.append(gaps.gap_record(lost, gaps.BUFFER, from_ms, to_ms))
        self._gap_items += 1

    def _append(self, events: Sequence[bytes], sizes: list[int], kept: int) -> _Chunk | None:
        """Appends to the last chunk, or to a new one when it is full; returns the chunk this
        closed if it is to be packed: one that waits behind another."""
        closed = None
        chunk = self._chunks[-1] if self._chunks else None
        if not isinstance(chunk, _Chunk) or len(chunk.data) >= CHUNK_BYTES:
            # Closed by its size or by a gap item after it; untouched, not first, and behind a
            # large backlog: it will wait.
            filled = self._filling
            if (filled is not None and filled.first == 0 and filled is not self._chunks[0]
                    and self._bytes > PACK_AFTER_BYTES):
                closed = filled
            chunk = self._filling = _Chunk()
            self._chunks.append(chunk)
        base = len(chunk.data)
        chunk.data += b"".join(itertools.islice(events, kept))
        # Each event's end; the first value accumulate gives is `initial`, the previous end.
        ends = itertools.accumulate(sizes[:kept], initial=base)
        chunk.ends.extend(itertools.islice(ends, 1, None))
        return closed

    def _to_packer(self, chunk: _Chunk | None, reader_behind: bool) -> None:
        with self._packing:
            caught_up = self._reader_behind and not reader_behind
            self._reader_behind = reader_behind
            if chunk is not None:
                self._to_pack.append(chunk)
            if caught_up:
                self._packing.notify_all()
            if self._packer_running or not self._to_pack:
                return
            self._packer_running = True
        try:
            threading.Thread(target=self._pack_queued, name="buffer-packer", daemon=True).start()
        except RuntimeError as exc:  # no thread to be had (a low RLIMIT_NPROC): stays unpacked
            log.warning("backlog not packed: cannot start a thread (%s)", exc)
            with self._packing:
                self._to_pack.clear()
                self._packer_running = False
                self._packing.notify_all()

    def _pack_queued(self) -> None:
        while True:
            with self._packing:
                self._packing.wait_for(lambda: not self._reader_behind)
                if not self._to_pack:
                    self._packer_running = False
                    self._packing.notify_all()
                    return
                chunk = self._to_pack.popleft()
            self._pack(chunk)

    def _pack(self, chunk: _Chunk) -> None:
        """Compresses a closed chunk outside the lock (zlib lets go of the GIL, and nothing
        writes a closed chunk), and keeps the result unless events were taken from it
        meanwhile (then the publisher is there, and it stays as it is)."""
        if chunk.first:
            return
        packed = zlib.compress(chunk.data, PACK_LEVEL)
        with self._lock:
            if chunk.first == 0 and chunk.packed is None:
                chunk.packed, chunk.data = packed, b""

    def wait_packed(self, timeout: float | None = None) -> bool:
        """Waits until every closed chunk handed to the packer is packed (or skipped); False
        if the timeout came first."""
        with self._packing:
            return self._packing.wait_for(lambda: not self._packer_running, timeout)

    def take(self, max_events: int, *, max_bytes: int | None = None,
             waker: Callable[[], None] | None = None) -> list[bytes]:
        """Up to max_events of the oldest events, and no more than max_bytes of them (but at
        least one, whatever its size); those before a gap item, or the gap item alone. When
        there are none and a waker is given, it is called once by the next put, so the consumer
        need not poll. What is taken stays counted against the bound until `release` (gap items
        are outside it)."""
        taken: list[bytes] = []
        with self._lock:
            while self._chunks and len(taken) < max_events:
                chunk = self._chunks[0]
                if not isinstance(chunk, _Chunk):  # a gap item: alone
                    if not taken:
                        self._chunks.popleft()
                        self._gap_items -= 1
                        self._publish_counts()
                        return [chunk]
                    break
                if chunk.packed is not None:
                    chunk.data, chunk.packed = zlib.decompress(chunk.packed), None
                first, ends = chunk.first, chunk.ends
                last = min(len(ends), first + max_events - len(taken))  # exclusive
                if max_bytes is not None:
                    budget = max_bytes - sum(map(len, taken))
                    fit = bisect.bisect_right(ends, chunk.start_of(first) + budget, first, last)
                    last = max(fit, first + 1) if not taken else fit
                if last == first:
                    break
                view = memoryview(chunk.data)
                start = chunk.start_of(first)
                for i in range(first, last):
                    end = ends[i]
                    taken.append(bytes(view[start:end]))
                    start = end
                view.release()
                chunk.first = last
                if last < len(ends):
                    break  # a bound stopped us inside this chunk
                self._chunks.popleft()
            n = len(taken)
            size = sum(map(len, taken))
            self._events -= n
            self._bytes -= size
            self._taken_events += n
            self._taken_bytes += size + EVENT_OVERHEAD_BYTES * n
            self._publish_counts()
            if not taken:
                self._waker = waker
        return taken

    def release(self, events: int, bytes_: int) -> None:
        """Events taken earlier are confirmed (or given up): no longer held."""
        with self._lock:
            self._taken_events -= events
            self._taken_bytes -= bytes_ + EVENT_OVERHEAD_BYTES * events

    def clear(self) -> int:
        """Empty the buffer (at shutdown); returns how many events it held."""
        with self._lock:
            n = self._events
            self._chunks.clear()
            self._filling = None
            self._events = 0
            self._gap_items = 0
            self._bytes = 0
            self._publish_counts()
            self._waker = None
            return n

    def __len__(self) -> int:
        """Items held: events, and gap items."""
        return self._events + self._gap_items

    @property
    def events_held(self) -> int:
        """Events waiting here (gap items are not events)."""
        return self._events

    def _publish_counts(self) -> None:
        self._stats.publish_buffer_events = self._events
        self._stats.publish_buffer_bytes = self._bytes

    def _dropped(self, events: int) -> None:
        self._stats.drop(DropReason.BUFFER_FULL, events)
        now_ms = gaps.now_ms()
        if self._refused is None:
            self._refused = [0, now_ms, now_ms]
        self._refused[0] += events
        self._refused[2] = now_ms
        self._drops_unlogged += events
        now = time.monotonic()
        # The first drop is logged at once, later ones summed up every DROP_LOG_INTERVAL_S.
        if now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
            log.warning(
                "buffer full (%d events, %d bytes held, including %d events with the "
                "publisher; bounds %d events, %d bytes): dropped %d event(s) since the last "
                "report", self.held_events, self.committed_bytes, self._taken_events,
                self.max_events, self.max_bytes, self._drops_unlogged,
            )
            self._drops_unlogged = 0
            self._last_drop_log = now

    def flush_drop_log(self) -> None:
        """Report drops not yet logged (at shutdown)."""
        if self._drops_unlogged:
            log.warning("buffer full: dropped %d event(s) since the last report",
                        self._drops_unlogged)
            self._drops_unlogged = 0
