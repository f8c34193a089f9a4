"""The accept/ignore filter on the real kernel, as root: traffic of several protocols, both
families and several subnets in a namespace; each filtered stream must equal `conntrack -E`'s
unfiltered output filtered by the same rules here, event for event, and the ignored events
must never reach the reader (the kernel dropped them)."""

from __future__ import annotations

import ipaddress
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import conntrack_collector
import pytest
from collector_process import Collector
from conntrack_collector import EventStream, filter_items
from conntrack_text import parse_line
from netns_util import flush_flows, run, send_udp_flows, wait_for_listeners

pytestmark = pytest.mark.root

TESTS = Path(__file__).parent
# The test's own reading of the rules (independent of the Rust code).
PROTOCOL_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17, "dccp": 33, "gre": 47, "icmpv6": 58,
                    "sctp": 132, "udplite": 136}
ADDRESSES = ("10.1.0.1/24", "10.2.0.1/24", "fd01::1/64", "fd02::1/64")

# Answered TCP and UDP flows on six addresses, one-way UDP flows across subnets, ICMP, ICMPv6,
# GRE and UDP-Lite.
TRAFFIC = f"""
import socket, sys
sys.path.insert(0, {str(TESTS)!r})
import traffic
A4, A6 = socket.AF_INET, socket.AF_INET6
for family, host in [(A4, "127.0.0.1"), (A4, "10.1.0.1"), (A4, "10.2.0.1"),
                     (A6, "::1"), (A6, "fd01::1"), (A6, "fd02::1")]:
    traffic.tcp(family, host)
    traffic.udp(family, host)
for family, src, dst in [(A4, "10.1.0.1", "10.2.0.1"), (A4, "10.2.0.1", "127.0.0.1"),
                         (A6, "fd01::1", "fd02::1"), (A6, "fd02::1", "::1")]:
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((src, 0))
        s.sendto(b"x", (dst, 5020))
traffic.icmp()
traffic.icmpv6()
for family, dst in [(A4, "10.1.0.1"), (A6, "fd02::1")]:
    with socket.socket(family, socket.SOCK_RAW, 47) as s:  # a bare GREv0 header
        s.sendto(bytes([0, 0, 0x08, 0]), (dst, 0))
with socket.socket(A4, socket.SOCK_DGRAM, 136) as s:  # UDP-Lite
    s.sendto(b"x", ("10.2.0.1", 5030))
"""

RULES: list[dict[str, Any]] = [
    {"accept_protocols": "tcp,icmpv6"},
    {"ignore_protocols": ["udp", "gre"]},
    {"accept_protocols": [17, "udplite", "GRE"], "ignore_protocols": "udplite"},
    {"accept_addresses": "10.1.0.0/24,fd02::/64"},
    {"ignore_addresses": ["127.0.0.1", "::1", "10.2.0.0/16"]},
    {"accept_addresses": "10.0.0.0/8"},  # IPv4 only: every IPv6 event stays
    {"ignore_addresses": "fd00::/8"},  # IPv6 only: every IPv4 event stays
    {"accept_protocols": "udp,icmp,icmpv6", "accept_addresses": "10.2.0.0/24,::1",
     "ignore_addresses": "10.1.0.1"},
    {"ignore_tcp_states": "TIME_WAIT"},  # the DESTROYs of the TCP flows
    {"accept_tcp_states": ["SYN_SENT"], "accept_addresses": "fd01::/16"},
]


def tcp_state(line: str) -> str | None:
    """The state `conntrack -E` prints for a TCP flow: `[NEW] ipv4 2 tcp 6 120 SYN_SENT ...`."""
    tokens = line.split()
    if len(tokens) < 5 or tokens[3] != "tcp":
        return None
    return next((t for t in tokens[5:] if t.replace("_", "").isalpha() and t.isupper()), None)


def keeps(event: dict[str, Any], rules: dict[str, Any], state: str | None) -> bool:
    """conntrackd's semantics, read from the event's text form."""
    def protocols(key: str) -> set[int]:
        return {PROTOCOL_NUMBERS.get(p.lower()) or int(p) for p in filter_items(rules.get(key))}

    def subnets(key: str, version: int) -> list[Any]:
        nets = [ipaddress.ip_network(s, strict=False) for s in filter_items(rules.get(key))]
        return [n for n in nets if n.version == version]

    original = event["Original"]
    protocol = original["Layer4"]["Protonum"]
    accept, ignore = protocols("accept_protocols"), protocols("ignore_protocols")
    if (accept and protocol not in accept) or protocol in ignore:
        return False
    accept_states = {s.upper() for s in filter_items(rules.get("accept_tcp_states"))}
    ignore_states = {s.upper() for s in filter_items(rules.get("ignore_tcp_states"))}
    if state is not None and ((accept_states and state not in accept_states)
                              or state in ignore_states):
        return False
    addresses = [ipaddress.ip_address(original["Layer3"][k]) for k in ("Src", "Dst")]
    version = addresses[0].version
    hit = lambda nets: any(a in n for n in nets for a in addresses)
    accept_nets = subnets("accept_addresses", version)
    if accept_nets and not hit(accept_nets):
        return False
    return not hit(subnets("ignore_addresses", version))


