"""The Rust core. Import `conntrack_collector`, not this module."""

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from typing_extensions import Self, TypeAlias

__version__: str
# The stream's defaults, defined once in the Rust core.
EVENT_TYPES: list[str]  # every type, in the kernel's order
DEFAULT_TYPES: list[str]
DEFAULT_BUFFER_BYTES: int
DEFAULT_QUEUE_EVENTS: int
#: The opt-in field names, in the order their keys follow ASSURED.
FIELDS: tuple[str, ...]

Event: TypeAlias = dict[str, Any] | bytes

class ConntrackError(OSError):
    """Base class of the errors conntrack_collector raises itself (a kernel without
    ctnetlink, a failed system call such as a read, with its errno)."""

class EventStream:
    """A reader thread that owns a NETLINK_NETFILTER socket joined to ctnetlink's event
    groups, decodes each message and queues it for this object's consumer.

    Raises PermissionError without CAP_NET_ADMIN, FileNotFoundError for a missing
    namespace, ValueError for an unknown event type or field, ConntrackError when the kernel lacks
    conntrack or ctnetlink.
    """

    def __init__(
        self,
        types: Sequence[str] = ...,
        *,
        netns: str | os.PathLike[str] | None = None,
        nat_only: bool = False,
        buffer_bytes: int = ...,
        reliable: bool = False,
        as_json: bool = False,
        queue_events: int = ...,
        fields: Sequence[str] = (),
        filter: Mapping[str, Sequence[str]] = ...,
        on_kernel_drops: Callable[[int], object] | None = None,
    ) -> None:
        """filter: the accept/ignore lists by name (accept_protocols, ignore_protocols,
        accept_addresses, ignore_addresses, accept_tcp_states, ignore_tcp_states), compiled to a BPF socket filter attached to the
        socket; ValueError for a bad item, ConntrackError if the kernel refuses the program.
        on_kernel_drops: called with the kernel_dropped total when a poll or next() sees it
        grown (not per event); what it raises, the poll raises."""
    @property
    def startup_warnings(self) -> list[str]:
        """One line per kernel setting that makes events incomplete or missing."""
    def __iter__(self) -> EventStream: ...
    def __next__(self) -> Event:
        """Waits for the next event with the GIL released, in slices of 50 ms; raises
        KeyboardInterrupt on Ctrl-C without losing a received event."""
    def poll(self, timeout_s: float) -> Event | None:
        """One event, or None if none arrives within `timeout_s` seconds. `timeout_s` is a
        finite number >= 0 (0: do not wait); ValueError for a negative one, NaN, infinity or
        one the clock cannot add (iterate to wait for ever)."""
    def poll_many(self, timeout_s: float, max_events: int) -> list[Event]:
        """Up to `max_events` events, oldest first, as soon as one is there; [] if none
        arrives within `timeout_s` seconds (as poll's) or the stream has ended; ValueError for
        max_events 0. The GIL is released while waiting and while JSON is written; it is
        taken once for the whole batch."""
    def stats(self) -> dict[str, int]:
        """received, delivered, delivered_new, delivered_update, delivered_destroy, filtered,
        filtered_by_fallback, overruns, kernel_dropped, read_at_stop, stop_cut_short,
        decode_errors, queued, peak_queued, socket_buffer_bytes."""
    def stop_reading(self) -> None:
        """Reads what the socket still holds into the stream, then ends it."""
    def close(self) -> None:
        """Stops and joins the reader thread; queued events are discarded."""
    def __enter__(self) -> Self: ...
    def __exit__(self, *args: object) -> bool: ...

def decode_datagram(
    datagram: bytes, *, timestamp_ms: int = 0, as_json: bool = False,
    fields: Sequence[str] = (),
) -> list[Event]:
    """Decodes one recorded netlink datagram as the reader would; raises ConntrackError
    for a malformed message."""

def netns_path(netns: str) -> str:
    """`NAME` -> /run/netns/NAME; a path (anything with a slash) stays as it is."""

def tune_kernel(
    netns: str | None = None, sysctl_dir: str | os.PathLike[str] | None = None
) -> list[tuple[str, str | None, str | None, str | None]]:
    """Sets net.netfilter.nf_conntrack_{acct,timestamp,events} to 1 in `netns` (or here):
    `(name, before, after, error)` for each. FileNotFoundError, PermissionError or ValueError
    when the namespace cannot be entered."""

def check_filter(filter: Mapping[str, Sequence[str]]) -> None:
    """Parses accept/ignore lists as EventStream does; ValueError (one line) for a bad item."""
