"""Each default is defined once, in the Rust core; the Python API and the command derive theirs
from it, and this checks they still do."""

from __future__ import annotations

import inspect

import conntrack_collector
from conntrack_collector import _native
from conntrack_collector.cli import cli


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


def test_events_forwards_every_option_to_the_stream() -> None:
    """`events()` spells out no option of its own: whatever EventStream takes, it takes."""
    parameters = inspect.signature(conntrack_collector.events).parameters
    assert list(parameters) == ["types", "options"]
    assert parameters["types"].default == conntrack_collector.DEFAULT_TYPES
