"""What every test module shares: the root-only marker's skip, the namespace fixture, and an
exchange with a queue bound on the shared broker."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

import pytest
from netns_util import conntrack_netns


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`@pytest.mark.root` tests need root (CAP_NET_ADMIN, network namespaces): without it
    they are skipped, each saying why, rather than failing."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (CAP_NET_ADMIN, network namespaces)")
    for item in items:
        if item.get_closest_marker("root"):
            item.add_marker(skip)


@pytest.fixture
def netns(request: pytest.FixtureRequest) -> Iterator[str]:
    """A throw-away network namespace with conntrack on (see netns_util.conntrack_netns),
    named after the test."""
    prefix = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().replace("test_", "", 1))[:10]
    with conntrack_netns(prefix.strip("-") or "test") as name:
        yield name


@pytest.fixture
def exchange_and_queue() -> Iterator[tuple[str, str]]:
    """A new exchange and a queue bound to it on the shared RabbitMQ (127.0.0.1:5672), deleted
    afterwards; the test marks itself rabbitmq.needs_broker."""
    from rabbitmq import declare, delete, unique_name  # pika: only for the tests that publish

    exchange, queue = unique_name("ex"), unique_name("q")
    declare(exchange, queue)
    yield exchange, queue
    delete(exchange, queue)
