"""The accept/ignore filter's settings: CLI flags, YAML keys, OWP_* variables, API arguments,
and their bad values (no kernel needed; the kernel side is test_filter_kernel.py)."""

from __future__ import annotations

from pathlib import Path

import conntrack_collector
import pytest
import yaml
from conntrack_collector import filter_items
from conntrack_collector.cli import main
from conntrack_collector.errors import ExitCode
from conntrack_collector.metrics import serve_metrics
from conntrack_collector.stats import CollectorStats
from test_metrics import scrape, value

FLAGS = ("--accept-protocols", "--ignore-protocols", "--accept-addresses", "--ignore-addresses",
         "--accept-tcp-states", "--ignore-tcp-states")


def run(capsys: pytest.CaptureFixture[str], *argv: str, env: dict[str, str] | None = None
        ) -> tuple[int, str, str]:
    code = main(list(argv), {"HOME": "/nonexistent", **(env or {})})
    out, err = capsys.readouterr()
    return code, out, err


def settings(capsys: pytest.CaptureFixture[str], *argv: str,
             env: dict[str, str] | None = None) -> dict[str, object]:
    code, out, err = run(capsys, "--print-config", *argv, env=env)
    assert code == 0, err
    loaded: dict[str, object] = yaml.safe_load(out)
    return loaded


def test_defaults_are_no_rule(capsys: pytest.CaptureFixture[str]) -> None:
    shown = settings(capsys)
    for key in conntrack_collector.FILTER_LISTS:
        assert shown[key] == []


def test_flags_environment_and_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "conntrack-event-collector.yml"
    config.write_text("accept_protocols: [tcp, 17]\nignore-addresses:\n  - 10.0.0.1\n"
                      "  - fd00::/8\naccept_addresses: 192.168.0.0/16,2001:db8::/32\n")
    shown = settings(capsys, "--config", str(config), "--ignore-protocols", "gre, 253",
                     env={"OWP_ACCEPT_ADDRESSES": "10.0.0.0/8"})
    assert shown["accept_protocols"] == ["tcp", "17"]
    assert shown["ignore_protocols"] == ["gre", "253"]
    assert shown["ignore_addresses"] == ["10.0.0.1", "fd00::/8"]
    assert shown["accept_addresses"] == ["10.0.0.0/8"]  # the environment wins over the file
    tcp = settings(capsys, "--ignore-tcp-states", "TIME_WAIT,close",
                   env={"OWP_ACCEPT_TCP_STATES": "established"})
    assert tcp["ignore_tcp_states"] == ["TIME_WAIT", "close"]
    assert tcp["accept_tcp_states"] == ["established"]


@pytest.mark.parametrize(("argv", "env", "fragment"), [
    (["--accept-protocols", "tcp,tpc"], {}, '"tpc" is not an IP protocol'),
    (["--ignore-protocols", "256"], {}, '"256" is not an IP protocol'),
    (["--accept-addresses", "10.0.0.0/33"], {}, '"10.0.0.0/33" is not an IPv4 or IPv6'),
    (["--ignore-addresses", "fd00::/129"], {}, "fd00::/129"),
    (["--ignore-addresses", "10.0.0"], {}, '"10.0.0"'),
    ([], {"OWP_ACCEPT_PROTOCOLS": "ipv4"}, "OWP_ACCEPT_PROTOCOLS"),
    ([], {"OWP_IGNORE_ADDRESSES": "localhost"}, "OWP_IGNORE_ADDRESSES"),
    (["--accept-tcp-states", "ESTABLISHED,LISTEN"], {}, '"LISTEN" is not a TCP state'),
])
def test_bad_values_are_one_line_usage_errors(capsys: pytest.CaptureFixture[str],
                                              argv: list[str], env: dict[str, str],
                                              fragment: str) -> None:
    code, out, err = run(capsys, *argv, "--output", "stdout", env=env)
    assert code == ExitCode.USAGE
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("conntrack-event-collector: error: ") and fragment in lines[0], err
    assert out == ""


def test_bad_value_in_the_file_names_it(capsys: pytest.CaptureFixture[str],
                                        tmp_path: Path) -> None:
    config = tmp_path / "c.yml"
    config.write_text("accept_protocols: [tcp, bogus]\n")
    code, _, err = run(capsys, "--config", str(config), "--output", "stdout")
    assert code == ExitCode.USAGE
    assert f"config file {config}: accept_protocols" in err and "bogus" in err, err


def test_help_lists_the_filter_flags(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for flag in FLAGS:
        assert flag in out


def test_filter_items_takes_strings_and_sequences() -> None:
    assert filter_items("tcp, udp,,") == ["tcp", "udp"]
    assert filter_items(["tcp", 17]) == ["tcp", "17"]
    assert filter_items(("10.0.0.0/8",)) == ["10.0.0.0/8"]
    assert filter_items(None) == []


@pytest.mark.parametrize("arguments", [
    {"accept_protocols": "tcp,nope"},
    {"ignore_protocols": [6, 300]},
    {"accept_addresses": ["10.0.0.0/8", "10.0.0.0/40"]},
    {"ignore_addresses": "::1/200"},
    {"ignore_tcp_states": ["ESTABLISHED", "OPEN"]},
])
def test_api_bad_values_raise_value_error_before_opening_anything(
        arguments: dict[str, object]) -> None:
    # No root needed: the rules are checked before the reader thread starts.
    with pytest.raises(ValueError) as raised:
        conntrack_collector.EventStream(**arguments)  # type: ignore[arg-type]
    assert "\n" not in str(raised.value)
    assert next(iter(arguments)) in str(raised.value)


def test_metrics_count_what_the_fallback_filtered() -> None:
    stream = {"received": 13, "filtered_by_fallback": 5, "overruns": 0, "decode_errors": 0,
              "queued": 0}
    server = serve_metrics("127.0.0.1:0", CollectorStats(), lambda: stream)
    try:
        samples = scrape(f"http://127.0.0.1:{server.address[1]}/metrics")
    finally:
        server.close()
    assert value(samples, "stream_filtered_by_fallback_total") == 5
