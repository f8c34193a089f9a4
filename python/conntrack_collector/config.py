"""Where settings come from: the YAML file and the OWP_* environment.

Precedence, highest first: a flag on the command line, the environment (`OWP_` + the key
upper-cased), the file `conntrack-event-collector.yml`, the defaults. The command line module
feeds the environment and the file to click as its `default_map`, so click's own precedence
(command line > default_map > default) does the rest.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import yaml

CONFIG_FILE_NAME = "conntrack-event-collector.yml"
MAX_CONFIG_BYTES = 1 << 20  # a config file is a few hundred bytes
ENV_PREFIX = "OWP_"
# Never logged or printed: only shown as "***".
SECRET_KEYS = frozenset({"amqp_password", "amqp_key", "vault_token"})
# Secrets that are values, not paths: visible in `ps` when given on the command line; each
# with the ways to give it that nobody else can read.
COMMAND_LINE_SECRETS = {
    "amqp_password": "OWP_AMQP_PASSWORD, the config file (mode 0600) or Vault (--vault-addr "
                     "and OWP_VAULT_TOKEN)",
    "vault_token": "OWP_VAULT_TOKEN or the config file (mode 0600)",
}


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


def find_config_file(env: Mapping[str, str], skipped: list[str] | None = None) -> Path | None:
    """The first file of the search path that exists. A folder we may not look into (HOME
    still root's under `sudo -u`) is skipped, and said in `skipped`: it is only a place the
    file might have been, unlike a file that is there, which `load_config_file` must read."""
    for path in search_path(env):
        try:
            if path.is_file():
                return path
        except OSError as exc:
            if skipped is not None:
                where = path if path.is_absolute() else f"{path} in the current folder"
                skipped.append(f"cannot look for {where}: {exc.strerror or exc}; skipped")
    return None


@functools.cache
def _text_loader() -> type[yaml.SafeLoader]:
    """The loader, made the first time a file is read: PyYAML costs start-up time."""
    import yaml

    class _TextLoader(yaml.SafeLoader):
        """YAML whose plain scalars all stay text, as typed: YAML 1.1 would make `0123` 83, `no`
        False and `12:30` 750. Each key's own type converts the text (click's, as for a flag or
        an environment variable). Only null (`~`, `null`, nothing) is kept: a key not set."""

        yaml_implicit_resolvers = {  # noqa: RUF012 (PyYAML's own class attribute)
            first: [(tag, regexp) for tag, regexp in resolvers if tag == "tag:yaml.org,2002:null"]
            for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
        }

        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: set[object] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                name = str(key).replace("-", "_")
                if name in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(name)
            return super().construct_mapping(node, deep)

    return _TextLoader


def load_config_file(path: Path, known_keys: Iterable[str],
                     list_keys: Iterable[str] = ()) -> dict[str, Any]:
    """The file's settings, text or (for `list_keys`) lists of text; keys may be spelled
    `amqp_host` or `amqp-host`; a key set to null is left out (not set)."""
    try:
        with path.open("rb") as file:  # not only a regular file: `--config <(...)` is a pipe
            raw = file.read(MAX_CONFIG_BYTES + 1)  # bounded: /dev/zero never ends
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text") from None
    import yaml  # only when a file is read: it costs start-up time

    try:
        data = yaml.load(text, Loader=_text_loader())  # a SafeLoader: safe
    except RecursionError:
        raise ConfigError(f"config file {path}: lists or mappings nested too deep") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {path}{where}: {problem}") from None
    if data is None:  # an empty file is a valid, empty configuration
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path}: expected `key: value` lines, got {_kind(data)}")
    known = set(known_keys)
    lists = set(list_keys)
    settings: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in known:
            raise ConfigError(
                f"config file {path}: unknown key {raw_key!r} (known: {', '.join(sorted(known))})"
            )
        if value is None:
            continue
        items = value if isinstance(value, list) and key in lists else [value]
        wrong = next((item for item in items if isinstance(item, (list, dict))), None)
        if wrong is not None:
            wanted = "a list of values" if key in lists else "one value"
            raise ConfigError(
                f"config file {path}: {raw_key}: expected {wanted}, got {_kind(wrong)}")
        settings[key] = value
    return settings


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def env_settings(env: Mapping[str, str], known_keys: Iterable[str]) -> dict[str, str]:
    """`OWP_AMQP_HOST=x` -> {"amqp_host": "x"}, for the known keys only. An empty variable
    is not set, as for the reference (viper's default) and click's own envvar."""
    return {key: env[env_name(key)] for key in known_keys if env.get(env_name(key))}


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper()


def redacted(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings with secrets replaced, fit for a log line."""
    return {
        key: ("***" if key in SECRET_KEYS and value not in (None, "") else value)
        for key, value in settings.items()
    }
