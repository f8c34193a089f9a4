"""RabbitMQ settings and credentials from Vault (or OpenBao), as the reference read them, and
kept alive, which the reference did not.

At start, when both an address and a token are set: the KV secret at the config path (version
1 or 2, detected) gives AMQP settings that override the configured ones, and the RabbitMQ
secrets engine role at the creds path gives a user and a password. Then a thread keeps that
credential's lease alive: at 2/3 of each lease it renews it; once Vault will not extend it
any further (its max TTL), or it is not renewable, it fetches new credentials at 2/3 of what
is left, so they are ready before the broker closes the old user's connection. The publisher
asks `current()` before each connection attempt and calls `refused()` when the broker refused
the credentials (revoked early, say): new ones are fetched at once. Vault unreachable after
start is logged and retried; publishing goes on with the credentials we have.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

from .broker import port_number

log = logging.getLogger("conntrack_collector")

# The config secret's keys (matched case-insensitively) and the settings they override.
AMQP_SETTING_BY_KEY = {
    "host": "amqp_host", "port": "amqp_port", "username": "amqp_user",
    "password": "amqp_password", "ca": "amqp_ca", "crt": "amqp_crt", "key": "amqp_key",
    "vhost": "amqp_vhost", "exchange": "amqp_exchange",
}
RENEW_AT = 2 / 3  # of a lease: renew (or fetch new credentials) then
RETRY_S = 5.0  # while Vault does not answer
TIMEOUT_S = 5.0  # per request to Vault


class VaultError(Exception):
    """Vault could not give what we need, said in one line (never with a secret in it)."""


@dataclass(frozen=True)
class VaultSettings:
    addr: str
    token: str
    path_config: str
    path_creds: str

    def __repr__(self) -> str:  # never the token
        return (f"VaultSettings(addr={self.addr!r}, path_config={self.path_config!r}, "
                f"path_creds={self.path_creds!r})")


def settings_from(effective: Mapping[str, Any]) -> VaultSettings | None:
    """The Vault settings when Vault is on: both an address and a token, as the reference."""
    addr, token = effective.get("vault_addr") or "", effective.get("vault_token") or ""
    if not (addr and token):
        return None
    return VaultSettings(addr, token, (effective.get("vault_path_config") or "").strip("/"),
                         (effective.get("vault_path_creds") or "").strip("/"))


def client_for(settings: VaultSettings) -> Any:
    import hvac  # type: ignore[import-untyped]  # only when Vault is on: it costs start-up time

    return hvac.Client(url=settings.addr, token=settings.token, timeout=TIMEOUT_S)


def _failures() -> tuple[type[BaseException], ...]:
    """What a Vault request raises when it fails: hvac's errors, and requests' (unreachable)."""
    import hvac.exceptions  # type: ignore[import-untyped]
    import requests

    return (hvac.exceptions.VaultError, requests.RequestException)


def reason(exc: BaseException) -> str:
    """A short reason: the innermost OS error (connection refused, ...) or Vault's own words."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        item = todo.pop(0)
        if not isinstance(item, BaseException) or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, OSError) and item.strerror:
            return item.strerror
        todo.extend(item.args)
        todo.extend((getattr(item, "reason", None), item.__cause__, item.__context__))
    errors = getattr(exc, "errors", None)
    text = "; ".join(str(e) for e in errors) if errors else str(exc)
    return " ".join(text.split()) or type(exc).__name__


# ---- the config secret ------------------------------------------------------------------------

def read_kv(client: Any, path: str) -> dict[str, Any]:
    """The key/values of the KV secret at `path`, whichever version its mount is: `path` is
    written as for version 1 (`secret/owp/x`), as the reference expects; for a version 2
    mount it is read at `secret/data/owp/x`."""
    mount, version = _kv_mount(client, path)
    if version == "2":
        response = client.read(mount + "data/" + path[len(mount):])
        data = (response or {}).get("data") or {}
        data = data.get("data") if isinstance(data, dict) else None
    else:
        response = client.read(path)
        data = (response or {}).get("data")
    if response is None:
        raise VaultError(f"no secret at {path} (an empty --vault-path-config reads none)")
    if not isinstance(data, dict):
        raise VaultError(f"the secret at {path} holds no key/values")
    return data


