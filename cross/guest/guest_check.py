"""Runs inside the qemu-system guest (a Debian kernel of the target architecture) as root.

Proves the cross-built wheel yields real NEW and DESTROY events with correct fields: TCP, UDP
and ICMP flows over IPv4 and IPv6 on loopback, flushed with `conntrack -F`; every event is
also compared field for field with what the target's own `conntrack -E` printed. Then
measures the iterator's events/s (emulated: indicative only). The last line is the verdict:
    CONNTRACK-QEMU-RESULT: PASS {json}   or   CONNTRACK-QEMU-RESULT: FAIL {json}
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
import traceback
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from traffic import icmp, icmpv6, tcp, udp  # tests/traffic.py, copied beside this file

results: dict[str, Any] = {"machine": platform.machine(), "kernel": platform.release()}
failures: list[str] = []


def say(message: str) -> None:
    print(f"guest: {message}", flush=True)


def check(condition: bool, what: str) -> None:
    if not condition:
        failures.append(what)
        say(f"FAILED: {what}")


def flush() -> None:
    subprocess.run(["conntrack", "-F"], capture_output=True, check=False)


def ctnetlink_listeners() -> int:
    """NETLINK_NETFILTER (12) sockets that joined multicast groups: event listeners."""
    with open("/proc/net/netlink") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return sum(1 for row in rows if len(row) > 3 and row[1] == "12" and int(row[3], 16) != 0)


def wait_for(condition: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def drain(stream: Any, quiet_s: float) -> list[dict[str, Any]]:
    events = []
    while (event := stream.poll(quiet_s)) is not None:
        events.append(event)
    return events


# --- the proof --------------------------------------------------------------------------------

def correctness(conntrack_collector: Any) -> None:
    tool_out = open("/tmp/conntrack-E.txt", "w")
    tool = subprocess.Popen(
        ["stdbuf", "-oL", "conntrack", "-E", "-e", "NEW,DESTROY", "-o", "extended,id"],
        stdout=tool_out, stderr=subprocess.DEVNULL,
    )
    flows: dict[tuple[str, str], tuple[int, int]] = {}
    with conntrack_collector.EventStream(("NEW", "DESTROY")) as stream:
        for warning in stream.startup_warnings:
            say(f"startup warning: {warning}")
        # conntrack -E must subscribe before the flows exist; under emulation on a busy host
        # its start can take seconds.
        check(wait_for(lambda: ctnetlink_listeners() >= 2, 60), "conntrack -E subscribed")
        flows[("tcp", "ipv4")] = tcp(socket.AF_INET, "127.0.0.1")
        flows[("tcp", "ipv6")] = tcp(socket.AF_INET6, "::1")
        flows[("udp", "ipv4")] = udp(socket.AF_INET, "127.0.0.1")
        flows[("udp", "ipv6")] = udp(socket.AF_INET6, "::1")
        icmp()
        icmpv6()
        time.sleep(0.5)
        flush()
        events = drain(stream, 3.0)
        results["correctness_stats"] = stream.stats()
    # Let the tool print all it received (line-buffered) before stopping it.
    def tool_lines() -> int:
        with open("/tmp/conntrack-E.txt") as f:
            return sum(1 for line in f if line.startswith("["))
    wait_for(lambda: tool_lines() >= len(events), 20)
    time.sleep(0.5)
    tool.terminate()
    tool.wait(10)
    tool_out.close()

    say(f"{len(events)} events from EventStream")
    for event in events:
        say("event " + json.dumps(event, separators=(",", ":")))
    results["events"] = len(events)

    seen = {(e["Type"], e["Original"]["Layer4"]["Protoname"], e["Original"]["Layer3"]["Protoname"])
            for e in events}
    l4num = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}
    l3num = {"ipv4": 2, "ipv6": 10}
    loopback = {"ipv4": "127.0.0.1", "ipv6": "::1"}
    for l4, l3 in [("tcp", "ipv4"), ("tcp", "ipv6"), ("udp", "ipv4"), ("udp", "ipv6"),
                   ("icmp", "ipv4"), ("icmpv6", "ipv6")]:
        for kind in ("NEW", "DESTROY"):
            check((kind, l4, l3) in seen, f"a {kind} event for {l4}/{l3}")
    for e in events:
        what = f"{e['Type']} id={e['Id']}"
        l3, l4 = e["Original"]["Layer3"], e["Original"]["Layer4"]
        check(e["Type"] in ("NEW", "DESTROY"), f"{what}: Type")
        check(isinstance(e["Id"], int) and e["Id"] != 0, f"{what}: Id non-zero")
        check(abs(e["Timestamp"] - time.time() * 1000) < 120_000, f"{what}: Timestamp is now")
        check(l3["Protonum"] == l3num.get(l3["Protoname"]), f"{what}: Layer3 Protonum")
        check(l4["Protonum"] == l4num.get(l4["Protoname"]), f"{what}: Layer4 Protonum")
        for direction in ("Original", "Reply"):
            d3 = e[direction]["Layer3"]
            check(d3["Src"] == d3["Dst"] == loopback.get(l3["Protoname"]),
                  f"{what}: {direction} addresses are loopback")
        port = flows.get((l4["Protoname"], l3["Protoname"]))
        if port is not None:
            sport, dport = port
            r4 = e["Reply"]["Layer4"]
            check((l4["Sport"], l4["Dport"]) == (sport, dport), f"{what}: Original ports")
            check((r4["Sport"], r4["Dport"]) == (dport, sport), f"{what}: Reply ports")
        if e["Type"] == "DESTROY":
            check(e["Original"]["Counter"]["Packets"] > 0, f"{what}: Original packet counter")
            check(e["Original"]["Counter"]["Bytes"] > 0, f"{what}: Original byte counter")
            check(e["UNREPLIED"] is False, f"{what}: UNREPLIED false (every flow was answered)")
    news = {e["Id"] for e in events if e["Type"] == "NEW"}
    destroys = {e["Id"] for e in events if e["Type"] == "DESTROY"}
    check(news == destroys, "every NEW has its DESTROY with the same Id")

    # The target's own conntrack tool saw the same events, field for field.
    try:
        from conntrack_text import parse_line
    except ImportError:
        say("conntrack_text.py absent: no comparison with conntrack -E")
        return
    with open("/tmp/conntrack-E.txt") as f:
        text = f.read()
    theirs = [e for e in map(parse_line, text.splitlines()) if e is not None]
    ours = [{k: v for k, v in e.items() if k in ("Type", "Id", "Original", "Reply", "UNREPLIED",
                                                "ASSURED")} for e in events]
    key = lambda e: (e["Id"], e["Type"])  # noqa: E731
    results["conntrack_E_events"] = len(theirs)
    same = sorted(ours, key=key) == sorted(theirs, key=key)
    if not same:
        say("conntrack -E printed:\n" + text)
    check(same, f"our {len(ours)} events equal conntrack -E's {len(theirs)}, field for field")


def throughput_round(conntrack_collector: Any, flows: int, as_json: bool) -> dict[str, Any]:
    """`flows` UDP flows (one datagram each to a different port), then one flush."""
    with conntrack_collector.EventStream(("NEW", "DESTROY"), as_json=as_json) as stream:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            t0 = time.monotonic()
            for port in range(flows):
                s.sendto(b"x", ("127.0.0.1", 20000 + port))
            send_s = time.monotonic() - t0
        # Let the reader thread decode and queue them all: what follows is the iterator alone
        # (one dict per event handed to Python).
        deadline = time.monotonic() + 30
        while stream.stats()["queued"] < flows and time.monotonic() < deadline:
            time.sleep(0.1)
        t0 = time.monotonic()
        new = 0
        while new < flows and stream.poll(5.0) is not None:
            new += 1
        iterate_s = time.monotonic() - t0
        # A flush: the kernel, the reader thread and the iterator together, first to last event.
        flusher = threading.Thread(target=flush)
        flusher.start()
        destroy = 0
        first = last = 0.0
        while destroy < flows:
            event = stream.poll(10.0)
            if event is None:
                break
            if as_json or event["Type"] == "DESTROY":  # only DESTROYs are left to come
                last = time.monotonic()
                first = first or last
                destroy += 1
        flusher.join()
        stats = stream.stats()
    return {
        "as_json": as_json,
        "flows": flows,
        "new_received": new,
        "destroy_received": destroy,
        "send_s": round(send_s, 2),
        "iterator_per_s": round(new / iterate_s) if iterate_s > 0 else None,
        "flush_destroy_per_s": round((destroy - 1) / (last - first)) if last > first else None,
        "overruns": stats["overruns"],
        "decode_errors": stats["decode_errors"],
    }


def throughput(conntrack_collector: Any) -> None:
    """One round handing out dicts, one handing out JSON bytes (what the publisher sends)."""
    with open("/proc/sys/net/netfilter/nf_conntrack_max") as f:
        ct_max = int(f.read())
    flows = max(100, min(int(os.environ.get("FLOWS", "3000")), ct_max - 100))
    rounds = [throughput_round(conntrack_collector, flows, as_json) for as_json in (False, True)]
    for r in rounds:
        say(f"throughput: {json.dumps(r)}")
    results["throughput"] = rounds[0]
    results["throughput_json"] = rounds[1]
    for r in rounds:
        check(r["new_received"] == flows and r["destroy_received"] == flows,
              f"all {flows} NEW and DESTROY of a burst arrived ({r['new_received']},"
              f" {r['destroy_received']})")


def main() -> int:
    try:
        t0 = time.monotonic()
        import conntrack_collector

        results["import_s"] = round(time.monotonic() - t0, 2)
        results["version"] = conntrack_collector.__version__
        results["native"] = conntrack_collector._native.__file__
        say(f"imported conntrack_collector {results['version']} from {results['native']}")
        correctness(conntrack_collector)
        throughput(conntrack_collector)
    except Exception:
        traceback.print_exc()
        failures.append("exception: " + traceback.format_exc().strip().splitlines()[-1])
    results["failures"] = failures
    verdict = "FAIL" if failures else "PASS"
    print(f"CONNTRACK-QEMU-RESULT: {verdict} {json.dumps(results)}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
