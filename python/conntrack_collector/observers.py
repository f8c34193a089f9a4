"""The observers of a run: the metrics server (`--metrics-addr`), the progress display (`-v`)
and systemd's readiness and watchdog notifications.

The metrics port is bound before anything starts (a port in use fails at once); readiness, the
watchdog and the progress display start once the stream exists (subscribed), since they read
its `stats()` too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Protocol, TypeVar

from .errors import Error, ExitCode
from .sd_notify import Watchdog, notify, watchdog_interval_s
from .stats import CollectorStats

if TYPE_CHECKING:  # imported when wanted: prometheus_client and rich cost start-up time
    from .metrics import MetricsServer
    from .progress import Progress

log = logging.getLogger(__name__)


class HasStats(Protocol):
    def stats(self) -> dict[str, Any]: ...


StreamT = TypeVar("StreamT", bound=HasStats)
SettingsT = TypeVar("SettingsT")




class Observers:
    """The metrics server and the progress display of one run."""

    def __init__(self, stats: CollectorStats, *, metrics_addr: str | None, verbose: bool,
                 events_to_stdout: bool) -> None:
        self._stats = stats
        self._stream: HasStats | None = None
        self._verbose = verbose
        self._events_to_stdout = events_to_stdout
        self._progress: Progress | None = None
        self._metrics: MetricsServer | None = None
        self._watchdog: Watchdog | None = None
        if metrics_addr:
            from .metrics import serve_metrics

            try:
                self._metrics = serve_metrics(metrics_addr, stats, self._stream_stats)
            except OSError as err:
                raise Error(f"--metrics-addr {metrics_addr}: {err.strerror or err}",
                            ExitCode.ERROR) from None
            host, port = self._metrics.address
            log.info("serving metrics at http://%s:%d/metrics",
                     f"[{host}]" if ":" in host else host, port)

    def watch(self, open_stream: Callable[[SettingsT], StreamT]) -> Callable[[SettingsT], StreamT]:
        """Wraps the stream factory: once the stream is open (subscribed), tells systemd we are
        ready, feeds its watchdog, and starts the progress display."""

        def opened(settings: SettingsT) -> StreamT:
            stream = open_stream(settings)
            self._stream = stream
            notify("READY=1\nSTATUS=subscribed to conntrack events")
            interval_s = watchdog_interval_s()
            if interval_s is not None:
                self._watchdog = Watchdog(self._stream_stats, interval_s, self._stats)
                self._watchdog.start()
            if self._verbose:
                from .progress import Progress, live_display_possible

                self._progress = Progress(
                    self._stats, self._stream_stats,
                    live=live_display_possible(self._events_to_stdout))
                self._progress.start()
            return stream

        return opened

    def _stream_stats(self) -> Mapping[str, object]:
        return self._stream.stats() if self._stream is not None else {}

    def close(self) -> None:
        notify("STOPPING=1")
        if self._watchdog is not None:
            self._watchdog.stop()
            self._watchdog = None
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._metrics is not None:
            self._metrics.close()
            self._metrics = None


@contextmanager
def observing(stats: CollectorStats, *, metrics_addr: str | None, verbose: bool,
              events_to_stdout: bool) -> Iterator[Observers]:
    observers = Observers(stats, metrics_addr=metrics_addr, verbose=verbose,
                          events_to_stdout=events_to_stdout)
    try:
        yield observers
    finally:
        observers.close()
