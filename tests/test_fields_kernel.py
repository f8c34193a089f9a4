"""The opt-in fields on real kernel events, as root, against `conntrack -E`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import conntrack_collector
import pytest
from collector_process import Collector
from conntrack_collector import FIELDS, EventStream
from conntrack_text import parse_extras, parse_line
from netns_util import flush_flows, run, sysctl_in, wait_for_listeners

pytestmark = pytest.mark.root

TRAFFIC = Path(__file__).with_name("traffic.py")
LABEL_PORT = 5555  # datagrams to it get label 3 and mark 42 from the rules below
LABEL_RULES = f"""
table inet fields {{
    chain out {{
        type filter hook output priority 0;
        udp dport {LABEL_PORT} ct mark set 42
        udp dport {LABEL_PORT} ct label set 3
    }}
}}
"""
# Flows made with `conntrack -I`: one in zone 7 with mark 42, one TCP flow that `-U` moves to
# ESTABLISHED with mark 43 (this conntrack refuses --zone with -U).
INSERT_ZONED = ["-I", "-p", "udp", "-s", "10.9.0.1", "-d", "10.9.0.2", "--sport", "1000",
                "--dport", "2000", "-t", "60", "--zone", "7", "--mark", "42"]
INSERT_TCP = ["-I", "-p", "tcp", "-s", "10.9.0.1", "-d", "10.9.0.2", "--sport", "1001",
              "--dport", "2001", "-t", "60", "--state", "SYN_SENT"]
# Every TCP state conntrack has a name for, one inserted flow each (ports 3000 and up).
TCP_STATES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT",
              "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2")
UPDATE_TCP = ["-U", "-p", "tcp", "-s", "10.9.0.1", "-d", "10.9.0.2", "--sport", "1001",
              "--dport", "2001", "--state", "ESTABLISHED", "--mark", "43"]


def conntrack_supports(output: str) -> bool:
    """Whether this conntrack knows an `-o` format (ktimestamp came with conntrack-tools 1.4.5)."""
    done = subprocess.run(["timeout", "0.5", "conntrack", "-E", "-o", output],
                          capture_output=True, text=True, check=False)
    return "Bad parameter" not in done.stderr and "unknown" not in done.stderr.lower()


@pytest.fixture
def netns(netns: str) -> str:
    """conftest's namespace, with counters and flow timestamps on."""
    run("ip", "netns", "exec", netns, "sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1",
        "net.netfilter.nf_conntrack_timestamp=1")
    return netns


def in_netns(netns: str, *argv: str) -> None:
    run("ip", "netns", "exec", netns, *argv)


def drain(stream: EventStream, quiet_s: float = 1.0) -> list[Any]:
    events = []
    while (event := stream.poll(quiet_s)) is not None:
        events.append(event)
    return events


def expected_from_tool(line: str) -> dict[str, Any]:
    """The opt-in keys as the tool's line says them; None where it cannot say (labels)."""
    extras = parse_extras(line)
    return {"State": extras["State"], "Zone": extras["Zone"] or 0,
            "Mark": extras["Mark"] or 0, "Icmp": extras["Icmp"]}


