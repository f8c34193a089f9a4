"""Where the publisher gets the broker's user and password, at each connection attempt.

A provider is any object with two methods:

- `current() -> (user, password)`: called before every connection attempt (every host of
  every round), so credentials that changed (rotated by a secrets store) are used at once;
- `refused() -> None`: called when a broker explicitly refused those credentials
  (Connection.Close 403 during the handshake), so a provider that can fetch new ones (from
  Vault, say) does it before the next attempt. It must not block for long: it runs on the
  publisher's thread, between two connection attempts.

The default is `StaticCredentials`, the user and password of the settings.
"""

from __future__ import annotations

from typing import Protocol

from .broker import BrokerSettings


class CredentialsProvider(Protocol):
    def current(self) -> tuple[str, str]: ...
    def refused(self) -> None: ...


class StaticCredentials:
    """The configured user and password, for ever."""

    def __init__(self, settings: BrokerSettings) -> None:
        self._user = settings.user
        self._password = settings.password

    def current(self) -> tuple[str, str]:
        return self._user, self._password

    def refused(self) -> None:
        pass  # nothing else to try: the loop reports it

    def __repr__(self) -> str:  # never show the password
        return f"StaticCredentials(user={self._user!r})"