@pytest.fixture
def netns(netns: str) -> str:
    """The shared namespace fixture, with addresses of two IPv4 and two IPv6 subnets."""
    for address in ADDRESSES:
        run("ip", "-n", netns, "addr", "add", address, "dev", "lo", "nodad")
    return netns


def drain(stream: EventStream, quiet_s: float = 1.0) -> list[Any]:
    events = []
    while (event := stream.poll(quiet_s)) is not None:
        events.append(event)
    return events


def comparable(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    without_time = [{k: v for k, v in e.items() if k != "Timestamp"} for e in events]
    return sorted(without_time, key=lambda e: json.dumps(e, sort_keys=True))


def test_filtered_streams_equal_conntrack_tool_filtered_the_same_way(netns: str) -> None:
    tool = subprocess.Popen(
        ["ip", "netns", "exec", netns, "stdbuf", "-oL", "conntrack", "-E", "-e", "NEW,DESTROY",
         "-o", "extended,id"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    streams = [EventStream(("NEW", "DESTROY"), netns=netns, **rules) for rules in RULES]
    try:
        wait_for_listeners(netns, len(RULES) + 1)  # the tool too, or it sees no flow
        run("ip", "netns", "exec", netns, sys.executable, "-c", TRAFFIC)
        flush_flows(netns)
        ours = [drain(stream) for stream in streams]
        stats = [stream.stats() for stream in streams]
    finally:
        for stream in streams:
            stream.close()
        time.sleep(0.5)
        tool.send_signal(signal.SIGINT)
        text, _ = tool.communicate(timeout=10)
    lines = [(parse_line(line), tcp_state(line)) for line in text.splitlines()]
    theirs = [(e, state) for e, state in lines if e is not None]
    protocols = {e["Original"]["Layer4"]["Protoname"] for e, _ in theirs}
    assert {s for _, s in theirs} >= {None, "SYN_SENT", "TIME_WAIT"}
    assert {"tcp", "udp", "icmp", "icmpv6", "gre", "udplite"} <= protocols, protocols
    for rules, events, counters in zip(RULES, ours, stats):
        expected = [e for e, state in theirs if keeps(e, rules, state)]
        assert 0 < len(expected) < len(theirs), rules  # each rule set keeps some, drops some
        assert comparable(events) == comparable(expected), rules
        # The kernel dropped the rest: they never reached the reader, not even its fallback.
        assert counters["received"] == len(expected), (rules, counters)
        assert counters["filtered_by_fallback"] == 0, (rules, counters)
        assert counters["decode_errors"] == 0 and counters["overruns"] == 0


def test_kernel_drops_ignored_events_before_the_reader(netns: str) -> None:
    """2,000 ignored flows and 20 kept: only the 20 are ever received; an unfiltered stream
    beside it receives them all."""
    ignored, kept = 2000, 20
    script = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              "s.bind(('10.1.0.1', 0))\n"
              f"for port in range(20000, {20000 + kept}):\n"
              "    s.sendto(b'x', ('10.2.0.1', port))\n")
    with EventStream(("NEW",), netns=netns, ignore_addresses="127.0.0.0/8") as filtered, \
            EventStream(("NEW",), netns=netns) as everything:
        send_udp_flows(netns, ignored)  # 127.0.0.1 to 127.0.0.1
        run("ip", "netns", "exec", netns, sys.executable, "-c", script)
        kept_events = drain(filtered)
        all_events = drain(everything)
        stats = filtered.stats()
    assert len(all_events) == ignored + kept
    assert {e["Original"]["Layer3"]["Dst"] for e in kept_events} == {"10.2.0.1"}
    assert len(kept_events) == kept
    assert stats["received"] == kept and stats["delivered"] == kept
    assert stats["filtered_by_fallback"] == 0 and stats["filtered"] == 0


def test_rules_too_long_for_the_kernel_fall_back_to_rust(netns: str) -> None:
    subnets = [f"10.{i // 256}.{i % 256}.0/24" for i in range(600)] + ["127.0.0.0/8"]
    with EventStream(("NEW",), netns=netns, ignore_addresses=subnets) as stream:
        assert any("applied in userspace" in w for w in stream.startup_warnings)
        send_udp_flows(netns, 5)
        run("ip", "netns", "exec", netns, sys.executable, "-c",
            "import socket\ns = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
            "s.sendto(b'x', ('fd01::1', 5040))\n")
        events = drain(stream)
        stats = stream.stats()
    assert [e["Original"]["Layer3"]["Dst"] for e in events] == ["fd01::1"]
    assert stats["filtered_by_fallback"] == 5 and stats["received"] == 1


def test_nat_only_combined_with_a_protocol_filter(netns: str) -> None:
    run("ip", "netns", "exec", netns, "nft", "-f", "-", input_text="""
table ip nat {
    chain post { type nat hook postrouting priority 100; ip daddr 127.0.0.2 snat to 127.0.0.3; }
}
""")
    run("ip", "-n", netns, "addr", "add", "127.0.0.3/8", "dev", "lo")
    script = ("import socket\n"
              "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
              "u.sendto(b'x', ('127.0.0.1', 5005)); u.sendto(b'x', ('127.0.0.2', 5006))\n"
              "t = socket.socket(); t.settimeout(2)\n"
              "try:\n    t.connect(('127.0.0.2', 5007))\nexcept OSError:\n    pass\n")
    with EventStream(("NEW",), netns=netns, nat_only=True, accept_protocols="udp") as stream:
        run("ip", "netns", "exec", netns, sys.executable, "-c", script)
        events = drain(stream)
        stats = stream.stats()
    # The source-NATed UDP flow only: the TCP one is left out by the kernel, the UDP one
    # without NAT by -n (in Rust).
    assert [(e["Original"]["Layer4"]["Protoname"], e["Original"]["Layer4"]["Dport"])
            for e in events] == [("udp", 5006)]
    assert stats["filtered"] == 1 and stats["filtered_by_fallback"] == 0


def test_cli_filters_the_stdout_stream(netns: str) -> None:
    # collector_command runs the interpreter's real path, outside a virtualenv: point it at
    # the package this test imports.
    package_root = Path(conntrack_collector.__file__).parent.parent
    collector = Collector("--netns", netns, "--output", "stdout", "--ignore-protocols", "udp",
                          "--accept-addresses", "10.1.0.0/24",
                          env={"PYTHONPATH": str(package_root)})
    try:
        collector.wait_listening()
        run("ip", "netns", "exec", netns, sys.executable, str(TESTS / "traffic.py"),
            "tcp4", "udp4", "tcp6")
        run("ip", "netns", "exec", netns, sys.executable, "-c",
            f"import sys; sys.path.insert(0, {str(TESTS)!r}); import traffic, socket; "
            "traffic.tcp(socket.AF_INET, '10.1.0.1'); traffic.udp(socket.AF_INET, '10.1.0.1')")
        flush_flows(netns)
        time.sleep(0.5)
    finally:
        code = collector.stop(signal.SIGINT)
    assert code == 0, collector.log
    events = [json.loads(line) for line in collector.stdout]
    seen = sorted((e["Type"], e["Original"]["Layer4"]["Protoname"],
                   e["Original"]["Layer3"]["Src"]) for e in events)
    # tcp6 stays (no IPv6 address rule); tcp4 on 127.0.0.1 and every UDP flow do not.
    assert seen == [("DESTROY", "tcp", "10.1.0.1"), ("DESTROY", "tcp", "::1"),
                    ("NEW", "tcp", "10.1.0.1"), ("NEW", "tcp", "::1")]


def test_a_program_the_kernel_refuses_is_a_clear_error(netns: str) -> None:
    # The kernel charges a socket filter to net.core.optmem_max (per namespace): too small,
    # and it refuses the program at attach time.
    run("ip", "netns", "exec", netns, "sysctl", "-qw", "net.core.optmem_max=512")
    subnets = [f"10.{i}.0.0/16" for i in range(200)]
    with pytest.raises(conntrack_collector.ConntrackError) as raised:
        EventStream(netns=netns, ignore_addresses=subnets)
    message = str(raised.value)
    assert "refused the event filter" in message and "optmem_max" in message, message
    assert "\n" not in message
    package_root = Path(conntrack_collector.__file__).parent.parent
    collector = Collector("--netns", netns, "--output", "stdout", "--ignore-addresses",
                          ",".join(subnets), env={"PYTHONPATH": str(package_root)})
    collector.process.wait(20)  # it exits by itself
    code = collector.stop()
    lines = [line for line in collector.stderr if "error" in line]
    assert code == 1 and len(lines) == 1 and "refused the event filter" in lines[0], \
        collector.log
