"""Where settings come from: the YAML file and the OWP_* environment.

Precedence, highest first: a flag on the command line, the environment (`OWP_` + the key
upper-cased), the file `conntrack-event-collector.yml`, the defaults. The command line module
feeds the environment and the file to click as its `default_map`, so click's own precedence
(command line > default_map > default) does the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

CONFIG_FILE_NAME = "conntrack-event-collector.yml"
ENV_PREFIX = "OWP_"
# Never logged or printed: only shown as "***".
SECRET_KEYS = frozenset({"amqp_password", "amqp_key", "vault_token"})
# Secrets that are values, not paths: visible in `ps` when given on the command line.
COMMAND_LINE_SECRETS = ("amqp_password", "vault_token")


class ConfigError(Exception):
    """A configuration problem, said in one line that names the file or variable."""


def search_path(env: Mapping[str, str]) -> list[Path]:
    """The reference's folders, in order; the first holding the file wins."""
    folders = [Path("/etc/owp"), Path("/etc/config/owp")]
    home = env.get("HOME")
    if home:
        folders.append(Path(home) / ".owp")
    folders.append(Path("."))
    return [folder / CONFIG_FILE_NAME for folder in folders]


def find_config_file(env: Mapping[str, str]) -> Path | None:
    for path in search_path(env):
        if path.is_file():
            return path
    return None


def load_config_file(path: Path, known_keys: Iterable[str]) -> dict[str, Any]:
    """The file's settings; keys may be spelled `amqp_host` or `amqp-host`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {path}{where}: {problem}") from None
    if data is None:  # an empty file is a valid, empty configuration
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path}: expected `key: value` lines, got {type(data).__name__}")
    known = set(known_keys)
    settings: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in known:
            raise ConfigError(
                f"config file {path}: unknown key {raw_key!r} (known: {', '.join(sorted(known))})"
            )
        settings[key] = value
    return settings


def env_settings(env: Mapping[str, str], known_keys: Iterable[str]) -> dict[str, str]:
    """`OWP_AMQP_HOST=x` -> {"amqp_host": "x"}, for the known keys only."""
    return {
        key: env[ENV_PREFIX + key.upper()]
        for key in known_keys
        if ENV_PREFIX + key.upper() in env
    }


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def redacted(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings with secrets replaced, fit for a log line."""
    return {
        key: ("***" if key in SECRET_KEYS and value not in (None, "") else value)
        for key, value in settings.items()
    }
