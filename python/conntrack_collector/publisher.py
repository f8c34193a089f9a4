"""Publishing to RabbitMQ with publisher confirms, on a thread of its own: the loop.

The reader loop only ever calls `EventBuffer.put`; this thread takes events from that buffer
and keeps up to `max_in_flight` messages published but not yet confirmed (pipelined: never one
round trip per message). A message is done only when the broker acks it. A nacked or returned
message, and every message still unconfirmed when a connection ends, is published again with
the same `message_id` (at least once; consumers drop duplicates by message_id). What each
message is waiting for is the ledger's (ledger.py); one connection is a session (session.py);
this file is the loop around them: the host list, backoff, what is fatal, and stop.

What is fatal: only an explicit refusal (credentials refused, a virtual host denied, a broker
certificate that fails verification, the exchange refused) and only before the collector has
ever been ready to publish: that is a configuration that never worked. Once it has worked, a
refusal (credentials rotated, a virtual host being restored) is logged as an error and retried
with backoff, events held. Every other failure is transient and every host of the list is
tried, in order, in each round.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Literal

from .broker import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_BATCH_EVENTS,
    DEFAULT_MAX_IN_FLIGHT,
    BrokerSettings,
    Refusal,
    connect_refusal,
    connection_parameters,
    tls_context,
)
from .buffer import EventBuffer
from .credentials import CredentialsProvider, StaticCredentials
from .ledger import Ledger
from .session import (
    BATCH_TYPE,
    BULK_WRITE_METHOD,
    Session,
    SessionOptions,
    SessionResult,
    bulk_write_available,
    log_result,
)
from .stats import CollectorStats

__all__ = ["BATCH_TYPE", "DEFAULT_BATCH_BYTES", "Publisher"]

log = logging.getLogger("conntrack_collector")

# After a round in which no host got ready, wait this long, doubling up to the ceiling.
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 10.0
# A connection lost sooner than this after it got ready is retried with backoff, not at once.
STABLE_CONNECTION_S = 5.0
# A message returned unroutable (no queue bound yet) is republished after this pause: the
# documented 5 s, so events published before a consumer's queue exists are not discarded.
RETURN_PAUSE_S = 5.0
# When the broker names its max_message_size, batches stay this much under it.
MESSAGE_SIZE_MARGIN = 1024


class Publisher:
    def __init__(
        self,
        settings: BrokerSettings,
        buffer: EventBuffer,
        stats: CollectorStats,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        batch_events: int = DEFAULT_BATCH_EVENTS,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        reconnect_min_s: float = RECONNECT_MIN_S,
        reconnect_max_s: float = RECONNECT_MAX_S,
        credentials: CredentialsProvider | None = None,
        gap_records: bool = False,
    ) -> None:
        self.settings = settings
        self._buffer = buffer
        self._stats = stats
        self.ledger = Ledger()
        stats.delivery = self.ledger.counts  # the stats read the ledger's counts
        self._credentials = credentials or StaticCredentials(settings)
        self._tls = tls_context(settings)  # reads every file now: a missing one fails at start
        bulk_write = bulk_write_available()
        if not bulk_write:
            log.warning("this pika has no Connection.%s: falling back to basic_publish "
                        "(slower)", BULK_WRITE_METHOD)
        self._options = SessionOptions(
            exchange=settings.exchange, router_id=settings.router_id,
            max_in_flight=max_in_flight, batch_events=batch_events, batch_bytes=batch_bytes,
            bulk_write=bulk_write, return_pause_s=RETURN_PAUSE_S, gap_records=gap_records)
        self._reconnect_min_s = reconnect_min_s
        self._reconnect_max_s = reconnect_max_s
        self._thread = threading.Thread(target=self._run, name="amqp-publisher", daemon=True)
        self._session: Session | None = None  # the current one, for wake()
        self._ever_ready = False

        # Shared with the controlling thread.
        self._stopping = threading.Event()  # flush, then close
        self._closed = threading.Event()  # give up now
        self._wakeup = threading.Event()  # cuts a reconnect backoff short
        self.fatal_error: str | None = None

    # ---- the controlling thread's interface -------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def outstanding(self) -> int:
        """Events accepted but not yet confirmed: buffered, waiting to be republished, in flight."""
        return self._buffer.events_held + self.ledger.outstanding_events

    def stop(self, timeout_s: float) -> bool:
        """Publish what is buffered, wait for its confirms for at most timeout_s, then close.
        True when everything accepted was confirmed."""
        self._stopping.set()
        self._wake()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._closed.set()
            self._wake()
            self._thread.join(5.0)
        return self.outstanding() == 0

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _wake(self) -> None:
        self._wakeup.set()
        session = self._session
        if session is not None:
            session.wake()

    # ---- the publisher thread: the loop -----------------------------------------------------

    def _run(self) -> None:
        delay_s = self._reconnect_min_s
        try:
            while not self._closed.is_set() and not self._done():
                ready, refusals = self._round()
                step = after_round(ready, refusals, self._ever_ready)
                if step == "again":
                    delay_s = self._reconnect_min_s
                    continue  # lost a connection that worked: try again at once
                if self._done() or self._closed.is_set():
                    break
                if step == "fatal":
                    self.fatal_error = refusals[0].reason  # a configuration that never worked
                    return
                if refusals and ready is None:
                    log.error("%s; it worked before (credentials rotated? a virtual host "
                              "restored?): retrying in %.1f s, %d events held",
                              "; ".join(r.reason for r in refusals), delay_s, self.outstanding())
                else:
                    # No host answered, or the broker keeps closing us right after we
                    # connect: either way, back off rather than spin.
                    why = ("the connection did not last" if ready is not None
                           else "no RabbitMQ host answered")
                    log.warning("%s; retrying in %.1f s (%d events waiting)",
                                why, delay_s, self.outstanding())
                self._wakeup.clear()
                self._wakeup.wait(delay_s)
                delay_s = min(delay_s * 2, self._reconnect_max_s)
        except Exception as exc:  # a bug: the main loop reports it in one line and exits
            log.debug("publisher failed", exc_info=True)
            self.fatal_error = f"publisher failed: {exc!r}"
        finally:
            self._stats.connection_state = "disconnected"

    def _round(self) -> tuple[SessionResult | None, list[Refusal]]:
        """Each host once, in order, until one gets ready to publish: its result (when that
        connection ended), and the refusals of the hosts before it."""
        refusals: list[Refusal] = []
        for host, port in self.settings.hosts:
            if self._closed.is_set() or self._done():
                break
            result = self._session_with(host, port)
            if result.ready_for_s is not None:
                self._ever_ready = True
                return result, refusals
            if result.refusal is not None:
                refused_with = self._credentials.current()
                if result.refusal.credentials:
                    self._credentials.refused()
                # A provider that now has other credentials (rotated in Vault) deserves an
                # attempt with them: that refusal says nothing about the configuration.
                if not (result.refusal.credentials
                        and self._credentials.current() != refused_with):
                    refusals.append(result.refusal)
                if (host, port) != self.settings.hosts[-1]:
                    log.warning("%s; trying the next host", result.refusal.reason)
        return None, refusals

    def _session_with(self, host: str, port: int) -> SessionResult:
        user, password = self._credentials.current()
        parameters = connection_parameters(self.settings, self._tls, host, port, user, password)
        session = Session(
            parameters, self._options, self.ledger, self._buffer, self._stats,
            stopping=self._stopping.is_set, closing=self._closed.is_set,
            refusal_of=lambda exc: connect_refusal(exc, host, port, self.settings))
        self._session = session
        try:
            result = session.run()
        finally:
            self._session = None
        if result.max_message_bytes is not None:
            self._fit_messages_under(result.max_message_bytes)
        log_result(result, self.outstanding(), self._done())
        return result

    def _fit_messages_under(self, max_message_bytes: int) -> None:
        """The broker refused a message over max_message_bytes: batches from now on stay under
        it, and those waiting to be published again are split to fit."""
        cap = max(1024, max_message_bytes - MESSAGE_SIZE_MARGIN)
        if cap < self._options.batch_bytes:
            self._options = dataclasses.replace(self._options, batch_bytes=cap)
        split = self.ledger.split_awaiting(self._options.batch_bytes)
        log.warning("batches now hold at most %d bytes (%d waiting message(s) split)",
                    self._options.batch_bytes, split)

    def _done(self) -> bool:
        return (self._stopping.is_set() and self.outstanding() == 0
                and self.ledger.outstanding_messages == 0)  # gap records too


def after_round(ready: SessionResult | None, refusals: list[Refusal], ever_ready: bool
                ) -> Literal["again", "backoff", "fatal"]:
    """What the loop does after a round over the hosts. `ready`: the session that got ready
    (and has ended since), if any; `refusals`: the explicit refusals of the hosts tried.

    - "again": a connection that worked for STABLE_CONNECTION_S or more was lost: reconnect
      at once;
    - "fatal": no host got ready, some refused, and none ever worked: a configuration that
      never worked (wrong password, wrong CA, an exchange of another type);
    - "backoff": anything else, refusals included once it has worked: wait, then retry.
    """
    if ready is not None and ready.ready_for_s is not None \
            and ready.ready_for_s >= STABLE_CONNECTION_S:
        return "again"
    if ready is None and refusals and not ever_ready:
        return "fatal"
    return "backoff"
