"""The collector's main loop: read events, hand them to the output, stop cleanly on a signal."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, NoReturn, Protocol, cast

from . import ConntrackError, EventStream, _native
from .broker import DEFAULT_BATCH_BYTES, BrokerConfigError, BrokerSettings
from .buffer import EventBuffer
from .credentials import CredentialsProvider
from .errors import Error, ExitCode
from .gaps import SHUTDOWN, KernelLossWatch, gap_record, now_ms
from .stats import CollectorStats, DropReason

if TYPE_CHECKING:
    from .publisher import Publisher

log = logging.getLogger("conntrack_collector")

POLL_TIMEOUT_S = 0.25  # how soon the loop notices a signal or a failed publisher
KERNEL_CHECK_EVENTS = 1024  # while events flow, look at the kernel's drops this often
# Events taken from the reader at once: one GIL handoff and one buffer lock per batch.
READ_BATCH_EVENTS = 1024


class Stream(Protocol):
    """What we need of conntrack_collector.EventStream (as_json=True)."""

    def poll_many(self, timeout_s: float, max_events: int) -> list[bytes]: ...
    def stop_reading(self) -> None: ...
    def close(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class RunSettings:
    types: tuple[str, ...]
    netns: str | None
    nat_only: bool
    socket_buffer_bytes: int
    reliable: bool
    output: str  # "amqp" or "stdout"
    broker: BrokerSettings
    max_buffer_events: int
    max_buffer_bytes: int
    max_in_flight: int
    batch_events: int
    shutdown_timeout_s: float
    fields: tuple[str, ...] = ()  # opt-in keys after ASSURED (EventStream's `fields`)
    credentials: CredentialsProvider | None = None  # from Vault; else broker.user and .password
    batch_bytes: int = DEFAULT_BATCH_BYTES
    # Accept/ignore rules, compiled to the reader's socket filter (empty: no rule).
    # (EventStream's keyword, e.g. "accept_protocols", its items)
    filter_lists: tuple[tuple[str, tuple[str, ...]], ...] = ()
    gap_records: bool = False  # publish a gap record (AMQP type conntrack.gap) for lost events

    @property
    def kernel_drops_are_retries(self) -> bool:
        """Reliable mode sends every DESTROY again: with DESTROYs only, the kernel's drops are
        retried attempts, not lost events."""
        return self.reliable and set(self.types) <= {"DESTROY"}


def open_stream(settings: RunSettings) -> Stream:
    filter_lists: dict[str, Any] = dict(settings.filter_lists)
    try:
        stream = EventStream(
            types=settings.types,
            netns=settings.netns,
            nat_only=settings.nat_only,
            buffer_bytes=settings.socket_buffer_bytes,
            reliable=settings.reliable,
            as_json=True,
            fields=settings.fields,
            **filter_lists,
        )
    except PermissionError as exc:
        raise Error(f"cannot listen to conntrack events: {exc}", ExitCode.NO_PERMISSION) from None
    except FileNotFoundError as exc:
        raise Error(str(exc), ExitCode.USAGE) from None  # it names the namespace's path
    except ValueError as exc:  # a bad argument: the command line checked all but --netns
        raise Error(f"cannot listen to conntrack events: {exc}", ExitCode.USAGE) from None
    except (ConntrackError, OSError) as exc:
        raise Error(f"cannot listen to conntrack events: {exc}", ExitCode.ERROR) from None
    return cast(Stream, stream)  # as_json=True: poll_many gives bytes


class StopFlag:
    """SIGTERM/SIGINT set it; a second signal exits at once."""

    def __init__(self, on_second: Callable[[int], None]) -> None:
        self.event = threading.Event()
        self._on_second = on_second

    def handler(self, signum: int, _frame: FrameType | None) -> None:
        if self.event.is_set():
            self._on_second(signum)
        self.event.set()

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self.handler)
        signal.signal(signal.SIGINT, self.handler)


def run(settings: RunSettings, stats: CollectorStats,
        stream_factory: Callable[[RunSettings], Stream] = open_stream,
        install_signals: bool = True) -> ExitCode:
    """Run until a signal or a fatal error; log what was delivered and what was not."""
    buffer = EventBuffer(settings.max_buffer_events, settings.max_buffer_bytes, stats)
    publisher: Publisher | None = None
    if settings.output == "amqp":
        from .publisher import Publisher  # pika: only when publishing

        try:
            publisher = Publisher(settings.broker, buffer, stats,
                                  max_in_flight=settings.max_in_flight,
                                  batch_events=settings.batch_events,
                                  batch_bytes=settings.batch_bytes,
                                  credentials=settings.credentials,
                                  gap_records=settings.gap_records)
        except BrokerConfigError as exc:
            raise Error(str(exc), ExitCode.USAGE) from None

    def exit_now(signum: int) -> None:
        undelivered = publisher.outstanding() if publisher else 0
        log.warning("second %s: exiting now; %d event(s) not delivered",
                    signal.Signals(signum).name, undelivered)
        logging.shutdown()
        os._exit(ExitCode.INTERRUPTED if signum == signal.SIGINT else ExitCode.TERMINATED)

    stop = StopFlag(exit_now)
    stream = stream_factory(settings)
    # The reader counts what it hands us, by type: we never read the type back out.
    stats.reader_stats = stream.stats
    if install_signals:
        stop.install()
    if publisher:
        publisher.start()
    where = f" in network namespace {settings.netns}" if settings.netns else ""
    target = (f"RabbitMQ exchange {settings.broker.exchange!r} at "
              + ",".join(f"{h}:{p}" for h, p in settings.broker.hosts)
              if publisher else "standard output")
    log.info("listening for %s events%s, publishing to %s",
             ",".join(settings.types), where, target)
    reader_error = ""
    # Retried attempts are no lost events: they make no gap.
    kernel = None if settings.kernel_drops_are_retries else KernelLossWatch(stream.stats)
    try:
        try:
            if publisher:
                code = _read_into_buffer(stream, buffer, publisher, stop, stats, kernel)
            else:
                code = _read_to_stdout(stream, stop, stats)
        except OutputError as exc:
            reader_error = str(exc)
            code = ExitCode.ERROR
        except Exception as exc:  # noqa: BLE001 - reader failed: deliver what we have, say it
            reader_error = f"reading conntrack events failed: {exc}"
            code = ExitCode.ERROR
        # Events the reader already took from the kernel are ours to deliver or to report.
        _drain_reader(stream, buffer if publisher else None, stats)
        if publisher:
            _note_kernel_loss(kernel, buffer, stats)  # the reader's final count
    finally:
        reader_stats = _close(stream)
        stats.reader_stats = lambda: reader_stats
    code = _finish(code, publisher, buffer, stats, settings, reader_stats)
    if reader_error:
        raise Error(reader_error, ExitCode.ERROR)
    return code


def _read_into_buffer(stream: Stream, buffer: EventBuffer, publisher: Publisher,
                      stop: StopFlag, stats: CollectorStats, kernel: KernelLossWatch | None
                      ) -> ExitCode:
    poll_many, put_many, stopping = stream.poll_many, buffer.put_many, stop.event.is_set
    until_check = KERNEL_CHECK_EVENTS
    while not stopping():
        try:
            events = poll_many(POLL_TIMEOUT_S, READ_BATCH_EVENTS)
        except KeyboardInterrupt:  # a Ctrl-C that reached the reader before our handler
            stop.event.set()
            break
        if not events:
            put_many(events)  # the reader caught up: packing may go on
            _note_kernel_loss(kernel, buffer, stats)
            if publisher.fatal_error or not publisher.alive():
                return ExitCode.ERROR
            continue
        until_check -= len(events)
        if until_check <= 0:
            until_check = KERNEL_CHECK_EVENTS
            _note_kernel_loss(kernel, buffer, stats)
        put_many(events, reader_behind=len(events) == READ_BATCH_EVENTS)
        if publisher.fatal_error:
            return ExitCode.ERROR
    return ExitCode.OK


def _note_kernel_loss(kernel: KernelLossWatch | None, buffer: EventBuffer,
                      stats: CollectorStats) -> None:
    """What the kernel dropped since the last look: a gap in the stream, where we are now."""
    if kernel is None:
        return
    gap = kernel.check()
    if gap is not None:
        buffer.put_gap(gap)
        stats.kernel_dropped = kernel.dropped


def _read_to_stdout(stream: Stream, stop: StopFlag, stats: CollectorStats) -> ExitCode:
    out = sys.stdout.buffer
    try:
        while not stop.event.is_set():
            try:
                events = stream.poll_many(POLL_TIMEOUT_S, READ_BATCH_EVENTS)
            except KeyboardInterrupt:
                stop.event.set()
                break
            if events:
                try:  # only the writes: the reader's own errors (OSErrors too) are its own
                    _write_lines(out, events)
                except OSError as exc:
                    _output_failed(exc)
    except BrokenPipeError:  # `| head`: the reader of our output is gone, nothing to report
        stop.event.set()
    return ExitCode.OK


def _output_failed(exc: OSError) -> NoReturn:
    if isinstance(exc, BrokenPipeError):
        raise exc
    raise OutputError(f"cannot write events to standard output: {exc.strerror or exc}") from None


class OutputError(Exception):
    """--output stdout cannot be written: said as it is, not as a reader failure."""


def _write_lines(out: BinaryIO, events: list[bytes]) -> None:
    """Whole lines, one write per batch (so nothing waits in a buffer to be flushed), straight
    to the descriptor, each partial write continued: through the BufferedWriter, a big write to
    a full pipe interrupted by SIGTERM lost some lines (seen in test_kernel_loss)."""
    events.append(b"")  # the last line's newline
    data = memoryview(b"\n".join(events))
    fd = out.fileno()
    while data:
        data = data[os.write(fd, data):]


def _drain_reader(stream: Stream, buffer: EventBuffer | None, stats: CollectorStats) -> None:
    """Take the rest of the stream: the reader stops reading, takes what the kernel socket
    still holds (it leaves the event groups first, so that is finite), and ends; we take all it
    queued. What it still holds at close (only if we fail here) is counted as discarded (see
    _finish)."""
    with contextlib.suppress(Exception):  # a failed reader: take what it queued all the same
        stream.stop_reading()
    try:
        queued = int(stream.stats().get("queued", 0))
    except Exception:  # noqa: BLE001 - shutdown goes on and reports, whatever the reader says
        queued = 0
    left = queued + _native.DEFAULT_QUEUE_EVENTS  # a bound, should it still read
    while left > 0:
        try:
            events = stream.poll_many(0.0, min(left, READ_BATCH_EVENTS))
        except (KeyboardInterrupt, Exception):  # noqa: BLE001 - a failed reader has no more
            break
        if not events:
            break
        left -= len(events)
        if buffer is not None:
            buffer.put_many(events)
        else:
            try:
                _write_lines(sys.stdout.buffer, events)
            except (OSError, ValueError):  # `| head`, a full disk: nowhere to put them
                break


def _close(stream: Stream) -> dict[str, Any]:
    try:
        reader_stats = dict(stream.stats())
    except Exception:  # noqa: BLE001 - shutdown goes on and reports, whatever the reader says
        reader_stats = {}
    with contextlib.suppress(Exception):  # likewise
        stream.close()
    return reader_stats


def _finish(code: ExitCode, publisher: Publisher | None, buffer: EventBuffer,
            stats: CollectorStats, settings: RunSettings, reader_stats: dict[str, Any]) -> ExitCode:
    # Read by the reader thread but never handed to us: close() discards them. Rare (we took
    # all it had a moment before), but never silent.
    discarded = int(reader_stats.get("queued", 0) or 0)
    if publisher is not None:
        buffer.put_gap(gap_record(discarded, SHUTDOWN, now_ms(), now_ms()) if discarded
                       else None)  # and the gap of events the buffer refused last, if any
        if publisher.fatal_error:
            publisher.stop(0.0)
        else:
            log.info("stopping: waiting up to %.0f s for %d event(s) to be confirmed",
                     settings.shutdown_timeout_s, publisher.outstanding())
            publisher.stop(settings.shutdown_timeout_s)
        undelivered = publisher.outstanding()
        if undelivered:
            stats.drop(DropReason.FATAL if publisher.fatal_error else DropReason.SHUTDOWN,
                       undelivered)
        buffer.flush_drop_log()
    if discarded:
        stats.drop(DropReason.DISCARDED_AT_CLOSE, discarded)
    kernel_dropped = int(reader_stats.get("kernel_dropped", 0) or 0)
    stats.kernel_dropped = max(stats.kernel_dropped, kernel_dropped)
    summary = (f"received {stats.received + discarded} events"
               + (f", delivered {stats.confirmed}" if publisher else "")
               + f", not delivered {stats.dropped}")
    if stats.dropped_by_reason:
        summary += " (" + ", ".join(f"{k}: {v}" for k, v in stats.dropped_by_reason.items()) + ")"
    if kernel_dropped and not settings.reliable:
        summary += (f"; the kernel dropped {kernel_dropped} event(s) before we could read them "
                    "(socket buffer full)")
    elif kernel_dropped:
        summary += (f"; the kernel could not queue {kernel_dropped} event(s) at once (socket "
                    "buffer full; reliable mode: DESTROYs were sent again, "
                    + ("none lost)" if settings.kernel_drops_are_retries
                       else "NEW and UPDATE lost)"))
    if reader_stats.get("stop_cut_short"):
        summary += "; reading what the kernel socket held at stop took too long and was cut short"
    log.info("stopped: %s", summary)
    if publisher is not None and publisher.fatal_error:
        raise Error(publisher.fatal_error, ExitCode.ERROR)
    return code
