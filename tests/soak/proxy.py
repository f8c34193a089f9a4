"""A TCP proxy between the collector and the broker nodes, one listening port per node, that
injects faults on command: reset every connection, close new connections during the AMQP
handshake, stall (stop forwarding) and delay.

It runs an asyncio loop on a thread of its own; the soak's other threads call its methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import struct
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

CHUNK_BYTES = 65536


@dataclass(eq=False)  # hashed by identity, kept in a set
class Link:
    """One proxied connection: the collector's side and the node's side."""

    upstream_port: int
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    close_after_greeting: bool
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def abort(self, reset: bool) -> None:
        for writer in (self.client, self.server):
            if reset:  # SO_LINGER 0: close() sends a RST instead of a FIN
                with contextlib.suppress(OSError):
                    writer.get_extra_info("socket").setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                writer.close()
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    """`ports[i]` forwards to 127.0.0.1:`upstream_ports[i]`."""

    def __init__(self, upstream_ports: list[int]) -> None:
        self.upstream_ports = list(upstream_ports)
        self.ports: list[int] = []
        self.accepted = 0
        self.handshakes_closed = 0
        self._links: set[Link] = set()
        self._handshake_closes_left = 0
        self._delay_s = 0.0
        self._loop = asyncio.new_event_loop()
        self._forwarding: asyncio.Event | None = None  # cleared while stalled
        self._servers: list[asyncio.base_events.Server] = []
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy",
                                        daemon=True)

    def __enter__(self) -> FaultProxy:  # noqa: PYI034
        self._thread.start()
        self._call(self._listen())
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    # ---- faults, called from any thread ---------------------------------------------------------

    def connected_upstreams(self) -> list[int]:
        """Node ports that have a proxied connection open now."""
        return sorted({link.upstream_port for link in list(self._links)})

    def reset_all(self) -> int:
        """Reset (RST) both sides of every open connection; how many there were."""
        return self._call(self._abort_all(reset=True))

    def close_next_handshakes(self, count: int) -> None:
        """The next `count` new connections get the server's first bytes (Connection.Start),
        then both sides are closed."""
        self._handshake_closes_left = count

    def handshake_closes_pending(self) -> int:
        return self._handshake_closes_left

    def stall(self) -> None:
        """Stop forwarding, in both directions, on every connection (bytes are held)."""
        self._loop.call_soon_threadsafe(self._set_forwarding, False)

    def resume(self) -> None:
        self._loop.call_soon_threadsafe(self._set_forwarding, True)

    def delay(self, seconds: float) -> None:
        """Hold each chunk `seconds` before forwarding it (0: no delay)."""
        self._delay_s = seconds

    # ---- the loop's side ------------------------------------------------------------------------

    def _call(self, coroutine: Coroutine[Any, Any, int]) -> int:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    def _set_forwarding(self, on: bool) -> None:
        assert self._forwarding is not None
        if on:
            self._forwarding.set()
        else:
            self._forwarding.clear()

    async def _listen(self) -> int:
        self._forwarding = asyncio.Event()
        self._forwarding.set()
        for upstream_port in self.upstream_ports:
            server = await asyncio.start_server(
                functools.partial(self._accept, upstream_port=upstream_port), "127.0.0.1", 0)
            self._servers.append(server)
            self.ports.append(server.sockets[0].getsockname()[1])
        return 0

    async def _shutdown(self) -> int:
        for server in self._servers:
            server.close()
        await self._abort_all(reset=True)
        return 0

    async def _abort_all(self, reset: bool) -> int:
        links = list(self._links)
        for link in links:
            link.abort(reset)
        self._links.difference_update(links)
        return len(links)

    async def _accept(self, client_reader: asyncio.StreamReader,
                      client_writer: asyncio.StreamWriter, upstream_port: int) -> None:
        self.accepted += 1
        try:
            server_reader, server_writer = await asyncio.open_connection(
                "127.0.0.1", upstream_port)
        except OSError:  # the node is down: the collector sees its connection reset
            with contextlib.suppress(OSError):
                client_writer.get_extra_info("socket").setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client_writer.transport.abort()
            return
        close_after_greeting = self._handshake_closes_left > 0
        if close_after_greeting:
            self._handshake_closes_left -= 1
        link = Link(upstream_port, client_writer, server_writer, close_after_greeting)
        self._links.add(link)
        link.tasks = [
            asyncio.ensure_future(self._pump(link, client_reader, server_writer, False)),
            asyncio.ensure_future(self._pump(link, server_reader, client_writer, True)),
        ]

    async def _pump(self, link: Link, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter, from_server: bool) -> None:
        """Forward one direction: each chunk is due `delay` after it was read, and waits while
        the proxy is stalled. A queue between reading and writing keeps a delay a latency, not
        a throughput limit."""
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read() -> None:
            try:
                while data := await reader.read(CHUNK_BYTES):
                    await chunks.put((time.monotonic() + self._delay_s, data))
            except OSError:
                pass  # reset by the peer: the end of this direction, as an EOF is
            finally:
                chunks.put_nowait((0.0, b""))

        reading = asyncio.ensure_future(read())
        assert self._forwarding is not None
        try:
            while True:
                due, data = await chunks.get()
                if not data:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                await self._forwarding.wait()
                writer.write(data)
                await writer.drain()
                if from_server and link.close_after_greeting:
                    self.handshakes_closed += 1
                    break
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            reading.cancel()
            if link in self._links:
                self._links.discard(link)
                link.abort(reset=False)
