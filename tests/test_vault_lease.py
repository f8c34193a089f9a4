"""The credentials' lease as a state machine (hypothesis): time passes, Vault goes away and
comes back, leases are revoked and the broker refuses them. Whatever happens, the credentials
are ones Vault gave, and once Vault has answered for a while they are never expired."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import hvac.exceptions
import requests
from conntrack_collector.vault import VaultCredentials
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

TTL_S, MAX_TTL_S, RETRY_S = 20.0, 30.0, 5.0


@dataclass
class Issued:
    user: str
    granted_at: float
    expires_at: float
    revoked: bool = False


@dataclass
class FakeVault:
    """Vault's RabbitMQ engine as far as the provider sees it: `read` issues a user with a
    lease of TTL_S, renewable up to MAX_TTL_S after it was issued."""

    now: float = 0.0
    up: bool = True
    issued: dict[str, Issued] = field(default_factory=dict)  # by lease id
    url: str = "http://vault.test:8200"

    def __post_init__(self) -> None:
        self.sys = self

    def _reachable(self) -> None:
        if not self.up:
            raise requests.ConnectionError("Connection refused")

    def read(self, path: str) -> dict[str, Any]:
        self._reachable()
        lease_id = f"{path}/{len(self.issued)}"
        self.issued[lease_id] = Issued(f"user{len(self.issued)}", self.now, self.now + TTL_S)
        return {"lease_id": lease_id, "lease_duration": int(TTL_S), "renewable": True,
                "data": {"username": self.issued[lease_id].user, "password": "pw"}}

    def renew_lease(self, lease_id: str, increment: int) -> dict[str, Any]:
        self._reachable()
        lease = self.issued[lease_id]
        if lease.revoked or self.now >= lease.expires_at:
            raise hvac.exceptions.InvalidRequest("lease not found")
        lease.expires_at = min(self.now + increment, lease.granted_at + MAX_TTL_S)
        return {"lease_id": lease_id, "renewable": True,
                "lease_duration": int(lease.expires_at - self.now)}

    def unexpired(self, user: str) -> bool:
        return any(lease.user == user and self.now < lease.expires_at
                   for lease in self.issued.values())

    def valid(self, user: str) -> bool:
        return self.unexpired(user) and not any(
            lease.user == user and lease.revoked for lease in self.issued.values())


class LeaseMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.vault = FakeVault()
        self.credentials = VaultCredentials(self.vault, "rabbitmq/creds/owp", retry_s=RETRY_S,
                                            clock=lambda: self.vault.now)
        self.credentials.fetch()
        self.wake_at = self.credentials.tick()
        self.up_since: float | None = 0.0

    @rule(fraction=st.floats(0, 1))
    def time_passes(self, fraction: float) -> None:
        """Up to the time the thread sleeps until (it never oversleeps); it ticks then."""
        self.vault.now += fraction * max(0.0, min(self.wake_at, self.vault.now + 60)
                                         - self.vault.now)
        if self.vault.now >= self.wake_at:
            self._wake()

    @rule()
    def time_passes_until_it_wakes(self) -> None:
        self.vault.now = max(self.vault.now, min(self.wake_at, self.vault.now + 60))
        if self.vault.now >= self.wake_at:
            self._wake()

    def _wake(self) -> None:
        # With Vault there all along, it wakes before the lease ends, not when the broker has
        # already dropped the user.
        user = self.credentials.current()[0]
        issued_at = next(lease.granted_at for lease in self.vault.issued.values()
                         if lease.user == user)
        if self.up_since is not None and self.up_since <= issued_at:
            assert self.vault.unexpired(user), (user, self.vault.now, self.vault.issued)
        for _ in range(2):  # at most one more tick at the same instant: it never spins
            self.wake_at = self.credentials.tick()
            if self.wake_at > self.vault.now:
                return
        raise AssertionError(f"the lease thread spins at {self.vault.now}")

    @rule()
    def woken_early(self) -> None:
        """refused() and close() wake the thread before its time: a tick then is harmless."""
        self.wake_at = self.credentials.tick()

    @precondition(lambda self: self.vault.up)
    @rule()
    def vault_goes_away(self) -> None:
        self.vault.up = False
        self.up_since = None

    @precondition(lambda self: not self.vault.up)
    @rule()
    def vault_comes_back(self) -> None:
        self.vault.up = True
        self.up_since = self.vault.now

    @rule()
    def vault_revokes_the_lease(self) -> None:
        for lease in self.vault.issued.values():
            lease.revoked = True

    @precondition(lambda self: not self.vault.valid(self.credentials.current()[0]))
    @rule()
    def broker_refuses(self) -> None:
        self.credentials.refused()
        self.wake_at = self.credentials.tick()  # refused() wakes the thread
        if self.vault.up:
            assert self.vault.valid(self.credentials.current()[0])

    @invariant()
    def credentials_are_from_vault(self) -> None:
        user, password = self.credentials.current()
        assert password == "pw"
        assert any(lease.user == user for lease in self.vault.issued.values())

    @invariant()
    def never_expired_while_vault_answers(self) -> None:
        # Once Vault has answered for a retry interval (a failed attempt is retried within
        # it), the credentials in use have not expired. Revoked ones are another matter: the
        # broker's refusal replaces those (broker_refuses).
        if self.up_since is not None and self.vault.now - self.up_since >= RETRY_S:
            user = self.credentials.current()[0]
            assert self.vault.unexpired(user), (user, self.vault.now, self.vault.issued)


TestLease = LeaseMachine.TestCase
TestLease.settings = settings(max_examples=300, stateful_step_count=50, deadline=None)
