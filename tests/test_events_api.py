"""The Python API's contract: forms, arguments and errors."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import conntrack_collector
import pytest
from conntrack_collector import ConntrackError, EventStream, KernelDropsWarning, decode_datagram
from netns_util import conntrack_netns, flush_flows, send_udp_flows

CAPTURES = sorted((Path(__file__).parents[1] / "rust" / "testdata").glob("*.bin"))
REFERENCE_KEYS = ["Timestamp", "Type", "Id", "Original", "Reply", "UNREPLIED", "ASSURED"]
DIRECTION_KEYS = {"Layer3": ["Protonum", "Protoname", "Src", "Dst"],
                  "Layer4": ["Protonum", "Protoname", "Sport", "Dport"],
                  "Counter": ["Packets", "Bytes"]}


def test_captures_are_there() -> None:
    assert len(CAPTURES) > 50


@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.stem)
def test_dict_and_json_carry_the_same_content_in_the_same_order(capture: Path) -> None:
    datagram = capture.read_bytes()
    [as_dict] = decode_datagram(datagram, timestamp_ms=1764160000123)
    [as_json] = decode_datagram(datagram, timestamp_ms=1764160000123, as_json=True)
    assert isinstance(as_json, bytes) and isinstance(as_dict, dict)
    parsed = json.loads(as_json)
    assert parsed == as_dict
    assert list(parsed) == list(as_dict) == REFERENCE_KEYS
    for direction in ("Original", "Reply"):
        assert list(parsed[direction]) == list(DIRECTION_KEYS)
        for part, keys in DIRECTION_KEYS.items():
            assert list(parsed[direction][part]) == keys
            assert list(as_dict[direction][part]) == keys
    assert as_dict["Timestamp"] == 1764160000123


def test_malformed_datagram_is_a_conntrack_error() -> None:
    datagram = CAPTURES[0].read_bytes()
    with pytest.raises(ConntrackError):
        decode_datagram(datagram[:40] + b"\xff" * 4 + datagram[44:60])


def test_conntrack_error_is_an_os_error_with_its_errno() -> None:
    """The docs promise ConntrackError when reading fails; a failed system call is one."""
    assert issubclass(ConntrackError, OSError)
    error = ConntrackError(105, "recvmmsg failed")
    assert (error.errno, error.strerror) == (105, "recvmmsg failed")


@pytest.mark.parametrize("reliable", [False, True], ids=["plain", "reliable"])
def test_kernel_drops_are_logged_once_a_second_with_the_running_total(
        caplog: pytest.LogCaptureFixture, reliable: bool) -> None:
    """The native stream reports each growth of the kernel's drops; the wrapper says it at most
    once a second, in the words of the mode."""
    now = [100.0]
    warn = KernelDropsWarning(reliable, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="conntrack_collector"):
        warn(5)
        now[0] += 0.5
        warn(8)  # within the second: said by the next warning's total
        now[0] += 0.5
        warn(12)
    lines = [record.getMessage() for record in caplog.records]
    verb = "could not queue" if reliable else "dropped"
    assert [line.split(";")[0] for line in lines] == [
        f"the kernel {verb} 5 conntrack events so far, its socket buffer full",
        f"the kernel {verb} 12 conntrack events so far, its socket buffer full"]
    assert all("buffer_bytes / --buffer-size" in line for line in lines)
    assert ("NEW and UPDATE are lost" in lines[0]) is reliable


def test_version_is_the_crate_version() -> None:
    cargo = (Path(__file__).parents[1] / "Cargo.toml").read_text()
    assert f'version = "{conntrack_collector.__version__}"' in cargo


def test_unknown_event_type_is_a_value_error() -> None:
    with pytest.raises(ValueError, match='unknown event type "OPEN"'):
        EventStream(("NEW", "OPEN"))


def test_missing_namespace_is_file_not_found() -> None:
    with pytest.raises(FileNotFoundError, match="/run/netns/no-such-namespace"):
        EventStream(netns="no-such-namespace")


@pytest.mark.root
def test_without_cap_net_admin_a_permission_error_says_so() -> None:
    """Root, but with CAP_NET_ADMIN dropped from every set."""
    script = ("import conntrack_collector\n"
              "try:\n    conntrack_collector.EventStream()\n"
              "except PermissionError as e:\n    print(e)\n")
    done = subprocess.run(
        ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", "--",
         sys.executable, "-c", script],
        capture_output=True, text=True, check=True,
    )
    assert "needs CAP_NET_ADMIN" in done.stdout
    assert "run as root, or grant the capability" in done.stdout


@pytest.mark.root
def test_events_generator_stream_and_context_manager() -> None:
    with conntrack_netns("api") as netns:
        generator = conntrack_collector.events(("NEW",), netns=netns)
        with EventStream("NEW,DESTROY", netns=netns) as stream:
            assert stream.poll(0) is None
            send_udp_flows(netns, 3)
            flush_flows(netns)
            first_three = [next(generator) for _ in range(3)]
            stream_events = [next(stream) for _ in range(6)]
            assert set(stream.stats()) >= {"received", "overruns", "decode_errors", "queued"}
        generator.close()
        stream.close()  # a second close is harmless
        assert stream.poll(0.1) is None
    assert [e["Type"] for e in first_three] == ["NEW"] * 3
    assert sorted(e["Type"] for e in stream_events) == ["DESTROY"] * 3 + ["NEW"] * 3


@pytest.mark.root
@pytest.mark.parametrize("as_json", [False, True])
def test_poll_many_gives_batches_in_order_and_counts_types(as_json: bool) -> None:
    with conntrack_netns("many") as netns, EventStream(netns=netns, as_json=as_json) as stream:
        assert stream.poll_many(0, 10) == []
        send_udp_flows(netns, 30)
        flush_flows(netns)
        events: list[object] = []
        while len(events) < 60 and (batch := stream.poll_many(5.0, 25)):
            assert 1 <= len(batch) <= 25
            events.extend(batch)
        stats = stream.stats()
    parsed = [json.loads(e) if isinstance(e, bytes) else e for e in events]
    assert all(isinstance(e, bytes if as_json else dict) for e in events)
    assert [e["Type"] for e in parsed] == ["NEW"] * 30 + ["DESTROY"] * 30
    ports = [e["Original"]["Layer4"]["Dport"] for e in parsed[:30]]
    assert ports == sorted(ports)  # the kernel's order, kept
    assert (stats["delivered_new"], stats["delivered_update"], stats["delivered_destroy"]) == (
        30, 0, 30)
    assert stats["delivered"] == 60


@pytest.mark.root
@pytest.mark.parametrize("timeout_s", [float("nan"), float("inf"), -1.0, 1e19])
def test_poll_many_takes_the_timeouts_poll_takes(timeout_s: float) -> None:
    """As poll's: NaN, infinity, a negative timeout and one the clock cannot add (a Rust panic
    once) are a ValueError; so is max_events 0."""
    with conntrack_netns("timeout") as netns, EventStream(netns=netns) as stream:
        with pytest.raises(ValueError, match="timeout_s must be a finite, non-negative"):
            stream.poll_many(timeout_s, 10)
        with pytest.raises(ValueError, match="max_events"):
            stream.poll_many(0.0, 0)
