"""How to reach RabbitMQ: the host list, credentials, TLS, and what a failure to connect means."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import pika  # type: ignore[import-untyped]
import pika.exceptions  # type: ignore[import-untyped]


class BrokerConfigError(Exception):
    """A broker setting that can never work (bad host list, unreadable certificate)."""


@dataclass(frozen=True)
class BrokerSettings:
    hosts: tuple[tuple[str, int], ...]  # tried in this order; the first that answers wins
    vhost: str
    user: str
    password: str
    exchange: str
    router_id: str
    ca: str | None = None
    crt: str | None = None
    key: str | None = None
    connect_timeout_s: float = 5.0
    heartbeat_s: int = 30

    def __repr__(self) -> str:  # never show the password, even in a debugger or traceback
        return f"BrokerSettings(hosts={self.hosts!r}, vhost={self.vhost!r}, user={self.user!r})"


def parse_hosts(text: str, default_port: int) -> tuple[tuple[str, int], ...]:
    """`a,b:5673,[::1]:5672` -> ((a, default_port), (b, 5673), (::1, 5672))."""
    hosts = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        host, port = item, default_port
        if item.startswith("["):  # an IPv6 literal, maybe with a port
            end = item.find("]")
            if end < 0:
                raise BrokerConfigError(f"bad host {item!r}: missing ']'")
            host, rest = item[1:end], item[end + 1:]
            if rest:
                if not rest.startswith(":"):
                    raise BrokerConfigError(f"bad host {item!r}")
                port = _port(rest[1:], item)
        elif item.count(":") == 1:
            host, port_text = item.split(":")
            port = _port(port_text, item)
        if not host:
            raise BrokerConfigError(f"bad host {item!r}")
        hosts.append((host, port))
    if not hosts:
        raise BrokerConfigError("no RabbitMQ host given")
    return tuple(hosts)


def _port(text: str, item: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise BrokerConfigError(f"bad port in host {item!r}")
    return int(text)


def tls_context(settings: BrokerSettings) -> ssl.SSLContext | None:
    """The TLS context when a CA or a client certificate is configured, else None.
    Every file is read now, so a missing one is reported at start, by name."""
    if not (settings.ca or settings.crt or settings.key):
        return None
    if settings.key and not settings.crt:
        raise BrokerConfigError("--amqp-key needs --amqp-crt (the client certificate)")
    _check_readable(settings.ca, "CA certificate")
    _check_readable(settings.crt, "client certificate")
    _check_readable(settings.key, "client key")
    try:
        # No CA given (only a client certificate): the system's trust store verifies the broker.
        context = ssl.create_default_context(cafile=settings.ca)
    except ssl.SSLError as exc:
        raise BrokerConfigError(f"CA certificate {settings.ca}: not a valid PEM file ({exc})")
    if settings.crt:
        try:
            context.load_cert_chain(settings.crt, settings.key)
        except ssl.SSLError as exc:
            raise BrokerConfigError(
                f"client certificate {settings.crt} / key {settings.key or settings.crt}: "
                f"not a valid PEM pair ({exc})"
            )
    return context


def _check_readable(path: str | None, what: str) -> None:
    if path is None:
        return
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise BrokerConfigError(f"cannot read {what} {path}: {exc.strerror or exc}")


class Credentials(Protocol):
    """Where the user and password of each connection attempt come from (see vault.py)."""

    def current(self) -> tuple[str, str]: ...

    def refused(self) -> None:
        """The broker refused current(): have others ready for the next attempt."""


def connection_parameters(
    settings: BrokerSettings, context: ssl.SSLContext | None,
    user_password: tuple[str, str] | None = None,
) -> list[pika.ConnectionParameters]:
    """One parameter set per host, in the configured order; the settings' user and password
    unless others are given (those of this attempt)."""
    user, password = user_password or (settings.user, settings.password)
    credentials = pika.PlainCredentials(user, password)
    return [
        pika.ConnectionParameters(
            host=host,
            port=port,
            virtual_host=settings.vhost,
            credentials=credentials,
            ssl_options=pika.SSLOptions(context, server_hostname=host) if context else None,
            connection_attempts=1,  # our own loop retries, over the whole host list
            socket_timeout=settings.connect_timeout_s,
            stack_timeout=settings.connect_timeout_s * 2,
            heartbeat=settings.heartbeat_s,
            client_properties={
                "connection_name": f"conntrack-event-collector {settings.router_id}"},
        )
        for host, port in settings.hosts
    ]


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """exc and everything pika wrapped inside it (args, .exceptions, .exception, __cause__)."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop()
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        todo.extend(item.args)
        todo.extend(getattr(item, "exceptions", None) or ())
        todo.append(getattr(item, "exception", None))
        todo.extend((item.__cause__, item.__context__))


def credentials_refused(exc: BaseException) -> bool:
    return any(isinstance(cause, (pika.exceptions.ProbableAuthenticationError,
                                  pika.exceptions.AuthenticationError))
               for cause in _causes(exc))


def fatal_connect_error(exc: BaseException, host: str, port: int, settings: BrokerSettings,
                        user: str | None = None) -> str | None:
    """A one-line reason when the broker's answer means retrying can never help
    (credentials, vhost access, TLS verification); None for transient failures."""
    where = f"RabbitMQ at {host}:{port}"
    if credentials_refused(exc):
        return f"{where} refused the credentials of user {user or settings.user!r}"
    for cause in _causes(exc):
        if isinstance(cause, pika.exceptions.ProbableAccessDeniedError):
            return f"{where} denied access to virtual host {settings.vhost!r}: {_first_arg(cause)}"
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (f"TLS: the certificate of {where} failed verification against "
                    f"{settings.ca or 'the system CAs'}: {cause.verify_message}")
        if isinstance(cause, ssl.SSLError):
            return f"TLS with {where} failed: {cause.reason or cause}"
    return None


def _first_arg(exc: BaseException) -> str:
    return str(exc.args[0]) if exc.args else str(exc)


def describe(exc: BaseException) -> str:
    """A short human reason for a transient failure (the innermost cause)."""
    causes = list(_causes(exc))
    for cause in reversed(causes):
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
    return str(causes[-1]) if causes else str(exc)
