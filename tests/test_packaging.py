"""The files an operator installs: the systemd unit, the OpenWrt init script, the example config."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml
from collector_process import Collector
from netns_util import conntrack_netns

PACKAGING = Path(__file__).resolve().parent.parent / "packaging"
UNIT = PACKAGING / "systemd" / "conntrack-event-collector.service"
INIT_SCRIPT = PACKAGING / "openwrt" / "conntrack-event-collector.init"
CAPABILITIES = PACKAGING / "openwrt" / "conntrack-event-collector.capabilities.json"
EXAMPLE_CONFIG = PACKAGING / "conntrack-event-collector.yml"
INSTALLED_PATH = "/usr/local/bin/conntrack-event-collector"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    # verify also checks that ExecStart's program exists: point it at the installed command,
    # or at a stand-in when the package is not installed where the unit expects it.
    program = Path(INSTALLED_PATH)
    if not program.exists():
        program = tmp_path / "conntrack-event-collector"
        program.write_text("#!/bin/sh\n")
        program.chmod(0o755)
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED_PATH, str(program)))

    done = subprocess.run(["systemd-analyze", "verify", str(unit)],
                          capture_output=True, text=True, check=False)

    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == ""


def test_systemd_unit_holds_only_cap_net_admin() -> None:
    settings = unit_settings()
    assert settings["AmbientCapabilities"] == ["CAP_NET_ADMIN"]
    assert settings["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]
    assert settings["NoNewPrivileges"] == ["yes"]
    assert settings["ProtectSystem"] == ["strict"]
    assert settings["Restart"] == ["on-failure"]
    assert "User" in settings or settings.get("DynamicUser") == ["yes"]
    assert INSTALLED_PATH in settings["ExecStart"][0]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_unit_exposure_is_low() -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=30", str(UNIT)],
        capture_output=True, text=True, check=False)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= 3.0  # systemd rates up to 3.9 "OK"


def test_init_script_parses() -> None:
    done = subprocess.run(["sh", "-n", str(INIT_SCRIPT)], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr


def run_start_service(tmp_path: Path, *, capabilities: bool) -> list[str]:
    """Source the init script under a stand-in of procd's shell helpers and record the calls."""
    config = tmp_path / "conntrack-event-collector.yml"
    config.write_text("amqp_host: broker\n")
    caps = tmp_path / "caps.json"
    if capabilities:
        caps.write_text(CAPABILITIES.read_text())
    stand_in = f"""
calls=""
record() {{ calls="$calls$*;"; }}
procd_open_instance() {{ record open "$@"; }}
procd_close_instance() {{ record close "$@"; }}
procd_set_param() {{ record set "$@"; }}
procd_append_param() {{ record append "$@"; }}
procd_add_jail() {{ record jail "$@"; }}
id() {{ true; }}
. {INIT_SCRIPT}
CONFIG={config}
CAPABILITIES={caps}
UJAIL=/bin/true
start_service
printf '%s' "$calls"
"""
    done = subprocess.run(["sh", "-c", stand_in], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return [call for call in done.stdout.split(";") if call]


def test_init_script_runs_the_collector_under_procd(tmp_path: Path) -> None:
    calls = run_start_service(tmp_path, capabilities=False)

    assert calls[0] == "open"
    assert calls[-1] == "close"
    assert "set command /usr/bin/conntrack-event-collector" in calls
    assert f"append command --config {tmp_path}/conntrack-event-collector.yml" in calls
    assert "set respawn 3600 5 5" in calls
    assert not any(call.startswith(("set user", "set capabilities", "jail")) for call in calls)


def test_init_script_drops_to_cap_net_admin_when_configured(tmp_path: Path) -> None:
    calls = run_start_service(tmp_path, capabilities=True)

    assert "jail conntrack-event-collector" in calls  # procd applies capabilities via ujail
    assert f"set capabilities {tmp_path}/caps.json" in calls
    assert "set user conntrack" in calls
    assert "set no_new_privs 1" in calls


def test_capabilities_file_grants_cap_net_admin_only() -> None:
    sets = json.loads(CAPABILITIES.read_text())
    assert set(sets) == {"bounding", "effective", "ambient", "permitted", "inheritable"}
    assert all(value == ["CAP_NET_ADMIN"] for value in sets.values())


def test_example_config_has_exactly_the_keys_the_command_accepts() -> None:
    from conntrack_collector.cli import NOT_SETTINGS, cli

    settings = yaml.safe_load(EXAMPLE_CONFIG.read_text())

    accepted = {p.name for p in cli.params if p.name and p.name not in NOT_SETTINGS}
    assert set(settings) == accepted


def test_example_config_explains_every_key() -> None:
    # Each key sits in a paragraph (lines between blank lines) that has a comment.
    for paragraph in EXAMPLE_CONFIG.read_text().split("\n\n"):
        lines = paragraph.strip().splitlines()
        keys = [line.split(":")[0] for line in lines if line and not line.startswith("#")]
        assert not keys or any(line.startswith("#") for line in lines), keys


def test_example_config_as_installed_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from conntrack_collector.cli import main

    monkeypatch.chdir(tmp_path)  # no conntrack-event-collector.yml found here
    env = {"OWP_ROUTER_ID": "r1"}  # not the MAC-derived id: the same in both runs
    assert main(["--print-config"], env) == 0
    defaults = capsys.readouterr().out
    assert main(["--config", str(EXAMPLE_CONFIG), "--print-config"], env) == 0
    from_example = capsys.readouterr().out

    def values(printed: str) -> list[str]:
        return [line.split("  #")[0] for line in printed.splitlines()]

    assert values(from_example) == values(defaults)


@pytest.mark.root
def test_tells_systemd_when_it_is_subscribed_and_alive(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify_socket, \
            conntrack_netns("notify") as netns:
        notify_socket.bind(str(tmp_path / "notify"))
        notify_socket.settimeout(20)
        collector = Collector("--netns", netns, "--output", "stdout",
                              env={"NOTIFY_SOCKET": str(tmp_path / "notify"),
                                   "WATCHDOG_USEC": "400000"})
        try:
            ready = notify_socket.recv(4096).decode()
            # READY comes as the stream opens, a moment before the SIGTERM handler is set.
            collector.wait_for("listening for")
            watchdog = notify_socket.recv(4096).decode()
        finally:
            code = collector.stop()
        notify_socket.settimeout(1)
        after: list[str] = []
        with contextlib.suppress(TimeoutError):
            while True:
                after.append(notify_socket.recv(4096).decode())

    assert code == 0, collector.stderr
    assert ready.splitlines()[0] == "READY=1"
    assert watchdog == "WATCHDOG=1"
    assert after[-1] == "STOPPING=1"
