"""What the kernel drops for us, and what the socket still holds at stop: counted in events, in
both modes, against the kernel's own count (/proc/net/netlink), never lost in silence."""

from __future__ import annotations

import logging
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from collector_process import collector_command
from conntrack_collector import EventStream
from netns_util import flush_flows, netlink_drops, send_udp_flows

pytestmark = pytest.mark.root

BURST_FLOWS = 3000
TINY_BUFFER_BYTES = 4096  # the kernel grants its minimum: a few events
BIG_BUFFER_BYTES = 64_000_000


def read_all(stream: EventStream, quiet_s: float = 1.0) -> list[Any]:
    events = []
    while (event := stream.poll(quiet_s)) is not None:
        events.append(event)
    return events


@pytest.mark.parametrize("reliable", [False, True], ids=["plain", "reliable"])
def test_kernel_dropped_counts_events_not_overruns(netns: str, reliable: bool,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    """A burst into a tiny buffer while nobody reads: every NEW the kernel made is either
    received or in kernel_dropped, and kernel_dropped is what the kernel itself counted for our
    socket. ENOBUFS comes once per overrun (never in reliable mode), so `overruns` is far less:
    reliable mode does not save NEW events. The loss is logged as the stream reads on."""
    caplog.set_level(logging.WARNING, logger="conntrack_collector")
    with EventStream(("NEW",), netns=netns, buffer_bytes=TINY_BUFFER_BYTES, queue_events=16,
                     reliable=reliable, as_json=True) as stream:
        send_udp_flows(netns, BURST_FLOWS)
        time.sleep(0.5)  # a consumer that does not read for a while
        received = len(read_all(stream))
        stats = stream.stats()
        kernel_count = netlink_drops(netns)
    lost = BURST_FLOWS - received
    assert lost > BURST_FLOWS // 2, f"the tiny buffer should have overflowed: {stats}"
    assert stats["kernel_dropped"] == lost, stats
    assert stats["kernel_dropped"] == kernel_count, (stats, kernel_count)
    if reliable:
        assert stats["overruns"] == 0, stats
    else:
        assert 0 < stats["overruns"] < lost // 10, stats
    verb = "could not queue" if reliable else "dropped"
    logged = [int(m[1]) for m in re.finditer(rf"the kernel {verb} (\d+) conntrack events so far",
                                              caplog.text)]
    assert logged and 0 < logged[-1] <= stats["kernel_dropped"], caplog.text


def test_reliable_mode_resends_destroys_and_counts_the_failed_attempts(netns: str) -> None:
    """With reliable delivery every DESTROY of a flush arrives through a tiny buffer; the
    kernel's counter counts each failed attempt (so, in that mode, an upper bound of loss)."""
    with EventStream(("NEW",), netns=netns, as_json=True) as stream:
        send_udp_flows(netns, BURST_FLOWS)  # with a listener: their DESTROYs will be made
        assert len(read_all(stream, 0.5)) == BURST_FLOWS
    with EventStream(("DESTROY",), netns=netns, buffer_bytes=TINY_BUFFER_BYTES, queue_events=16,
                     reliable=True, as_json=True) as stream:
        flush_flows(netns)
        time.sleep(0.5)
        received = len(read_all(stream, 2.0))
        stats = stream.stats()
    assert received == BURST_FLOWS, stats
    assert stats["kernel_dropped"] > 0 and stats["overruns"] == 0, stats


def test_stop_reading_takes_what_the_socket_holds(netns: str) -> None:
    """At stop the socket still holds most of a burst (the queue holds 64): stop_reading()
    reads it all into the stream, and poll then gives every event and ends."""
    with EventStream(("NEW",), netns=netns, buffer_bytes=BIG_BUFFER_BYTES, queue_events=64,
                     as_json=True) as stream:
        send_udp_flows(netns, BURST_FLOWS)
        time.sleep(0.3)
        stream.stop_reading()
        events = []
        while (event := stream.poll(0.0)) is not None:
            events.append(event)
        stats = stream.stats()
    assert len(events) == BURST_FLOWS, stats
    assert stats["kernel_dropped"] == 0, stats
    assert stats["read_at_stop"] >= BURST_FLOWS - 64 - 32 * 16, stats  # queue, one recv batch
    assert stats["queued"] == 0


STOP_BURST_FLOWS = 230_000  # more than the queue (65,536) + what the old drain took (2 x 65,536)


def test_collector_stop_delivers_or_counts_what_the_socket_holds(netns: str,
                                                                   tmp_path: Path) -> None:
    """The collector is stopped while the kernel socket still holds a big part of a burst (its
    output is not read until then, so it cannot keep up): every event the kernel made for it is
    written out, or counted in the stop summary; none vanishes with the socket."""
    log_path = tmp_path / "stderr"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            ["ip", "netns", "exec", netns,
             *collector_command("--output", "stdout", "--events", "NEW",
                                "--buffer-size", "400000000")],
            stdout=subprocess.PIPE, stderr=log_file, cwd="/")
        try:
            deadline = time.monotonic() + 20
            while "listening for" not in log_path.read_text():
                assert process.poll() is None and time.monotonic() < deadline, \
                    log_path.read_text()
                time.sleep(0.05)
            send_udp_flows(netns, STOP_BURST_FLOWS)
            time.sleep(1.0)
            process.send_signal(signal.SIGTERM)
            out, _ = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    log = log_path.read_text()
    written = out.count(b"\n")
    summary = re.search(r"stopped: received (\d+) events, not delivered (\d+)", log)
    assert summary, log
    kernel = re.search(r"the kernel dropped (\d+) event", log)
    counted = int(summary[2]) + (int(kernel[1]) if kernel else 0)
    assert written + counted == STOP_BURST_FLOWS, (written, log)
    assert written == int(summary[1]) - int(summary[2]), log
