"""The buffer packs a backlog: with events shaped like a router's (addresses and ports that
vary), memory holds a fraction of their JSON, and what comes out is what went in, also when a
reader thread puts while a publisher thread takes."""

from __future__ import annotations

import json
import random
import threading

import pytest
from conntrack_collector.buffer import CHUNK_BYTES, PACK_AFTER_BYTES, EventBuffer
from conntrack_collector.stats import CollectorStats

# One DESTROY as the collector writes it (the reference's schema), with its values varied below.
TEMPLATE = {
    "Timestamp": 0, "Type": "DESTROY", "Id": 0,
    "Original": {"Layer3": {"Protonum": 2, "Protoname": "ipv4", "Src": "", "Dst": ""},
                 "Layer4": {"Protonum": 6, "Protoname": "tcp", "Sport": 0, "Dport": 0},
                 "Counter": {"Packets": 0, "Bytes": 0}},
    "Reply": {"Layer3": {"Protonum": 2, "Protoname": "ipv4", "Src": "", "Dst": ""},
              "Layer4": {"Protonum": 6, "Protoname": "tcp", "Sport": 0, "Dport": 0},
              "Counter": {"Packets": 0, "Bytes": 0}},
    "UNREPLIED": False, "ASSURED": True,
}


def router_events(n: int, seed: int = 1) -> list[bytes]:
    """NAT'd flows from a /16 of clients to addresses anywhere, numbered in order."""
    rnd = random.Random(seed)
    events = []
    for i in range(n):
        client = f"10.{rnd.randrange(256)}.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
        server = ".".join(str(rnd.randrange(1, 255)) for _ in range(4))
        sport, dport = rnd.randrange(1024, 65536), rnd.choice([53, 80, 443, 123, 8080])
        event = json.loads(json.dumps(TEMPLATE))
        event.update(Timestamp=1_796_400_000_000 + i, Id=rnd.getrandbits(32),
                     Type=rnd.choice(["NEW", "DESTROY"]))
        original, reply = event["Original"], event["Reply"]
        original["Layer3"].update(Src=client, Dst=server)
        reply["Layer3"].update(Src=server, Dst="203.0.113.7")
        original["Layer4"].update(Sport=sport, Dport=dport)
        reply["Layer4"].update(Sport=dport, Dport=rnd.randrange(1024, 65536))
        for side in (original, reply):
            side["Counter"].update(Packets=rnd.randrange(1000), Bytes=rnd.randrange(10**6))
        events.append(json.dumps(event, separators=(",", ":")).encode())
    return events


def test_a_backlog_is_held_in_a_fraction_of_its_json() -> None:
    events = router_events(120_000)  # about 57 MiB of JSON
    json_bytes = sum(map(len, events))
    buffer = EventBuffer(10**6, 1 << 30, CollectorStats())
    for i in range(0, len(events), 1024):  # as the reader loop puts them
        assert buffer.put_many(events[i:i + 1024]) == len(events[i:i + 1024])
    assert buffer.events_held == len(events)
    assert buffer.wait_packed(30)
    # Unpacked: the first chunk, the last, and PACK_AFTER_BYTES; the rest packed 4 to 1 or more.
    unpacked = PACK_AFTER_BYTES + 2.5 * CHUNK_BYTES
    assert buffer.memory_bytes < unpacked + (json_bytes - unpacked) / 4
    out: list[bytes] = []
    while got := buffer.take(1000):
        out.extend(got)
        buffer.release(len(got), sum(map(len, got)))
    assert out == events
    assert buffer.memory_bytes == 0


def test_a_reader_and_a_publisher_thread_move_every_event_once_in_order() -> None:
    events = router_events(30_000, seed=2)
    buffer = EventBuffer(10**6, 1 << 30, CollectorStats())
    out: list[bytes] = []
    done = threading.Event()

    def publisher() -> None:
        while not done.is_set() or buffer.events_held:
            got = buffer.take(random.randrange(1, 2000))
            out.extend(got)
            buffer.release(len(got), sum(map(len, got)))

    thread = threading.Thread(target=publisher)
    thread.start()
    rnd = random.Random(3)
    i = 0
    while i < len(events):
        n = rnd.randrange(1, 1500)
        assert buffer.put_many(events[i:i + n]) == len(events[i:i + n])
        i += n
    done.set()
    thread.join(60)
    assert out == events


def test_without_a_thread_for_packing_nothing_is_lost(monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    def refuse(_thread: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", refuse)
    events = router_events(100_000, seed=4)
    buffer = EventBuffer(10**6, 1 << 30, CollectorStats())
    for i in range(0, len(events), 1024):
        assert buffer.put_many(events[i:i + 1024]) == len(events[i:i + 1024])
    assert buffer.wait_packed(1)
    assert "backlog not packed: cannot start a thread" in caplog.text
    out: list[bytes] = []
    while got := buffer.take(1000):
        out.extend(got)
    assert out == events


def test_packing_waits_while_the_reader_is_behind() -> None:
    events = router_events(100_000, seed=5)
    buffer = EventBuffer(10**6, 1 << 30, CollectorStats())
    for i in range(0, len(events), 1024):  # full batches: a flood
        buffer.put_many(events[i:i + 1024], reader_behind=True)
    assert not buffer.wait_packed(0.5)
    raw = buffer.memory_bytes
    assert raw > sum(map(len, events))  # nothing packed yet
    buffer.put_many([], reader_behind=False)  # an empty read: the reader caught up
    buffer.put_many(router_events(1, seed=6), reader_behind=False)
    assert buffer.wait_packed(30)
    unpacked = PACK_AFTER_BYTES + 2.5 * CHUNK_BYTES
    assert buffer.memory_bytes < unpacked + (sum(map(len, events)) - unpacked) / 4
    out: list[bytes] = []
    while got := buffer.take(1000):
        out.extend(got)
    assert out[:len(events)] == events
