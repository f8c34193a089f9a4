"""The buffer against a model, with hypothesis: random runs of put_many (events of any size,
batches of any length), take (with and without a byte bound), release of what was taken, and
clear; after every step:

- what is held (waiting, and taken but not released) never exceeds either bound, and the bound
  counts the JSON and the overhead of each event at what it costs once taken, so a take never
  pushes memory over it (it once counted waiting JSON only);
- events come out in the order they went in, each exactly once, and a put keeps the oldest of
  its batch: what is refused is always the newest, counted as dropped;
- a take honours max_events and max_bytes but always takes one event if there is one;
- the counters the metrics read (publish_buffer_events/bytes) are what is waiting;
- refused events leave one gap item (their count) before the next event kept, a gap item put
  by the caller (kernel loss) goes where it was put, gap items are outside the bounds, and a
  take hands a gap item out alone, never with events;
- a large backlog is packed: once the packer thread is done, the chunks unpacked are the one
  taken from, the one filled, and between them no more JSON than PACK_AFTER_BYTES; what is
  taken from packed chunks is what was put."""

from __future__ import annotations

import itertools
import json
from collections import deque

from conntrack_collector import gaps
from conntrack_collector.buffer import EVENT_OVERHEAD_BYTES, INDEX_BYTES, EventBuffer
from conntrack_collector.stats import CollectorStats
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule


def only_events(waiting: deque[bytes | int]) -> list[bytes]:
    return [e for e in waiting if isinstance(e, bytes)]


def held_cost(waiting: list[bytes], taken: list[bytes]) -> int:
    """What is in memory: waiting events compact, taken ones as Python objects."""
    return (sum(len(e) + INDEX_BYTES for e in waiting)
            + sum(len(e) + EVENT_OVERHEAD_BYTES for e in taken))


def committed_cost(waiting: list[bytes], taken: list[bytes]) -> int:
    """What the bound counts: every event at what it costs once taken."""
    return sum(len(e) + EVENT_OVERHEAD_BYTES for e in [*waiting, *taken])


