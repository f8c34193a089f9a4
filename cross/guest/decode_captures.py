"""Runs with the target's Python under qemu-user (chroot into a root of that architecture), and
with the host's for the x86_64 wheel.

Imports the installed wheel and decodes every golden capture (rust/testdata/*.bin, recorded
from a real kernel) with decode_datagram, as dicts and as JSON bytes, and writes what it got as
JSON to OUT: the host's pytest (tests/cross/test_emulated.py) compares it with the manifest and
with what the x86_64 wheel decoded. This script only reports; it judges nothing.
Usage: decode_captures.py TESTDATA_DIR OUT
"""

from __future__ import annotations

import base64
import json
import platform
import sys
from pathlib import Path

import conntrack_collector
from conntrack_collector import decode_datagram


def main() -> int:
    testdata, out = Path(sys.argv[1]), Path(sys.argv[2])
    manifest = json.loads((testdata / "manifest.json").read_text())
    decoded = {}
    for entry in manifest:
        datagram = (testdata / entry["file"]).read_bytes()
        decoded[entry["file"]] = {
            "events": decode_datagram(datagram, timestamp_ms=1),
            # The bytes the publisher sends, exactly.
            "json": [base64.b64encode(j).decode() for j in
                     decode_datagram(datagram, timestamp_ms=1, as_json=True)],
        }
    # qemu-user refuses NETLINK_NETFILTER sockets: say what opening one did here.
    try:
        conntrack_collector.EventStream(("NEW",)).close()
        socket_result = "EventStream opened"
    except Exception as exc:  # noqa: BLE001 - informative only
        socket_result = f"EventStream: {type(exc).__name__}: {exc}"
    facts = {
        "machine": platform.machine(),
        "python": platform.python_version(),
        "version": conntrack_collector.__version__,
        "socket": socket_result,
        "decoded": decoded,
    }
    out.write_text(json.dumps(facts, sort_keys=True))
    print(f"conntrack_collector {facts['version']} on {facts['machine']} (Python"
          f" {facts['python']}): {len(decoded)} golden captures decoded into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
