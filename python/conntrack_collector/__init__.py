"""Every Linux conntrack event, as a Python dict or JSON bytes.

    import conntrack_collector

    for event in conntrack_collector.events(("NEW", "DESTROY")):
        print(event["Type"], event["Original"]["Layer3"]["Src"])

The kernel side lives in the native module (a Rust reader thread); this module is the
public API and the only one users import.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Union

from . import _native
from ._native import FIELDS, ConntrackError, decode_datagram

if TYPE_CHECKING:
    # Annotations only: typing_extensions is not a runtime dependency.
    from typing_extensions import Self

__all__ = ["FIELDS", "ConntrackError", "Event", "EventStream", "__version__", "decode_datagram",
           "events"]
__version__: str = _native.__version__

#: An event as a dict, in the reference's message schema (see the README), or its JSON bytes.
Event = Union[dict[str, Any], bytes]

DEFAULT_TYPES: tuple[str, ...] = tuple(_native.DEFAULT_TYPES)

#: The accept/ignore lists EventStream takes, by keyword.
FILTER_LISTS = ("accept_protocols", "ignore_protocols", "accept_addresses", "ignore_addresses",
                "accept_tcp_states", "ignore_tcp_states")
#: A filter list: a sequence of items, or one comma-separated string ("tcp,udp").
FilterItems = Union[str, Iterable[Union[str, int]], None]


#: Kernel-drop warnings are logged at most this often; each one carries the running total.
DROPS_LOG_INTERVAL_S = 1.0


class KernelDropsWarning:
    """What a stream says when the kernel drops events for it (its socket buffer full): the
    native stream calls this with the running total whenever it has grown; one warning at
    most every DROPS_LOG_INTERVAL_S (growth in between is in the next one's total)."""

    def __init__(self, reliable: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self._reliable = reliable
        self._clock = clock
        self._logged_at: float | None = None

    def __call__(self, kernel_dropped: int) -> None:
        now = self._clock()
        if self._logged_at is not None and now - self._logged_at < DROPS_LOG_INTERVAL_S:
            return
        self._logged_at = now
        # NETLINK_NO_ENOBUFS makes the kernel send DESTROYs again, never NEW or UPDATE; its
        # counter then counts every failed attempt, retried DESTROYs included.
        if self._reliable:
            what, advice = "could not queue", (
                "DESTROYs among them are sent again (so this counts attempts), NEW and UPDATE "
                "are lost: use a larger buffer (buffer_bytes / --buffer-size) or read faster")
        else:
            what, advice = "dropped", (
                "use a larger buffer (buffer_bytes / --buffer-size) or read faster "
                "(reliable=True / --reliable saves DESTROY events only, not NEW or UPDATE)")
        import logging  # only now: `version` and friends start faster without it

        logging.getLogger("conntrack_collector").warning(
            "the kernel %s %d conntrack events so far, its socket buffer full; %s",
            what, kernel_dropped, advice)


def filter_items(value: FilterItems) -> list[str]:
    """`"tcp, udp"` or `["tcp", 17]` -> `["tcp", "17"]`; None -> no rule."""
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else [str(item) for item in value]
    return [item.strip() for item in items if item.strip()]


class EventStream:
    """Conntrack events from the kernel, as they happen.

    Subscribes before returning, so traffic made afterwards produces events. Iterate it,
    or `poll(timeout_s)`; `close()` (or leaving a `with` block) stops the reader thread.

    types: any of "NEW", "UPDATE", "DESTROY".
    netns: a network namespace name (under /run/netns) or path; only the reader thread
        enters it.
    nat_only: only source-NATed flows (the reference's `-n`).
    buffer_bytes: the socket's receive buffer, where bursts wait while we catch up.
    reliable: the kernel re-delivers DESTROY events it could not deliver, instead of
        dropping them (NETLINK_BROADCAST_ERROR + NETLINK_NO_ENOBUFS). NEW and UPDATE events
        it cannot queue are still dropped (and counted in stats()["kernel_dropped"]).
    as_json: give the JSON message as bytes instead of a dict.
    queue_events: events held between the reader thread and you before it stops reading.
    fields: opt-in keys after ASSURED, any of FIELDS ("timestamps", "state", "zone", "mark",
        "labels", "icmp", "status"); they appear in that order whatever the order given.
    accept_protocols, ignore_protocols: IP protocols (tcp, udp, udplite, icmp, icmpv6, sctp,
        gre, dccp, or numbers) of the original tuple: only these, or all but these.
    accept_addresses, ignore_addresses: IPv4/IPv6 addresses or subnets (10.0.0.0/8,
        fd00::/8), matched against either address of the original tuple; a list of one
        family never hides the other family's events.
    accept_tcp_states, ignore_tcp_states: TCP states as `conntrack` names them (SYN_SENT,
        ESTABLISHED, TIME_WAIT, ...), for TCP events that carry one (NEW, DESTROY, an UPDATE
        that changed the state); other events pass.
        Each a sequence or a comma-separated string. The rules run in the kernel, as a socket
        filter: ignored events are never queued for us, nor counted (stats() cannot see them).
        A bad item raises ValueError.
    """

    def __init__(
        self,
        types: Iterable[str] = DEFAULT_TYPES,
        *,
        netns: str | os.PathLike[str] | None = None,
        nat_only: bool = False,
        buffer_bytes: int = _native.DEFAULT_BUFFER_BYTES,
        reliable: bool = False,
        as_json: bool = False,
        queue_events: int = _native.DEFAULT_QUEUE_EVENTS,
        fields: Iterable[str] = (),
        accept_protocols: FilterItems = None,
        ignore_protocols: FilterItems = None,
        accept_addresses: FilterItems = None,
        ignore_addresses: FilterItems = None,
        accept_tcp_states: FilterItems = None,
        ignore_tcp_states: FilterItems = None,
    ) -> None:
        if isinstance(types, str):
            types = [t for t in types.split(",") if t.strip()]
        if isinstance(fields, str):
            fields = fields.split(",")
        lists = dict(zip(FILTER_LISTS, (accept_protocols, ignore_protocols, accept_addresses,
                                         ignore_addresses, accept_tcp_states, ignore_tcp_states)))
        self._native = _native.EventStream(
            list(types),
            netns=netns,
            nat_only=nat_only,
            buffer_bytes=buffer_bytes,
            reliable=reliable,
            as_json=as_json,
            queue_events=queue_events,
            fields=list(fields),
            filter={name: filter_items(value) for name, value in lists.items() if value},
            on_kernel_drops=KernelDropsWarning(reliable),
        )
        if self._native.startup_warnings:
            import logging  # only now: `version` and friends start faster without it

            for warning in self._native.startup_warnings:
                logging.getLogger("conntrack_collector").warning("%s", warning)

    def __iter__(self) -> Iterator[Event]:
        # The native object iterates itself: no Python frame per event.
        return self._native

    def __next__(self) -> Event:
        return next(self._native)

    def poll(self, timeout_s: float) -> Event | None:
        """One event, or None if none arrives within `timeout_s` seconds (finite, >= 0;
        ValueError for a negative one, NaN or infinity: iterate to wait for ever)."""
        return self._native.poll(timeout_s)

    def poll_many(self, timeout_s: float, max_events: int = 1024) -> list[Event]:
        """Up to `max_events` events, oldest first, as soon as there is one; [] if none
        arrives within `timeout_s` seconds. The cheap way to keep up with a busy kernel: one
        call, one GIL handoff and (as_json) the JSON written without the GIL, per batch."""
        return self._native.poll_many(timeout_s, max_events)

    def stats(self) -> dict[str, int]:
        """received, delivered (delivered_new, delivered_update, delivered_destroy: of those,
        by type), filtered (by nat_only or type), filtered_by_fallback (left
        out by the accept/ignore rules in userspace, after the kernel's filter let them
        through), overruns (times the socket reported ENOBUFS: once per overrun, never in
        reliable mode), kernel_dropped (events the kernel could not queue for us, its buffer
        full, in both modes: the socket's drops counter, read at least every 0.1 s while
        reading and at the end; in reliable mode DESTROYs among them are sent again, so there
        it is an upper bound), read_at_stop (events stop_reading() found in the socket),
        stop_cut_short (1 if that took too long and was cut short), decode_errors, queued,
        peak_queued, socket_buffer_bytes (the receive buffer the kernel granted). Events the
        kernel's filter dropped appear nowhere."""
        return self._native.stats()

    def stop_reading(self) -> None:
        """Stop reading new events, without losing those the kernel already queued for us:
        the reader leaves the event groups, reads what the socket still holds into the
        stream, and ends. Afterwards `poll(0)` (or iteration) gives the rest, then None (the
        end). `close()` instead discards what the socket holds."""
        self._native.stop_reading()

    @property
    def startup_warnings(self) -> list[str]:
        return self._native.startup_warnings

    def close(self) -> None:
        """Stops and joins the reader thread. Events still queued are discarded."""
        self._native.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def events(types: Iterable[str] = DEFAULT_TYPES, **options: Any) -> Iterator[Event]:
    """Yields events until the caller stops; takes EventStream's arguments.

    Subscribes at the call, not at the first `next()`, so traffic made after the call
    produces events.
    """
    return _closing(EventStream(types, **options))


def _closing(stream: EventStream) -> Iterator[Event]:
    with stream:
        yield from stream
