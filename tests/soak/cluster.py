"""A RabbitMQ cluster of private nodes on this machine: own node names, ports, data folders and
an Erlang cookie of its own (so no other broker here can join or be joined)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import string
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
from rabbitmq import PrivateNode


class Cluster:
    def __init__(self, size: int = 3) -> None:
        tag = uuid.uuid4().hex[:6]
        self.home = Path(tempfile.mkdtemp(prefix="ctc-soak-cookie-"))
        self.nodes = [
            PrivateNode(folder=Path(tempfile.mkdtemp(prefix=f"ctc-soak-node{n}-")),
                        name=f"ctc-soak-{tag}-{n}@localhost", home=str(self.home))
            for n in range(1, size + 1)
        ]

    def __enter__(self) -> Cluster:  # noqa: PYI034
        try:
            self._write_cookie()
            first, *others = self.nodes
            first.start()
            for node in others:
                node.start()
                node.ctl("stop_app")
                node.ctl("join_cluster", first.name)
                node.ctl("start_app")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _write_cookie(self) -> None:
        cookie = self.home / ".erlang.cookie"
        cookie.write_text("".join(secrets.choice(string.ascii_uppercase) for _ in range(32)))
        cookie.chmod(0o400)
        for path in (self.home, cookie):
            shutil.chown(path, "rabbitmq", "rabbitmq")

    def close(self) -> None:
        """Every node stopped (killed if it will not stop), every folder removed."""
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.stop()
            node.kill()  # a no-op when stop worked; the VM of a stuck node otherwise
            shutil.rmtree(node.folder, ignore_errors=True)
        shutil.rmtree(self.home, ignore_errors=True)

    def node_on(self, port: int) -> PrivateNode:
        return next(node for node in self.nodes if node.port == port)

    def declare_quorum_queue(self, exchange: str, queue: str) -> None:
        """The collector's exchange (as it declares it) bound to a quorum queue on all nodes."""
        with channel_on(self.nodes[0].port) as channel:
            channel.exchange_declare(exchange, "direct", durable=True)
            channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
            channel.queue_bind(queue, exchange, "")

    def serving_node(self) -> PrivateNode:
        """A node that accepts connections now (at the end all should)."""
        for node in self.nodes:
            try:
                with channel_on(node.port):
                    return node
            except (pika.exceptions.AMQPError, OSError):
                continue
        raise RuntimeError("no node of the cluster accepts connections")

    def wait_until_serving(self, node: PrivateNode, timeout_s: float = 60.0) -> None:
        """Until `node` accepts AMQP connections (start() returns a moment before)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with channel_on(node.port):
                    return
            except (pika.exceptions.AMQPError, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


@contextlib.contextmanager
def channel_on(port: int) -> Any:
    connection = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", port, connection_attempts=1, socket_timeout=5, blocked_connection_timeout=30))
    try:
        yield connection.channel()
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            connection.close()


def beam_alive(node: PrivateNode) -> bool:
    try:
        os.kill(int((node.folder / "rabbitmq.pid").read_text().strip()), 0)
        return True
    except (OSError, ValueError):
        return False


def consume_all(port: int, queue: str, idle_s: float = 3.0) -> list[tuple[str, bytes]]:
    """(message_id, body) of every message of `queue`, acked, until it is empty."""
    got: list[tuple[str, bytes]] = []
    with channel_on(port) as channel:
        channel.basic_qos(prefetch_count=2000)
        last_tag = acked_tag = 0
        for method, properties, body in channel.consume(queue, inactivity_timeout=idle_s):
            if method is not None:
                got.append((properties.message_id or "", body))
                last_tag = method.delivery_tag
                if last_tag - acked_tag < 500:
                    continue
            if last_tag > acked_tag:
                channel.basic_ack(last_tag, multiple=True)
                acked_tag = last_tag
            if method is None and channel.queue_declare(
                    queue, passive=True).method.message_count == 0:
                break
        channel.cancel()
    return got