class BufferModel(RuleBasedStateMachine):
    @initialize(max_events=st.integers(1, 40), max_bytes=st.integers(1, 3000),
                chunk_bytes=st.sampled_from([16, 200, 1 << 20]),
                pack_after_bytes=st.sampled_from([0, 300, 16 << 20]))
    def setup(self, max_events: int, max_bytes: int, chunk_bytes: int,
              pack_after_bytes: int) -> None:
        import conntrack_collector.buffer as module

        module.CHUNK_BYTES = chunk_bytes  # small chunks: takes that cross chunks
        module.PACK_AFTER_BYTES = pack_after_bytes
        self.pack_after_bytes = pack_after_bytes
        self.stats = CollectorStats()
        self.buffer = EventBuffer(max_events, max_bytes, self.stats)
        self.max_events, self.max_bytes = max_events, max_bytes
        self.next_id = 0
        self.waiting: deque[bytes | int] = deque()  # the model: events, and gaps (events lost)
        self.refused = 0  # since the last event kept: a gap item before the next one
        self.taken: list[bytes] = []  # taken, not released
        self.dropped = 0
        self.out: list[bytes] = []  # everything ever taken, in order
        self.kept: list[bytes] = []  # everything ever kept, in order
        self.cleared: set[bytes] = set()  # kept, then thrown away by clear()

    def teardown(self) -> None:
        import conntrack_collector.buffer as module

        module.CHUNK_BYTES = 1 << 20
        module.PACK_AFTER_BYTES = 16 << 20

    def event(self, size: int) -> bytes:
        self.next_id += 1
        head = b"%d:" % self.next_id
        return head + b"x" * max(0, size - len(head))

    @rule(sizes=st.lists(st.integers(1, 400), max_size=12))
    def put_many(self, sizes: list[int]) -> None:
        events = [self.event(size) for size in sizes]
        kept = self.buffer.put_many(events)
        # The model: the longest prefix that fits both bounds.
        expect = 0
        for i in range(len(events)):
            cost = committed_cost(only_events(self.waiting), self.taken) + sum(
                len(e) + EVENT_OVERHEAD_BYTES for e in events[:i + 1])
            if len(only_events(self.waiting)) + len(self.taken) + i + 1 > self.max_events \
                    or cost > self.max_bytes:
                break
            expect = i + 1
        assert kept == expect
        if kept and self.refused:
            self.waiting.append(self.refused)
            self.refused = 0
        self.refused += len(events) - kept
        self.waiting.extend(events[:kept])
        self.kept.extend(events[:kept])
        self.dropped += len(events) - kept

    @rule(lost=st.integers(1, 5))
    def put_gap(self, lost: int) -> None:
        # The kernel lost events: the refused ones' gap first, then this one.
        self.buffer.put_gap(gaps.gap_record(lost, gaps.KERNEL, 0, 0))
        if self.refused:
            self.waiting.append(self.refused)
            self.refused = 0
        self.waiting.append(lost)

    @rule(max_events=st.integers(1, 10), max_bytes=st.none() | st.integers(1, 1000))
    def take(self, max_events: int, max_bytes: int | None) -> None:
        got = self.buffer.take(max_events, max_bytes=max_bytes)
        if self.waiting and isinstance(self.waiting[0], int):  # a gap: alone
            assert len(got) == 1 and gaps.is_gap(got[0])
            assert json.loads(got[0])["Lost"] == self.waiting.popleft()
            return
        assert not any(map(gaps.is_gap, got))
        assert len(got) <= max_events
        if self.waiting:
            assert got, "a take with events waiting takes at least one"
        if max_bytes is not None and len(got) > 1:
            assert sum(map(len, got)) <= max_bytes
        # Nothing more fitted: the next one would have broken a bound.
        ahead = list(itertools.takewhile(lambda e: isinstance(e, bytes), self.waiting))
        rest = ahead[len(got):]  # a take stops at a gap
        if rest and len(got) < max_events and max_bytes is not None:
            assert sum(map(len, got)) + len(rest[0]) > max_bytes
        if rest and max_bytes is None:
            assert len(got) == max_events
        for event in got:
            assert event == self.waiting.popleft()
        self.taken.extend(got)
        self.out.extend(got)

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        if not self.taken:
            return
        n = data.draw(st.integers(1, len(self.taken)))
        # Messages are confirmed in any order: release any n of them.
        picked = data.draw(st.permutations(range(len(self.taken))))[:n]
        events = [self.taken[i] for i in picked]
        self.buffer.release(len(events), sum(map(len, events)))
        self.taken = [e for i, e in enumerate(self.taken) if i not in set(picked)]

    @rule()
    def clear(self) -> None:
        # The caller counts what clear() returns (at shutdown): not a buffer_full drop.
        assert self.buffer.clear() == len(only_events(self.waiting))
        self.cleared.update(only_events(self.waiting))
        self.waiting.clear()

    @invariant()
    def bounded_and_counted(self) -> None:
        buffer = self.buffer
        waiting = only_events(self.waiting)
        assert len(buffer) == len(self.waiting)  # events and gap items
        assert buffer.events_held == len(waiting)
        assert buffer.held_events == len(waiting) + len(self.taken) <= self.max_events
        assert buffer.held_bytes == held_cost(waiting, self.taken)
        assert buffer.committed_bytes == committed_cost(waiting, self.taken)
        assert buffer.held_bytes <= buffer.committed_bytes <= self.max_bytes
        assert self.stats.publish_buffer_events == len(waiting)
        assert self.stats.publish_buffer_bytes == sum(map(len, waiting))
        assert self.stats.dropped_by_reason.get("buffer_full", 0) == self.dropped
        expected = [e for e in self.kept if e not in self.cleared]
        assert self.out == expected[:len(self.out)]  # in order, each once

    @invariant()
    def backlog_packed(self) -> None:
        assert self.buffer.wait_packed(10)
        chunks = [c for c in self.buffer._chunks if not isinstance(c, bytes)]
        between = [c for c in chunks[1:-1] if c.packed is None]
        assert sum(c.ends[-1] - c.start_of(c.first) for c in between) <= self.pack_after_bytes


BufferModel.TestCase.settings = settings(max_examples=300, stateful_step_count=40,
                                         deadline=None)
TestBuffer = BufferModel.TestCase
