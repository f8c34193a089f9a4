"""Each default is defined once, in the module that owns it (the stream's in the Rust core, the
publisher's in broker.py); the Python API and the command derive theirs from it, and this checks
they still do."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import conntrack_collector
from conntrack_collector import _native, broker, buffer, collector
from conntrack_collector.cli import cli
from conntrack_collector.publisher import Publisher


def cli_default(name: str) -> object:
    return next(p.default for p in cli.params if p.name == name)


def test_the_wrapper_takes_the_native_defaults() -> None:
    parameters = inspect.signature(conntrack_collector.EventStream.__init__).parameters
    assert parameters["types"].default == tuple(_native.DEFAULT_TYPES) == ("NEW", "DESTROY")
    assert parameters["buffer_bytes"].default == _native.DEFAULT_BUFFER_BYTES == 15_000_000
    assert parameters["queue_events"].default == _native.DEFAULT_QUEUE_EVENTS == 65_536


def test_the_command_takes_the_native_defaults() -> None:
    assert cli_default("buffer_size") == _native.DEFAULT_BUFFER_BYTES
    assert cli_default("events") == ",".join(_native.DEFAULT_TYPES)


def test_the_command_takes_the_publishers_defaults() -> None:
    parameters = inspect.signature(Publisher.__init__).parameters
    for option, parameter, value in (("max_in_flight", "max_in_flight", 1000),
                                     ("batch_events", "batch_events", 1),
                                     ("batch_bytes", "batch_bytes", 4 << 20)):
        assert cli_default(option) == parameters[parameter].default == value, option
    fields = {f.name: f.default for f in dataclasses.fields(collector.RunSettings)}
    assert fields["batch_bytes"] == broker.DEFAULT_BATCH_BYTES


def test_the_command_takes_the_brokers_defaults() -> None:
    fields = {f.name: f.default for f in dataclasses.fields(broker.BrokerSettings)}
    assert cli_default("connect_timeout") == fields["connect_timeout_s"] == 5.0


def test_the_buffer_bound_is_a_share_of_the_machines_memory(tmp_path: Path) -> None:
    """200 MB, the old default, was more than a 128 MiB router has."""
    assert cli_default("max_buffer_bytes") == buffer.default_max_bytes()
    meminfo = tmp_path / "meminfo"
    for total_kib, expected in ((128 << 10, 16 << 20),  # a small router: 1/8 is 16 MiB
                                (64 << 10, 16 << 20),  # never under 16 MiB
                                (4 << 20, 512 << 20),  # 4 GiB: 1/8
                                (64 << 20, 1 << 30)):  # never over 1 GiB
        meminfo.write_text(f"MemTotal:       {total_kib} kB\nMemFree:        1 kB\n")
        assert buffer.default_max_bytes(meminfo) == expected
    assert buffer.default_max_bytes(tmp_path / "absent") == 16 << 20


def test_events_forwards_every_option_to_the_stream() -> None:
    """`events()` spells out no option of its own: whatever EventStream takes, it takes."""
    parameters = inspect.signature(conntrack_collector.events).parameters
    assert list(parameters) == ["types", "options"]
    assert parameters["types"].default == conntrack_collector.DEFAULT_TYPES
