"""How to reach RabbitMQ: the host list, credentials, TLS, and what a failure to connect means."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pika is imported when publishing: it costs start-up time
    import ssl  # likewise (with OpenSSL, about 5 MiB of resident memory)

    import pika  # type: ignore[import-untyped]


# The publishing defaults, here (not in publisher.py) so that the command's flags can show them
# without importing pika.
# Messages published and not yet confirmed (--max-in-flight).
DEFAULT_MAX_IN_FLIGHT = 1000
# Events per message (--batch-events): one, as the reference.
DEFAULT_BATCH_EVENTS = 1
# A batch's body at most (--batch-bytes): well under RabbitMQ 4's max_message_size (16 MiB).
DEFAULT_BATCH_BYTES = 4 << 20
# Per host, for the TCP, TLS and AMQP handshakes (--connect-timeout).
DEFAULT_CONNECT_TIMEOUT_S = 5.0


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
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
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
        if not _resolvable(host, bracketed=item.startswith("[")):
            raise BrokerConfigError(f"bad host {item!r}")
        hosts.append((host, port))
    if not hosts:
        raise BrokerConfigError("no RabbitMQ host given")
    return tuple(hosts)


def _resolvable(host: str, bracketed: bool) -> bool:
    """Could this name ever be looked up? An IPv6 literal ([..] or bare, with colons), an IPv4
    one, or a DNS name that IDNA encodes (no empty label, none over 63 bytes, no spaces), as
    getaddrinfo will need it. A name that fails this fails on every retry."""
    if bracketed or ":" in host:
        try:
            return ipaddress.ip_address(host).version == 6
        except ValueError:
            return False
    if not host or not all(char.isprintable() and not char.isspace() for char in host):
        return False
    if host.isascii():  # the codec's rule for ASCII, without the unicodedata it imports
        return all(0 < len(label) < 64 for label in host.removesuffix(".").split("."))
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return True


def port_number(text: str) -> int | None:
    """`"5672"` -> 5672; None unless 1-65535 in ASCII digits (str.isdigit() also takes '²',
    which int() refuses)."""
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        return None
    return int(text)


def _port(text: str, item: str) -> int:
    port = port_number(text)
    if port is None:
        raise BrokerConfigError(f"bad port in host {item!r}")
    return port


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
    import ssl

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


def connection_parameters(settings: BrokerSettings, context: ssl.SSLContext | None,
                          host: str, port: int, user: str, password: str
                          ) -> pika.ConnectionParameters:
    """The parameters of one connection attempt to one host, with the credentials of now."""
    import pika

    return pika.ConnectionParameters(
        host=host,
        port=port,
        virtual_host=settings.vhost,
        credentials=pika.PlainCredentials(user, password),
        ssl_options=pika.SSLOptions(context, server_hostname=host) if context else None,
        connection_attempts=1,  # our own loop retries, over the whole host list
        socket_timeout=settings.connect_timeout_s,
        stack_timeout=settings.connect_timeout_s * 2,
        heartbeat=settings.heartbeat_s,
        client_properties={"connection_name": f"conntrack-event-collector {settings.router_id}"},
    )


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


@dataclass(frozen=True)
class Refusal:
    """The broker (or its certificate) said no: retrying as is cannot help."""

    reason: str  # one line, for the log and the exit message
    credentials: bool = False  # the credentials were refused: a provider may fetch new ones


# What pika keeps of a Connection.Close that came during its handshake: it raises a
# Probable*Error whose argument is the repr of ConnectionClosedByBroker, "(code) 'text'".
_CLOSED_BY_BROKER = re.compile(r"ConnectionClosedByBroker: \((\d+)\) (.*)", re.DOTALL)
ACCESS_REFUSED, NOT_ALLOWED = 403, 530


def connect_refusal(exc: BaseException, host: str, port: int, settings: BrokerSettings
                    ) -> Refusal | None:
    """A Refusal when the broker explicitly refused us: Connection.Close 403 ACCESS_REFUSED or
    530 NOT_ALLOWED during the handshake, a mechanism it does not offer, or a certificate that
    failed verification. None for everything else, transient: pika raises its
    Probable{Authentication,AccessDenied}Error for ANY connection lost during the handshake
    (a node restarting, a load balancer with no backend), and a TLS EOF or reset is the same."""
    import ssl

    import pika.exceptions  # type: ignore[import-untyped]

    where = f"RabbitMQ at {host}:{port}"
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return Refusal(f"TLS: the certificate of {where} failed verification against "
                           f"{settings.ca or 'the system CAs'}: {cause.verify_message}")
        if isinstance(cause, pika.exceptions.AuthenticationError):
            return Refusal(f"{where} offers no authentication mechanism we have "
                           f"({_first_arg(cause)})", credentials=True)
        if isinstance(cause, (pika.exceptions.ProbableAuthenticationError,
                              pika.exceptions.ProbableAccessDeniedError)):
            closed = _CLOSED_BY_BROKER.search(_first_arg(cause))
            if closed is None or int(closed[1]) not in (ACCESS_REFUSED, NOT_ALLOWED):
                continue  # the connection was lost, nobody refused anything
            text = closed[2].strip("'\"")
            if isinstance(cause, pika.exceptions.ProbableAuthenticationError):
                # The broker's text adds nothing here ("Login was refused ...").
                return Refusal(f"{where} refused the credentials of user {settings.user!r}",
                               credentials=True)
            return Refusal(f"{where} denied access to virtual host {settings.vhost!r}: {text}",
                           credentials=int(closed[1]) == ACCESS_REFUSED)
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
