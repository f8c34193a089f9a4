"""The YAML file and the OWP_* environment (config.py), and the router id."""

from __future__ import annotations

from pathlib import Path

import pytest
from conntrack_collector import config
from conntrack_collector.router_id import (
    default_router_id,
    first_hardware_address,
    router_id_from_mac,
)

KEYS = ["verbose", "amqp_host", "amqp_port", "amqp_password", "amqp_key"]


def test_search_path_is_the_references() -> None:
    paths = config.search_path({"HOME": "/home/u"})
    assert paths == [
        Path("/etc/owp/conntrack-event-collector.yml"),
        Path("/etc/config/owp/conntrack-event-collector.yml"),
        Path("/home/u/.owp/conntrack-event-collector.yml"),
        Path("conntrack-event-collector.yml"),
    ]


def test_the_file_in_the_current_folder_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                 ) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / config.CONFIG_FILE_NAME).write_text("amqp_host: a\n")
    found = config.find_config_file({"HOME": str(tmp_path / "nohome")})
    if Path("/etc/owp/conntrack-event-collector.yml").exists():
        pytest.skip("this machine has a config file in /etc/owp")
    assert found == Path(config.CONFIG_FILE_NAME)


def test_home_wins_over_the_current_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / config.CONFIG_FILE_NAME).write_text("amqp_host: here\n")
    (tmp_path / ".owp").mkdir()
    (tmp_path / ".owp" / config.CONFIG_FILE_NAME).write_text("amqp_host: home\n")
    if Path("/etc/owp/conntrack-event-collector.yml").exists():
        pytest.skip("this machine has a config file in /etc/owp")
    assert config.find_config_file({"HOME": str(tmp_path)}) == (
        tmp_path / ".owp" / config.CONFIG_FILE_NAME)


def test_load_accepts_underscores_and_dashes(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("amqp_host: h\namqp-port: 5673\nverbose: true\n")
    assert config.load_config_file(path, KEYS) == {  # text: each key's type converts it
        "amqp_host": "h", "amqp_port": "5673", "verbose": "true"}


def test_empty_file_is_an_empty_configuration(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("# nothing\n")
    assert config.load_config_file(path, KEYS) == {}


@pytest.mark.parametrize("text, message", [
    ("amqp_hots: x\n", "unknown key 'amqp_hots'"),
    ("amqp_host: [unclosed\n", "at line"),
    ("- a\n- b\n", "expected `key: value` lines"),
])
def test_bad_files_give_one_line_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.yml"
    path.write_text(text)
    with pytest.raises(config.ConfigError) as info:
        config.load_config_file(path, KEYS)
    assert message in str(info.value)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="cannot read config file .*missing.yml"):
        config.load_config_file(tmp_path / "missing.yml", KEYS)


def test_env_settings_take_owp_prefixed_known_keys() -> None:
    env = {"OWP_AMQP_HOST": "h", "OWP_UNKNOWN": "x", "AMQP_PORT": "1", "OWP_VERBOSE": "1"}
    assert config.env_settings(env, KEYS) == {"amqp_host": "h", "verbose": "1"}


def test_redacted_hides_secrets_only() -> None:
    shown = config.redacted({"amqp_password": "s3cret", "amqp_key": "/k.pem", "amqp_user": "u",
                             "amqp_ca": None})
    assert shown == {"amqp_password": "***", "amqp_key": "***", "amqp_user": "u", "amqp_ca": None}


def test_router_id_is_sha256_of_the_mac_text() -> None:
    # sha256("aa:bb:cc:dd:ee:ff")
    assert router_id_from_mac("AA:BB:CC:DD:EE:FF") == router_id_from_mac("aa:bb:cc:dd:ee:ff")
    import hashlib

    assert router_id_from_mac("aa:bb:cc:dd:ee:ff") == hashlib.sha256(
        b"aa:bb:cc:dd:ee:ff").hexdigest()[:12]
    assert len(default_router_id()) in (12, len("unknown"))


def _iface(root: Path, name: str, ifindex: int, flags: int, mac: str) -> None:
    folder = root / name
    folder.mkdir()
    (folder / "ifindex").write_text(f"{ifindex}\n")
    (folder / "flags").write_text(f"{flags:#x}\n")
    (folder / "address").write_text(f"{mac}\n")
    (folder / "operstate").write_text("up\n" if flags & 1 else "down\n")


def test_router_id_takes_the_first_up_interface_with_a_mac(tmp_path: Path) -> None:
    _iface(tmp_path, "lo", 1, 0x9, "00:00:00:00:00:00")  # loopback
    _iface(tmp_path, "eth9", 2, 0x1002, "02:00:00:00:00:09")  # down
    _iface(tmp_path, "tun0", 3, 0x1091, "")  # up, no hardware address
    _iface(tmp_path, "wan", 7, 0x1003, "02:00:00:00:00:07")
    _iface(tmp_path, "lan", 5, 0x1003, "02:00:00:00:00:05")
    assert first_hardware_address(tmp_path) == "02:00:00:00:00:05"
    assert default_router_id(tmp_path) == router_id_from_mac("02:00:00:00:00:05")


def test_router_id_without_any_interface(tmp_path: Path) -> None:
    assert default_router_id(tmp_path) == "unknown"