def _kv_mount(client: Any, path: str) -> tuple[str, str]:
    """(the mount, e.g. "secret/", its KV version), asked as Vault's own CLI does; a token not
    allowed to ask (it is in the default policy) gets the path read as version 1."""
    import hvac.exceptions

    try:
        response = client.adapter.get(f"/v1/sys/internal/ui/mounts/{path}")
    except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidPath,
            hvac.exceptions.InvalidRequest):
        return "", "1"
    data = response.get("data") or {}
    mount = str(data.get("path") or "")
    version = str((data.get("options") or {}).get("version") or "1")
    return mount, version


def amqp_overrides(secret: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The settings a config secret overrides, by our setting names; its keys in any case."""
    found: dict[str, tuple[str, Any]] = {}
    unknown = []
    for key, value in secret.items():
        setting = AMQP_SETTING_BY_KEY.get(str(key).lower())
        if setting is None:
            unknown.append(str(key))
            continue
        if setting in found:
            raise VaultError(f"the secret at {path} has both {found[setting][0]!r} and {key!r}")
        found[setting] = (str(key), value)
    if unknown:
        log.warning("Vault: ignoring key(s) %s of the secret at %s (known: %s)",
                    ", ".join(sorted(unknown)), path, ", ".join(AMQP_SETTING_BY_KEY))
    overrides: dict[str, Any] = {}
    for setting, (key, value) in found.items():
        if setting == "amqp_port":
            port = port_number(str(value).strip())
            if port is None:
                raise VaultError(f"the secret at {path}: {key!r} is not a port: {value!r}")
            overrides[setting] = port
        else:
            overrides[setting] = str(value)
    return overrides


# ---- the credentials ---------------------------------------------------------------------------

class Lease(NamedTuple):
    id: str
    duration_s: float  # as Vault granted it last (fetched or renewed)
    renewable: bool
    granted_at: float  # monotonic time of that grant
    extendable: bool  # the last renewal gave all it was asked: a next one may extend it


def next_step(lease: Lease) -> tuple[float, str]:
    """When (monotonic) to act on the lease, and how: "renew" while Vault extends it, else
    "fetch" new credentials; at 2/3 of what the lease has left either way."""
    if not lease.id:  # no lease (a static secret): nothing to do but on refusal
        return float("inf"), "fetch"
    when = lease.granted_at + RENEW_AT * lease.duration_s
    return when, ("renew" if lease.renewable and lease.extendable else "fetch")


class VaultCredentials:
    """The credentials provider the publisher asks before each connection attempt."""

    def __init__(self, client: Any, path: str, *, retry_s: float = RETRY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._client = client
        self._path = path
        self._retry_s = retry_s
        self._clock = clock
        self._lock = threading.Lock()  # guards the credentials and the lease
        self._fetching = threading.Lock()  # one fetch at a time (thread or refused())
        self._credentials = ("", "")
        self._lease = Lease("", 0.0, False, 0.0, False)
        self._requested_s = 0.0  # the lease's duration when fetched: the increment asked for
        self._wakeup = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vault-lease", daemon=True)
        self._retry_at: float | None = None  # after a failure: try again then
        self._unreachable_since: float | None = None
        self.rotations = 0  # credentials fetched after the first

    # ---- the publisher's interface ------------------------------------------------------

    def current(self) -> tuple[str, str]:
        with self._lock:
            return self._credentials

    def refused(self) -> None:
        """The broker refused current(): fetch new credentials now, before the next attempt."""
        user = self.current()[0]
        log.warning("RabbitMQ refused the credentials of Vault user %r; fetching new ones", user)
        try:
            self.fetch()
        except VaultError as exc:
            log.warning("Vault: %s; retrying at the next connection attempt", exc)
        self._wakeup.set()  # the thread plans around the new lease

    # ---- start, stop ------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        self._wakeup.set()
        if self._thread.is_alive():
            self._thread.join(TIMEOUT_S + 1)

    # ---- Vault ---------------------------------------------------------------------------

    def fetch(self) -> None:
        """New credentials from the secrets engine; VaultError when Vault cannot give them."""
        with self._fetching:
            try:
                response = self._client.read(self._path)
            except _failures() as exc:
                raise VaultError(f"cannot read credentials at {self._path} from Vault at "
                                 f"{self._client.url}: {reason(exc)}") from None
            data = (response or {}).get("data") or {}
            if response is None or not data.get("username") or not data.get("password"):
                raise VaultError(f"no username and password at {self._path} in Vault at "
                                 f"{self._client.url}")
            now = self._clock()
            lease = Lease(str(response.get("lease_id") or ""),
                          float(response.get("lease_duration") or 0),
                          bool(response.get("renewable")), now, True)
            with self._lock:
                first = not self._credentials[0]
                self._credentials = (str(data["username"]), str(data["password"]))
                self._lease = lease
                self._requested_s = lease.duration_s
            if not first:
                self.rotations += 1
            log.info("Vault: %s credentials from %s: user %r, lease %.0f s%s",
                     "got" if first else "new", self._path, data["username"],
                     lease.duration_s, ", renewable" if lease.renewable else "")

    def _renew(self, lease: Lease) -> None:
        import hvac.exceptions

        asked = self._requested_s
        try:
            response = self._client.sys.renew_lease(lease.id, increment=int(asked))
        except (hvac.exceptions.InvalidRequest, hvac.exceptions.InvalidPath) as exc:
            # The lease is gone (expired, revoked): only new credentials will do.
            log.warning("Vault: cannot renew lease of %s (%s); fetching new credentials",
                        self._path, reason(exc))
            self.fetch()
            return
        except _failures() as exc:
            raise VaultError(f"cannot renew the lease at Vault {self._client.url}: "
                             f"{reason(exc)}") from None
        granted = float(response.get("lease_duration") or 0)
        renewed = Lease(lease.id, granted, bool(response.get("renewable")), self._clock(),
                        granted >= asked)
        with self._lock:
            if self._lease.id == lease.id:  # not replaced meanwhile by refused()
                self._lease = renewed
        log.debug("Vault: renewed the lease of %s for %.0f s%s", self._path, granted,
                  "" if renewed.extendable else " (its max TTL: new credentials before it ends)")

    def tick(self) -> float:
        """Does what next_step says is due now (or retries what failed); returns when
        (monotonic) to look again. The thread calls it; tests call it with their own clock."""
        now = self._clock()
        with self._lock:
            lease = self._lease
        when, step = next_step(lease)
        if self._retry_at is not None:  # the step failed (it is past due): not before then
            when = self._retry_at
        if now < when:
            return when
        try:
            if step == "renew":
                self._renew(lease)
            else:
                self.fetch()
        except VaultError as exc:
            self._retry_at = now + self._retry_s
            if self._unreachable_since is None:
                self._unreachable_since = now
                log.warning("Vault: %s; publishing goes on with the credentials we have, "
                            "retrying every %.0f s", exc, self._retry_s)
            return self._retry_at
        self._retry_at = None
        if self._unreachable_since is not None:
            log.info("Vault: answering again after %.0f s", now - self._unreachable_since)
            self._unreachable_since = None
        with self._lock:
            return next_step(self._lease)[0]

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                when = self.tick()
            except Exception:  # a bug: keep the credentials we have, and say it
                log.exception("Vault lease thread failed; credentials are no longer renewed")
                return
            wait_s = when - self._clock()
            if wait_s > 0:  # refused() and close() wake it early
                self._wakeup.wait(min(wait_s, 3600.0))
                self._wakeup.clear()


class Vault(NamedTuple):
    """What Vault gave at start."""

    overrides: dict[str, Any]  # AMQP settings from the config secret
    credentials: VaultCredentials | None  # None without a creds path


def connect(settings: VaultSettings, **credentials_options: Any) -> Vault:
    """Everything Vault gives at start; VaultError (one line) when it cannot."""
    client = client_for(settings)
    overrides: dict[str, Any] = {}
    if settings.path_config:
        try:
            secret = read_kv(client, settings.path_config)
        except _failures() as exc:
            raise VaultError(f"cannot read {settings.path_config} from Vault at "
                             f"{settings.addr}: {reason(exc)}") from None
        overrides = amqp_overrides(secret, settings.path_config)
        log.info("Vault: AMQP settings from %s: %s", settings.path_config,
                 ", ".join(sorted(overrides)) or "none")
    credentials = None
    if settings.path_creds:
        credentials = VaultCredentials(client, settings.path_creds, **credentials_options)
        credentials.fetch()
    return Vault(overrides, credentials)


@contextmanager
def running(credentials: VaultCredentials | None) -> Iterator[None]:
    """The lease thread runs while the collector does."""
    if credentials is not None:
        credentials.start()
    try:
        yield
    finally:
        if credentials is not None:
            credentials.close()
