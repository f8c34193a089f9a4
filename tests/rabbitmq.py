"""RabbitMQ helpers for the tests: queues on the shared broker, and private nodes a test may
stop, restart or give a TLS listener without disturbing anyone else's broker."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

SHARED_HOST = "127.0.0.1"
SHARED_PORT = 5672


def broker_up(host: str = SHARED_HOST, port: int = SHARED_PORT) -> bool:
    try:
        pika.BlockingConnection(pika.ConnectionParameters(
            host, port, connection_attempts=1, socket_timeout=2)).close()
        return True
    except (pika.exceptions.AMQPError, OSError):
        return False


needs_broker = pytest.mark.skipif(not broker_up(), reason="no RabbitMQ on 127.0.0.1:5672")
needs_rabbitmq_server = pytest.mark.skipif(
    shutil.which("rabbitmq-server") is None, reason="rabbitmq-server is not installed")


def unique_name(prefix: str) -> str:
    return f"ctc-test-{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Received:
    properties: Any  # pika.BasicProperties
    body: bytes


def declare(exchange: str, queue: str, *, port: int = SHARED_PORT, durable: bool = False,
            vhost: str = "/") -> None:
    """The exchange as the collector declares it, and a queue bound to it with key ""."""
    with _channel(port, vhost=vhost) as channel:
        channel.exchange_declare(exchange, "direct", durable=True)
        channel.queue_declare(queue, durable=durable, auto_delete=False)
        channel.queue_bind(queue, exchange, "")


def delete(exchange: str, queue: str, *, port: int = SHARED_PORT) -> None:
    try:
        with _channel(port) as channel:
            channel.queue_delete(queue)
            channel.exchange_delete(exchange)
    except (pika.exceptions.AMQPError, OSError):
        pass  # the broker is gone already: nothing to clean


def consume(queue: str, expected: int, *, port: int = SHARED_PORT, timeout_s: float = 30.0,
            idle_s: float = 2.0, vhost: str = "/") -> list[Received]:
    """Messages of the queue, acked, until `expected` arrived (then `idle_s` more for
    duplicates or extras), or `timeout_s` passed."""
    got: list[Received] = []
    deadline = time.monotonic() + timeout_s
    with _channel(port, vhost=vhost) as channel:
        idle_since: float | None = None
        while time.monotonic() < deadline:
            method, properties, body = channel.basic_get(queue, auto_ack=True)
            if method is None:
                if len(got) >= expected:
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since >= idle_s:
                        break
                time.sleep(0.05)
                continue
            idle_since = None
            got.append(Received(properties, body))
    return got


@contextmanager
def _channel(port: int, host: str = SHARED_HOST, vhost: str = "/") -> Iterator[Any]:
    connection = pika.BlockingConnection(pika.ConnectionParameters(host, port, vhost))
    try:
        yield connection.channel()
    finally:
        with contextlib.suppress(pika.exceptions.AMQPError, OSError):
            connection.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class PrivateNode:
    """A RabbitMQ node of our own: own name, ports, data folder; `stop()`/`start()` at will."""

    folder: Path
    port: int = field(default_factory=free_port)
    tls_port: int | None = None
    tls_files: dict[str, Path] | None = None  # cacert, cert, key
    management_port: int | None = None  # the management plugin's HTTP API, when set
    extra_config: tuple[str, ...] = ()  # more rabbitmq.conf lines, e.g. "max_message_size = N"
    name: str = field(default_factory=lambda: f"ctc-test-{uuid.uuid4().hex[:8]}@localhost")
    # Where the Erlang cookie is: nodes of one cluster share theirs, apart from everyone's.
    home: str = "/var/lib/rabbitmq"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(self.folder / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.folder / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.folder / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.folder / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.folder / "rabbitmq.pid"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.folder / "advanced.config"),
        })
        return env

    def write_config(self) -> None:
        lines = [f"listeners.tcp.default = {self.port}", "loopback_users = none",
                 *self.extra_config]
        if self.tls_port and self.tls_files:
            lines += [
                f"listeners.ssl.default = {self.tls_port}",
                f"ssl_options.cacertfile = {self.tls_files['cacert']}",
                f"ssl_options.certfile = {self.tls_files['cert']}",
                f"ssl_options.keyfile = {self.tls_files['key']}",
                "ssl_options.verify = verify_peer",
                "ssl_options.fail_if_no_peer_cert = false",
            ]
        plugins = ""
        if self.management_port:  # on a port of its own: no clash with the shared broker's
            lines += [f"management.tcp.port = {self.management_port}",
                      "management.tcp.ip = 127.0.0.1"]
            plugins = "rabbitmq_management"
        (self.folder / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        (self.folder / "enabled_plugins").write_text(f"[{plugins}].\n")
        (self.folder / "advanced.config").write_text("[].\n")

    def start(self) -> None:
        self.write_config()
        shutil.chown(self.folder, "rabbitmq", "rabbitmq")
        self._run("rabbitmq-server", "-detached")
        # `wait PIDFILE`, not await_startup: the node is not yet registered when -detached returns.
        pid_file = str(self.folder / "rabbitmq.pid")
        self._run("rabbitmqctl", "-n", self.name, "-q", "wait", "--timeout", "120", pid_file)

    def stop(self) -> None:
        # With the pid file, stop returns once the Erlang VM has exited and its ports are free.
        self._run("rabbitmqctl", "-n", self.name, "-q", "stop", str(self.folder / "rabbitmq.pid"),
                  check=False)

    def kill(self) -> None:
        """SIGKILL the node's Erlang VM: no goodbye to its peers or clients."""
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((self.folder / "rabbitmq.pid").read_text().strip()), signal.SIGKILL)

    def ctl(self, *args: str) -> None:
        """`rabbitmqctl -n NODE ARGS`; raises when it fails."""
        self._run("rabbitmqctl", "-n", self.name, "-q", *args)

    def _run(self, script: str, *args: str, check: bool = True) -> None:
        # As the rabbitmq user, with its Erlang cookie, bypassing Debian's wrapper (which would
        # write into the shared broker's startup log).
        env = self.env()
        env["HOME"] = self.home
        done = subprocess.run(
            ["setpriv", "--reuid=rabbitmq", "--regid=rabbitmq", "--init-groups",
             f"/usr/lib/rabbitmq/bin/{script}", *args],
            env=env, cwd="/var/lib/rabbitmq", capture_output=True, text=True, timeout=180,
            check=False)
        if check and done.returncode != 0:
            raise RuntimeError(f"{script} {' '.join(args)}: {done.stdout} {done.stderr}")


@contextmanager
def private_node(**kwargs: Any) -> Iterator[PrivateNode]:
    folder = Path(tempfile.mkdtemp(prefix="ctc-rabbit-"))
    node = PrivateNode(folder=folder, **kwargs)
    node.start()
    try:
        yield node
    finally:
        node.stop()
        shutil.rmtree(folder, ignore_errors=True)


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for localhost/127.0.0.1, a client certificate, and an
    unrelated CA (the wrong one), made with openssl."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    for ca in ("ca", "wrong-ca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", f"/CN=ctc test {ca}", "-keyout", f"{ca}.key", "-out", f"{ca}.pem")
    (folder / "server.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for who, ext in (("server", ["-extfile", "server.ext"]), ("client", [])):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={who}",
                "-keyout", f"{who}.key", "-out", f"{who}.csr")
        openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-out", f"{who}.pem", *ext)
    for path in folder.iterdir():
        path.chmod(0o644)  # the broker runs as the rabbitmq user
    folder.chmod(0o755)
    return {name: folder / f"{name}" for name in (
        "ca.pem", "wrong-ca.pem", "server.pem", "server.key", "client.pem", "client.key")}
