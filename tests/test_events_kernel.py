"""The iterator against the real kernel, as root, in namespaces of the tests' own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conntrack_collector import EventStream
from conntrack_text import parse_line
from netns_util import flush_flows, run, send_udp_flows, wait_for_listeners

pytestmark = pytest.mark.root

TRAFFIC = Path(__file__).with_name("traffic.py")
KINDS = ("tcp4", "tcp6", "udp4", "udp6", "icmp", "icmpv6")


@pytest.fixture
def netns(netns: str) -> str:
    """The shared namespace fixture, with packet and byte counters on."""
    run("ip", "netns", "exec", netns, "sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1")
    return netns


def make_traffic(netns: str, *kinds: str) -> None:
    run("ip", "netns", "exec", netns, sys.executable, str(TRAFFIC), *kinds)


def iter_until_quiet(stream: EventStream, quiet_s: float) -> Iterator[Any]:
    """Every event until none has come for `quiet_s`."""
    while (event := stream.poll(quiet_s)) is not None:
        yield event


def drain(stream: EventStream, quiet_s: float = 1.0) -> list[Any]:
    return list(iter_until_quiet(stream, quiet_s))


def test_differential_against_conntrack_tool(netns: str) -> None:
    """Every NEW and DESTROY, field for field, as `conntrack -E -o extended,id` saw it."""
    tool = subprocess.Popen(
        ["ip", "netns", "exec", netns, "stdbuf", "-oL", "conntrack", "-E", "-e", "NEW,DESTROY",
         "-o", "extended,id"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        with EventStream(("NEW", "DESTROY"), netns=netns) as stream:
            wait_for_listeners(netns, 2)  # the tool too, or it sees no flow made before
            make_traffic(netns, *KINDS)
            flush_flows(netns)
            ours = drain(stream)
    finally:
        time.sleep(0.5)
        tool.send_signal(signal.SIGINT)
        text, _ = tool.communicate(timeout=10)
    theirs = [e for e in map(parse_line, text.splitlines()) if e is not None]

    comparable = [{k: v for k, v in e.items() if k != "Timestamp"} for e in ours]
    key = lambda e: (e["Id"], e["Type"])
    assert sorted(comparable, key=key) == sorted(theirs, key=key)
    # Every kind of traffic was seen, both ways, with counters on DESTROY.
    protocols = Counter((e["Type"], e["Original"]["Layer4"]["Protoname"],
                         e["Original"]["Layer3"]["Protoname"]) for e in comparable)
    for proto, family in [("tcp", "ipv4"), ("tcp", "ipv6"), ("udp", "ipv4"), ("udp", "ipv6"),
                          ("icmp", "ipv4"), ("icmpv6", "ipv6")]:
        assert protocols[("NEW", proto, family)] >= 1, (proto, family)
        assert protocols[("DESTROY", proto, family)] >= 1, (proto, family)
    destroys = [e for e in comparable if e["Type"] == "DESTROY"]
    assert all(e["Original"]["Counter"]["Packets"] > 0 for e in destroys)
    assert all(e["Id"] != 0 for e in comparable)


def test_update_events_and_json_form(netns: str) -> None:
    with EventStream(("NEW", "UPDATE", "DESTROY"), netns=netns, as_json=True) as stream:
        make_traffic(netns, "tcp4")
        flush_flows(netns)
        events = drain(stream)
    assert all(isinstance(e, bytes) for e in events)
    types = [e.split(b'"Type":"')[1].split(b'"')[0] for e in events]
    assert types[0] == b"NEW" and types[-1] == b"DESTROY" and b"UPDATE" in types


def test_timestamp_is_receive_time_in_ms(netns: str) -> None:
    with EventStream(netns=netns) as stream:
        before_ms = time.time() * 1000
        make_traffic(netns, "udp4")
        event = stream.poll(5)
        after_ms = time.time() * 1000
    assert event is not None
    assert before_ms - 1 <= event["Timestamp"] <= after_ms + 1


def test_nat_only_keeps_source_nat_flows(netns: str) -> None:
    # A source NAT of flows to 127.0.0.2: their replies go to 127.0.0.3, not to 127.0.0.1.
    run("ip", "netns", "exec", netns, "nft", "-f", "-", input_text="""
