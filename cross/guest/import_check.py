"""Runs with the target's Python under qemu-user (chroot into a root of that architecture).

Imports the installed wheel and decodes every golden capture (rust/testdata/*.bin, recorded
from a real kernel) with decode_datagram, checking the fields the manifest names. Prints the
SHA-256 of all decoded events as JSON: the host compares it with the x86_64 wheel's, so the
target decodes every capture exactly as x86_64 does. Last line: one-line summary.
Usage: import_check.py TESTDATA_DIR
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
from pathlib import Path

import conntrack_collector
from conntrack_collector import decode_datagram

TYPES = {"NEW", "UPDATE", "DESTROY"}


def main() -> int:
    testdata = Path(sys.argv[1])
    manifest = json.loads((testdata / "manifest.json").read_text())
    problems = []
    decoded = {}
    for entry in manifest:
        events = decode_datagram((testdata / entry["file"]).read_bytes(), timestamp_ms=1)
        decoded[entry["file"]] = events
        if len(events) != 1:
            problems.append(f"{entry['file']}: {len(events)} events")
            continue
        e = events[0]
        want = {
            "Type": entry["type"],
            "Id": entry["id"],
            "l3": entry["l3proto"],
            "l4": entry["l4proto"],
            "orig": (entry["orig"]["src"], entry["orig"]["dst"]),
            "reply": (entry["reply"]["src"], entry["reply"]["dst"]),
            "counters": (entry["orig"]["packets"], entry["orig"]["bytes"],
                         entry["reply"]["packets"], entry["reply"]["bytes"]),
            "ASSURED": entry["assured"],
            "UNREPLIED": entry["unreplied"],
        }
        got = {
            "Type": e["Type"],
            "Id": e["Id"],
            "l3": e["Original"]["Layer3"]["Protonum"],
            "l4": e["Original"]["Layer4"]["Protonum"],
            "orig": (e["Original"]["Layer3"]["Src"], e["Original"]["Layer3"]["Dst"]),
            "reply": (e["Reply"]["Layer3"]["Src"], e["Reply"]["Layer3"]["Dst"]),
            "counters": (e["Original"]["Counter"]["Packets"], e["Original"]["Counter"]["Bytes"],
                         e["Reply"]["Counter"]["Packets"], e["Reply"]["Counter"]["Bytes"]),
            "ASSURED": e["ASSURED"],
            "UNREPLIED": e["UNREPLIED"],
        }
        for key in want:
            if want[key] != got[key]:
                problems.append(f"{entry['file']}: {key} {got[key]!r} != manifest {want[key]!r}")
    # JSON form too: the bytes the publisher sends.
    as_json = [decode_datagram((testdata / f).read_bytes(), timestamp_ms=1, as_json=True)
               for f in sorted(decoded)]
    digest = hashlib.sha256(
        json.dumps([decoded[f] for f in sorted(decoded)], sort_keys=True).encode()
        + b"".join(b"".join(j) for j in as_json)
    ).hexdigest()

    # qemu-user refuses NETLINK_NETFILTER sockets: say what opening one did here.
    try:
        conntrack_collector.EventStream(("NEW",)).close()
        socket_result = "EventStream opened"
    except Exception as exc:  # noqa: BLE001 - informative only
        socket_result = f"EventStream: {type(exc).__name__}: {exc}"

    for problem in problems:
        print("PROBLEM", problem)
    print("socket:", socket_result)
    print("digest:", digest)
    print(f"conntrack_collector {conntrack_collector.__version__} on {platform.machine()}"
          f" (Python {platform.python_version()}): {len(manifest)} golden captures decoded,"
          f" {len(problems)} problems, digest {digest[:16]}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
