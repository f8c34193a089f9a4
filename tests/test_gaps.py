"""Gap items: where the buffer puts them, what the kernel watch makes, how they are framed."""

from __future__ import annotations

import json

import pika
from conntrack_collector.amqp_frames import PublishEncoder
from conntrack_collector.buffer import EventBuffer
from conntrack_collector.gaps import GAP_TYPE, KernelLossWatch, is_gap, lost_of
from conntrack_collector.stats import CollectorStats
from test_publish_frames import pika_bytes


def test_a_run_of_refused_events_is_one_gap_before_the_next_event_kept() -> None:
    stats = CollectorStats()
    buffer = EventBuffer(max_events=2, max_bytes=10**6, stats=stats)
    assert [buffer.put(b'{"e":%d}' % i) for i in range(5)] == [True, True, False, False, False]
    taken = buffer.take(10)
    assert taken == [b'{"e":0}', b'{"e":1}']
    buffer.release(len(taken), sum(map(len, taken)))  # confirmed: no longer held
    assert buffer.put(b'{"e":5}')
    gap, event = buffer.take(10), buffer.take(10)
    assert len(gap) == 1 and is_gap(gap[0]) and event == [b'{"e":5}']  # the gap comes alone
    record = json.loads(gap[0])
    assert (record["Type"], record["Lost"], record["Where"]) == ("GAP", 3, "buffer")
    assert record["From"] <= record["To"]
    assert stats.dropped_by_reason == {"buffer_full": 3}


def test_refused_events_at_the_end_are_told_at_stop_and_gaps_are_not_events() -> None:
    buffer = EventBuffer(max_events=1, max_bytes=10**6, stats=CollectorStats())
    buffer.put(b"{}")
    buffer.put(b"{}")  # refused
    buffer.put_gap(None)
    assert (len(buffer), buffer.events_held) == (2, 1)
    assert buffer.take(10) == [b"{}"]
    assert lost_of(buffer.take(10)[0]) == 1
    assert buffer.events_held == 0


def test_the_kernel_watch_makes_a_gap_of_the_growth_only() -> None:
    dropped = {"kernel_dropped": 0}
    clock = iter([1000, 2000, 3000, 4000])
    watch = KernelLossWatch(lambda: dropped, clock_ms=lambda: next(clock))
    assert watch.check() is None
    dropped["kernel_dropped"] = 292
    gap = watch.check()
    assert gap is not None
    record = json.loads(gap)
    assert (record["Lost"], record["Where"], record["To"]) == (292, "kernel", 3000)
    assert record["From"] < 2000  # before the last look that saw nothing: the counter lags
    assert watch.check() is None and watch.dropped == 292


def test_sequence_and_gap_type_frames_are_pikas() -> None:
    for message_type, extra in ((None, {"sequence": 7}), (GAP_TYPE, {"sequence": 2**40}),
                                ("conntrack.events.batch", {"events": 3, "sequence": 1})):
        encoder = PublishEncoder(1, "conntrack", "", mandatory=True,
                                 content_type="application/json",
                                 headers={"router_id": "0123456789ab"}, frame_max=131_072,
                                 message_type=message_type)
        properties = pika.BasicProperties(
            delivery_mode=2, content_type="application/json",
            headers={"router_id": "0123456789ab", **extra}, message_id="p-1",
            timestamp=1_764_160_000, type=message_type)
        assert encoder.encode(b"{}", "p-1", 1_764_160_000, extra) == pika_bytes(
            1, "conntrack", b"{}", properties, True, 131_072)