table ip nat {
    chain post { type nat hook postrouting priority 100; ip daddr 127.0.0.2 snat to 127.0.0.3; }
}
""")
    run("ip", "-n", netns, "addr", "add", "127.0.0.3/8", "dev", "lo")
    script = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              "s.sendto(b'x', ('127.0.0.1', 5005)); s.sendto(b'x', ('127.0.0.2', 5006))\n")
    with EventStream(("NEW",), netns=netns, nat_only=True) as stream:
        run("ip", "netns", "exec", netns, sys.executable, "-c", script)
        events = drain(stream)
        stats = stream.stats()
    assert [e["Original"]["Layer4"]["Dport"] for e in events] == [5006]
    assert events[0]["Reply"]["Layer3"]["Dst"] == "127.0.0.3"
    assert stats["filtered"] == 1


def test_stats_count_what_was_delivered(netns: str) -> None:
    with EventStream(netns=netns) as stream:
        make_traffic(netns, "udp4", "udp6")
        flush_flows(netns)
        events = drain(stream)
        stats = stream.stats()
    assert len(events) == 4
    assert stats["received"] == stats["delivered"] == 4
    assert stats["queued"] == 0 and stats["overruns"] == 0 and stats["decode_errors"] == 0
    assert stats["socket_buffer_bytes"] >= 15_000_000


def test_sigint_stops_iteration_and_keeps_received_events(netns: str) -> None:
    """Ctrl-C ends a blocked iteration with KeyboardInterrupt; events that arrived are not lost."""
    child = subprocess.Popen(
        [sys.executable, "-c", f"""
import sys, conntrack_collector
stream = conntrack_collector.EventStream(netns={netns!r})
print("ready", flush=True)
try:
    for event in stream:
        pass
except KeyboardInterrupt:
    print("interrupted", flush=True)
# Events queued after the interrupt are still there for the next read (once the parent
# has made them: under emulation its traffic takes seconds).
sys.stdin.readline()
print("left", stream.poll(5.0) is not None, flush=True)
"""],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    child.send_signal(signal.SIGINT)
    assert child.stdout.readline().strip() == "interrupted"
    make_traffic(netns, "udp4")
    assert child.stdin is not None
    child.stdin.write("made\n")
    child.stdin.flush()
    assert child.stdout.readline().strip() == "left True"
    assert child.wait(timeout=10) == 0


@pytest.fixture
def many_flows_allowed() -> Iterator[None]:
    """`nf_conntrack_max` is read-only inside a namespace: raise the host's, then restore it."""
    path = Path("/proc/sys/net/netfilter/nf_conntrack_max")
    before = path.read_text().strip()
    path.write_text(str(max(int(before), 262_144)))
    try:
        yield
    finally:
        path.write_text(before)


BURST_FLOWS = 100_000


def test_burst_reliable_delivers_every_destroy(netns: str, many_flows_allowed: None) -> None:
    with EventStream(("DESTROY",), netns=netns, reliable=True, buffer_bytes=1 << 20) as stream:
        send_udp_flows(netns, BURST_FLOWS)
        flush_flows(netns)
        # Flows told apart by destination: conntrack ids are 32-bit hashes and 100k of them collide.
        flows = {(e["Original"]["Layer3"]["Dst"], e["Original"]["Layer4"]["Dport"])
                 for e in iter_until_quiet(stream, 3.0)}
        stats = stream.stats()
    assert len(flows) == BURST_FLOWS, stats
    assert stats["decode_errors"] == 0


def test_burst_unreliable_loss_is_counted(netns: str, many_flows_allowed: None) -> None:
    """A small buffer and a slow reader lose events; every loss shows as an overrun."""
    with EventStream(("DESTROY",), netns=netns, buffer_bytes=64 * 1024,
                     queue_events=1000) as stream:
        send_udp_flows(netns, BURST_FLOWS)
        flush_flows(netns)
        received = 0
        for _ in iter_until_quiet(stream, 3.0):
            received += 1
            if received % 1000 == 0:
                time.sleep(0.01)
        stats = stream.stats()
    assert received == stats["delivered"]
    assert received == BURST_FLOWS or stats["overruns"] > 0, stats
    print(f"unreliable burst: {received} of {BURST_FLOWS} delivered, "
          f"{stats['overruns']} overruns")


def test_reader_enters_namespace_but_caller_stays(netns: str) -> None:
    own = os.readlink("/proc/self/ns/net")
    with EventStream(netns=netns) as stream:
        assert os.readlink("/proc/self/ns/net") == own
        make_traffic(netns, "udp4")
        assert stream.poll(5) is not None
