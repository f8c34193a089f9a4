"""The command line: help, version, configuration precedence, and every bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import conntrack_collector
import pytest
import yaml
from conntrack_collector import cli
from conntrack_collector.cli import main
from conntrack_collector.collector import RunSettings
from conntrack_collector.errors import ExitCode
from conntrack_collector.router_id import default_router_id

REFERENCE_FLAGS = {  # flag -> the default its help shows (None: no default)
    "--amqp-ca": None,
    "--amqp-crt": None,
    "--amqp-exchange": "conntrack",
    "--amqp-host": "localhost",
    "--amqp-key": None,
    "--amqp-password": "guest",
    "--amqp-port": "5672",
    "--amqp-user": "guest",
    "--help": None,
    "--verbose": None,
    "--nat-only": None,
    "--vault-addr": "http://127.0.0.1:8200",
    "--vault-path-config": "secret/owp/conntrack-event-collector",
    "--vault-path-creds": "rabbitmq/creds/owp",
    "--vault-token": None,
}
REFERENCE_HELP = {  # flag -> its help text, word for word
    "--amqp-ca": "CA certificate", "--amqp-crt": "RabbitMQ client cert",
    "--amqp-exchange": "RabbitMQ Exchange", "--amqp-host": "RabbitMQ Host",
    "--amqp-key": "RabbitMQ client key", "--amqp-password": "RabbitMQ password",
    "--amqp-port": "RabbitMQ Port", "--amqp-user": "RabbitMQ user",
    "--help": "help for this command", "--verbose": "Enable verbose",
    "--nat-only": "Track nat only", "--vault-addr": "Vault address",
    "--vault-path-config": "Vault Config Path for rabbitmq",
    "--vault-path-creds": "Vault Credentials Path for rabbitmq", "--vault-token": "Vault Token",
}


def run(capsys: pytest.CaptureFixture[str], *argv: str, env: dict[str, str] | None = None
        ) -> tuple[int, str, str]:
    code = main(list(argv), {"HOME": "/nonexistent", **(env or {})})
    out, err = capsys.readouterr()
    return code, out, err


def print_config(capsys: pytest.CaptureFixture[str], *argv: str,
                 env: dict[str, str] | None = None) -> dict[str, object]:
    code, out, err = run(capsys, "--print-config", *argv, env=env)
    assert code == 0, err
    settings: dict[str, object] = yaml.safe_load(out)
    return settings


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("conntrack-event-collector: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], err


@pytest.mark.parametrize("argv", [["--help"], ["-h"], ["help"]])
def test_help_shows_every_reference_flag_with_its_default(
        capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, _ = run(capsys, *argv)
    assert code == 0
    flat = " ".join(out.replace("│", " ").split())
    for flag, default in REFERENCE_FLAGS.items():
        assert flag in out
        if default is not None:
            start = flat.index(flag)
            assert f"[default: {default}]" in flat[start:start + 300], flag
    for flag, text in REFERENCE_HELP.items():
        start = flat.index(flag)
        assert text in flat[start:start + 80], flag
    assert "-v" in out and "-n" in out and "--nat-only" in out
    # The reference's flags come first, ours after.
    assert out.index("--amqp-user") < out.index("--netns")
    assert out.index("--vault-token") < out.index("--netns")
    for ours in ("--netns", "--events", "--buffer-size", "--reliable", "--config", "--output",
                 "--amqp-vhost", "--router-id", "--max-buffer-events", "--max-buffer-bytes",
                 "--batch-events", "--shutdown-timeout"):
        assert ours in out


def test_help_of_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "help", "version")
    assert code == 0
    assert "Print the version." in out
    code, _, err = run(capsys, "help", "nope")
    assert code == 2
    assert_one_line_error(err, "unknown command 'nope'")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "version")
    assert code == 0
    assert out == f"Version {conntrack_collector.__version__}\n"


def test_python_dash_m_runs_the_same_command() -> None:
    done = subprocess.run([sys.executable, "-m", "conntrack_collector", "version"],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Version ")


def test_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    settings = print_config(capsys)
    assert settings["amqp_host"] == "localhost"
    assert settings["amqp_port"] == 5672
    assert settings["amqp_exchange"] == "conntrack"
    assert settings["amqp_user"] == "guest"
    assert settings["amqp_password"] == "***"
    assert settings["events"] == ["NEW", "DESTROY"]
    assert settings["output"] == "amqp"
    assert settings["verbose"] is False and settings["nat_only"] is False
    assert isinstance(settings["router_id"], str)


def test_the_computed_router_id_is_shown_and_sent(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """It is made only where it is used (hashlib loads OpenSSL): shown with --output stdout
    too, and in the broker settings of a publishing run."""
    assert print_config(capsys, "--output", "stdout")["router_id"] == default_router_id()
    runs: list[RunSettings] = []

    def fake_run(settings: RunSettings, *_args: object, **_kwargs: object) -> ExitCode:
        runs.append(settings)
        return ExitCode.OK

    monkeypatch.setattr(cli, "run", fake_run)
    code, _, err = run(capsys)
    assert code == 0, err
    assert runs[0].output == "amqp" and runs[0].broker.router_id == default_router_id()


def test_precedence_flag_over_env_over_file_over_default(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("amqp_host: from-file\namqp_port: 1111\namqp_user: file-user\n"
                    "amqp_exchange: file-exchange\nrouter_id: fromfile0001\nnat_only: true\n")
    env = {"OWP_AMQP_HOST": "from-env", "OWP_AMQP_PORT": "2222", "OWP_VERBOSE": "true"}
    settings = print_config(capsys, "--config", str(path), "--amqp-host", "from-flag", env=env)
    assert settings["amqp_host"] == "from-flag"
    assert settings["amqp_port"] == 2222  # env over file
    assert settings["amqp_user"] == "file-user"  # file over default
    assert settings["amqp_exchange"] == "file-exchange"
    assert settings["router_id"] == "fromfile0001"  # the file overrides the computed id
    assert settings["nat_only"] is True
    assert settings["verbose"] is True
    assert settings["amqp_vhost"] == "/"  # default
    _, out, _ = run(capsys, "--print-config", "--config", str(path), "--amqp-host", "x", env=env)
    assert "amqp_host: x  # command line" in out
    assert "amqp_port: 2222  # environment" in out
    assert f"amqp_user: file-user  # {path}" in out


def test_file_found_in_home_owp(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    if Path("/etc/owp/conntrack-event-collector.yml").exists() or Path(
            "/etc/config/owp/conntrack-event-collector.yml").exists():
        pytest.skip("this machine has a system-wide config file")
    (tmp_path / ".owp").mkdir()
    (tmp_path / ".owp" / "conntrack-event-collector.yml").write_text("amqp_port: 3333\n")
    assert print_config(capsys, env={"HOME": str(tmp_path)})["amqp_port"] == 3333


def test_config_path_from_the_environment(capsys: pytest.CaptureFixture[str], tmp_path: Path
                                          ) -> None:
    path = tmp_path / "c.yml"
    path.write_text("amqp_port: 4444\n")
    assert print_config(capsys, env={"OWP_CONFIG": str(path)})["amqp_port"] == 4444


def test_events_from_a_yaml_list(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("events: [new, update]\n")
    assert print_config(capsys, "--config", str(path))["events"] == ["NEW", "UPDATE"]


def test_password_never_printed(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--print-config", env={"OWP_AMQP_PASSWORD": "s3cret"})
    assert code == 0
    assert "s3cret" not in out + err
    assert "amqp_password: '***'  # environment" in out


@pytest.mark.parametrize("argv, env, fragments", [
    (["--no-such-flag"], {}, ["--no-such-flag"]),
    (["--amqp-port", "abc"], {}, ["--amqp-port", "abc"]),
    (["--amqp-port", "0"], {}, ["--amqp-port"]),
    (["--amqp-port"], {}, ["--amqp-port"]),
    (["--events", "NEW,BOGUS"], {}, ["--events", "BOGUS"]),
    (["--output", "kafka"], {}, ["--output", "kafka"]),
    (["--max-buffer-events", "-1"], {}, ["--max-buffer-events"]),
    (["no-such-command"], {}, ["no-such-command"]),
    ([], {"OWP_AMQP_PORT": "abc"}, ["OWP_AMQP_PORT", "abc"]),
    ([], {"OWP_VERBOSE": "maybe"}, ["OWP_VERBOSE", "maybe"]),
    (["--config", "/nonexistent/c.yml"], {}, ["cannot read config file /nonexistent/c.yml"]),
    (["--amqp-host", ",,"], {}, ["--amqp-host", "no RabbitMQ host"]),
    (["--amqp-host", "a:99999"], {}, ["--amqp-host", "bad port"]),
])
def test_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str],
                                          env: dict[str, str], fragments: list[str]) -> None:
    code, _, err = run(capsys, *argv, env=env)
    assert code == ExitCode.USAGE == 2
    assert_one_line_error(err, *fragments)


@pytest.mark.parametrize("text, fragments", [
    ("amqp_port: abc\n", ["amqp_port", "abc"]),
    ("no_such_key: 1\n", ["unknown key 'no_such_key'"]),
    ("amqp_host: [\n", ["line"]),
    ("events: NEW,SOMETIMES\n", ["events", "SOMETIMES"]),
])
def test_bad_config_file_is_one_line_naming_it_and_exit_2(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, fragments: list[str]
) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(text)
    code, _, err = run(capsys, "--config", str(path))
    assert code == 2
    assert_one_line_error(err, str(path), *fragments)


def test_unreadable_config_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "dir.yml"
    path.mkdir()  # unreadable as a file, even for root
    code, _, err = run(capsys, "--config", str(path))
    assert code == 2
    assert_one_line_error(err, "cannot read config file", str(path))


@pytest.mark.parametrize("flag, what", [
    ("--amqp-ca", "CA certificate"), ("--amqp-crt", "client certificate")])
def test_missing_certificate_names_the_file(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                            flag: str, what: str) -> None:
    missing = str(tmp_path / "nope.pem")
    code, _, err = run(capsys, flag, missing)
    assert code == 2
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"conntrack-event-collector: error: cannot read {what} {missing}: "
        "No such file or directory")


def test_invalid_ca_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "ca.pem"
    path.write_text("not a certificate\n")
    code, _, err = run(capsys, "--amqp-ca", str(path))
    assert code == 2
    assert f"CA certificate {path}" in err.strip().splitlines()[-1]


def test_verbose_logs_the_configuration_once_without_secrets(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # A missing CA stops the run right after the configuration is logged: no root needed.
    code, _, err = run(capsys, "-v", "--amqp-ca", str(tmp_path / "nope.pem"),
                       env={"OWP_AMQP_PASSWORD": "s3cret"})
    assert code == 2
    assert err.count("effective configuration") == 1
    assert "amqp_host: localhost  # default" in err
    assert "s3cret" not in err
