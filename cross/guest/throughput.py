"""Runs inside the qemu-system guest after the host's kernel tests: measures how fast the
cross-built wheel hands out real events (emulated: indicative only). The host's pytest judges
what it prints (tests/cross/test_emulated.py); this script only measures. Its last line:
    CONNTRACK-QEMU-THROUGHPUT: {json}
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

results: dict[str, Any] = {"machine": platform.machine(), "kernel": platform.release()}


def say(message: str) -> None:
    print(f"guest: {message}", flush=True)


def flush() -> None:
    subprocess.run(["conntrack", "-F"], capture_output=True, check=False)


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


def main() -> int:
    try:
        t0 = time.monotonic()
        import conntrack_collector

        results["import_s"] = round(time.monotonic() - t0, 2)
        results["version"] = conntrack_collector.__version__
        results["native"] = conntrack_collector._native.__file__
        say(f"imported conntrack_collector {results['version']} from {results['native']}")
        throughput(conntrack_collector)
    except Exception:  # noqa: BLE001 - reported to the host, whose pytest judges it
        traceback.print_exc()
        results["error"] = traceback.format_exc().strip().splitlines()[-1]
    print(f"CONNTRACK-QEMU-THROUGHPUT: {json.dumps(results)}", flush=True)
    return 1 if "error" in results else 0


if __name__ == "__main__":
    sys.exit(main())
