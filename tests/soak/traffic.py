"""The soak's traffic: new UDP flows in a namespace, in cycles of a steady rate, a quiet moment,
a burst, a trickle and a flush (a burst of DESTROYs). Every flow has its own destination
(address, port), so each of its two events (NEW, DESTROY) can be found in the queue."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from netns_util import flush_flows, run, send_udp_flows

STEADY_FLOWS = 20  # every STEADY_INTERVAL_S: 40 flows, 80 events a second
STEADY_INTERVAL_S = 0.5
STEADY_S = 15.0
QUIET_S = 2.0
BURST_FLOWS = 1000  # the collector's default --max-in-flight: a burst that fills one window
TRICKLE_FLOWS = 20  # one every TRICKLE_INTERVAL_S after the burst
TRICKLE_INTERVAL_S = 0.3


def flow_destination(n: int) -> tuple[str, int]:
    """Where flow number n went (as netns_util.send_udp_flows numbers them)."""
    return f"127.0.0.{1 + n // 40000}", 20000 + n % 40000


def expected_events(flows: int) -> Iterator[tuple[str, str, int]]:
    for n in range(flows):
        address, port = flow_destination(n)
        yield "NEW", address, port
        yield "DESTROY", address, port


def keep_flows_until_flushed(netns: str) -> None:
    """UDP flows normally time out after 30 s; here only the flushes end them, so a burst is
    exactly its flows' NEW events, with nothing else mixed in."""
    for name in ("nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"):
        run("ip", "netns", "exec", netns, "sysctl", "-q", "-w", f"net.netfilter.{name}=3600")


class Traffic:
    def __init__(self, netns: str) -> None:
        self.netns = netns
        self.flows = 0  # made so far, numbered from 0
        self.phase = "idle"
        self.cycles = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-traffic", daemon=True)

    def start(self) -> None:
        keep_flows_until_flushed(self.netns)
        self._thread.start()

    def stop(self) -> None:
        """Ends the current step, then flushes: every flow made has had both its events."""
        self._stop.set()
        self._thread.join(60)
        self.phase = "final flush"
        flush_flows(self.netns)
        self.phase = "stopped"

    def _make(self, count: int) -> None:
        send_udp_flows(self.netns, count, first_port=20000 + self.flows)
        self.flows += count

    def _run(self) -> None:
        wait = self._stop.wait
        while not self._stop.is_set():
            self.phase = "steady"
            for _ in range(int(STEADY_S / STEADY_INTERVAL_S)):
                self._make(STEADY_FLOWS)
                if wait(STEADY_INTERVAL_S):
                    return
            self.phase = "quiet"
            if wait(QUIET_S):
                return
            self.phase = "burst"
            self._make(BURST_FLOWS)
            self.phase = "trickle"
            for _ in range(TRICKLE_FLOWS):
                if wait(TRICKLE_INTERVAL_S):
                    return
                self._make(1)
            self.phase = "flush"
            flush_flows(self.netns)
            self.cycles += 1