def test_every_field_against_the_conntrack_tool(netns: str) -> None:
    """Every NEW, UPDATE and DESTROY, each added field as `conntrack -E -o extended,id,timestamp
    (,ktimestamp)` saw it: real TCP, UDP and ICMP traffic, a labelled and marked flow, a
    zoned and marked flow made with `conntrack -I`, and an UPDATE made with `conntrack -U`."""
    run("ip", "netns", "exec", netns, "nft", "-f", "-", input_text=LABEL_RULES)
    kernel_times = conntrack_supports("ktimestamp")
    output = "extended,id,timestamp" + (",ktimestamp" if kernel_times else "")
    tool = subprocess.Popen(
        ["ip", "netns", "exec", netns, "stdbuf", "-oL", "conntrack", "-E", "-o", output],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**os.environ, "TZ": "UTC"},  # ktimestamp prints local time
    )
    try:
        with EventStream(("NEW", "UPDATE", "DESTROY"), netns=netns, fields=FIELDS) as stream:
            wait_for_listeners(netns, 2)  # the tool too, or it sees no flow made before
            in_netns(netns, sys.executable, str(TRAFFIC), "tcp4", "tcp6", "udp4", "icmp",
                     "icmpv6")
            in_netns(netns, sys.executable, "-c",
                     "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                     f"s.sendto(b'x', ('127.0.0.1', {LABEL_PORT}))\n")
            in_netns(netns, "conntrack", *INSERT_ZONED)
            in_netns(netns, "conntrack", *INSERT_TCP)
            in_netns(netns, "conntrack", *UPDATE_TCP)
            for port, state in enumerate(TCP_STATES, start=3000):
                in_netns(netns, "conntrack", "-I", "-p", "tcp", "-s", "10.9.0.3", "-d",
                         "10.9.0.4", "--sport", str(port), "--dport", "80", "-t", "60",
                         "--state", state)
            time.sleep(1.1)  # so Duration and the tool's delta-time are not all 0
            flush_flows(netns)
            ours = drain(stream)
    finally:
        time.sleep(0.5)
        tool.send_signal(signal.SIGINT)
        text, _ = tool.communicate(timeout=10)
    lines = [line for line in text.splitlines() if parse_line(line) is not None]

    # Pair them up: the n-th event of one (Id, Type) with the tool's n-th.
    theirs: dict[tuple[int, str], list[str]] = defaultdict(list)
    for line in lines:
        parsed = parse_line(line)
        assert parsed is not None
        theirs[(parsed["Id"], parsed["Type"])].append(line)
    mine: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    for event in ours:
        mine[(event["Id"], event["Type"])].append(event)
    assert sorted(mine) == sorted(theirs)
    report = []
    for key, events in mine.items():
        assert len(events) == len(theirs[key]), key
        for event, line in zip(events, theirs[key]):
            reference = {k: v for k, v in event.items() if k in parse_line(line)}
            if reference != parse_line(line):
                report.append(f"reference fields differ: {event} / {line}")
            for name, want in expected_from_tool(line).items():
                if event[name] != want:
                    report.append(f"{name}: ours {event[name]!r}, tool {want!r}: {line}")
            report.extend(check_status(event, line))
            report.extend(check_times(event, line, kernel_times))
    assert not report, "\n".join(report)

    # What the traffic had to show, so the comparison above cannot pass on empty fields.
    def found(test: Any) -> bool:
        return any(test(e) for e in ours)

    assert found(lambda e: e["Zone"] == 7 and e["Mark"] == 42 and e["Type"] == "NEW")
    assert found(lambda e: e["Zone"] == 7 and e["Type"] == "DESTROY")
    assert found(lambda e: e["Type"] == "UPDATE" and e["Mark"] == 43
                 and e["State"] == "ESTABLISHED"
                 and e["Original"]["Layer4"]["Sport"] == 1001)
    assert found(lambda e: e["Labels"] == [3] and e["Mark"] == 42
                 and e["Original"]["Layer4"]["Dport"] == LABEL_PORT)
    assert found(lambda e: e["Icmp"] is not None and e["Icmp"]["Type"] == 8)
    assert found(lambda e: e["Icmp"] is not None and e["Icmp"]["Type"] == 128)
    for state in ("SYN_SENT", "ESTABLISHED", "TIME_WAIT"):  # from real traffic
        assert found(lambda e, state=state: e["State"] == state
                     and e["Original"]["Layer3"]["Src"] == "127.0.0.1"), state
    inserted = {e["State"] for e in ours if e["Original"]["Layer3"]["Src"] == "10.9.0.3"}
    assert inserted == set(TCP_STATES)
    assert found(lambda e: e["Type"] == "DESTROY" and e["Duration"] >= 1000)
    assert all(e["Stop"] is None and e["Duration"] is None for e in ours if e["Type"] != "DESTROY")
    assert all(e["State"] is None for e in ours if e["Original"]["Layer4"]["Protonum"] != 6)


def check_status(event: dict[str, Any], line: str) -> list[str]:
    flags = parse_extras(line)["Flags"]
    status = event["Status"]
    problems = []
    for name, shown in [("ASSURED", "ASSURED" in flags), ("OFFLOAD", "OFFLOAD" in flags),
                        ("HW_OFFLOAD", "HW_OFFLOAD" in flags),
                        ("SEEN_REPLY", "UNREPLIED" not in flags)]:
        if (name in status) != shown:
            problems.append(f"Status {status} vs the tool's flags {sorted(flags)}: {line}")
    if "CONFIRMED" not in status:
        problems.append(f"an event of a flow in the table is CONFIRMED: {status}")
    return problems


def check_times(event: dict[str, Any], line: str, kernel_times: bool) -> list[str]:
    extras = parse_extras(line)
    start, stop, duration = event["Start"], event["Stop"], event["Duration"]
    problems = []
    if event["Type"] != "DESTROY":
        if (start, stop, duration) != (None, None, None):
            problems.append(f"the kernel sends flow times with DESTROY only: {event}")
        return problems
    if None in (start, stop, duration) or duration != stop - start:
        return [f"DESTROY with timestamps on: Start {start}, Stop {stop}, Duration {duration}"]
    if extras["Delta"] is not None and abs(duration / 1000 - extras["Delta"]) > 1:
        problems.append(f"Duration {duration} ms, the tool's delta-time {extras['Delta']} s")
    if kernel_times and (start // 1000, stop // 1000) != (extras["Start"], extras["Stop"]):
        problems.append(f"Start/Stop {start}/{stop} ms, the tool's {extras['Start']}/"
                        f"{extras['Stop']} s: {line}")
    received_ms = event["Timestamp"]
    if not start <= stop <= received_ms:
        problems.append(f"Start {start} <= Stop {stop} <= received {received_ms} fails")
    return problems


def test_timestamps_warn_when_the_kernel_does_not_stamp_flows(netns: str) -> None:
    in_netns(netns, "sysctl", "-qw", "net.netfilter.nf_conntrack_timestamp=0")
    assert sysctl_in(netns, "nf_conntrack_timestamp") == "0"
    with EventStream(netns=netns, fields=["timestamps"]) as stream:
        warnings = stream.startup_warnings
    assert [w for w in warnings if "nf_conntrack_timestamp=0" in w], warnings
    for fields in ([], ["state", "zone", "mark", "labels", "icmp", "status"]):
        with EventStream(netns=netns, fields=fields) as stream:
            assert not [w for w in stream.startup_warnings if "timestamp" in w], fields
    in_netns(netns, "sysctl", "-qw", "net.netfilter.nf_conntrack_timestamp=1")
    with EventStream(netns=netns, fields=["timestamps"]) as stream:
        assert not [w for w in stream.startup_warnings if "timestamp" in w]


def test_command_line_fields_on_real_events(netns: str) -> None:
    """`--output stdout --fields ...`: the keys after ASSURED, and the warning in the log."""
    in_netns(netns, "sysctl", "-qw", "net.netfilter.nf_conntrack_timestamp=0")
    # The package this test imports, not whatever the interpreter collector_command resolves
    # to (the venv's real python) has installed.
    site_packages = str(Path(conntrack_collector.__file__).parents[1])
    collector = Collector("--netns", netns, "--output", "stdout",
                          "--fields", "status,timestamps,zone", env={"PYTHONPATH": site_packages})
    try:
        collector.wait_listening()
        in_netns(netns, sys.executable, str(TRAFFIC), "udp4")
        flush_flows(netns)
        time.sleep(0.5)
    finally:
        code = collector.stop(signal.SIGINT)
    assert code == 0, collector.log
    assert "nf_conntrack_timestamp=0" in collector.log
    events = [json.loads(line) for line in collector.stdout]
    assert sorted(e["Type"] for e in events) == ["DESTROY", "NEW"]
    for event in events:
        assert list(event)[7:] == ["Start", "Stop", "Duration", "Zone", "Status"]
        assert event["Start"] is None and event["Zone"] == 0
        assert "CONFIRMED" in event["Status"]
