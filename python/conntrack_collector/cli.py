"""The `conntrack-event-collector` command: the reference's flags first, then ours."""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import rich_click as click
from click.core import ParameterSource

from . import FILTER_LISTS, _native, config, filter_items, observers, vault
from .broker import (
    DEFAULT_BATCH_BYTES,
    DEFAULT_BATCH_EVENTS,
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_MAX_IN_FLIGHT,
    BrokerConfigError,
    BrokerSettings,
    parse_hosts,
)
from .buffer import default_max_bytes
from .collector import RunSettings, open_stream, run
from .command import version_line
from .errors import Error, ExitCode
from .kernel_tuning import KernelTuningError, netns_path, tune_kernel
from .router_id import default_router_id
from .stats import CollectorStats

# --max-buffer-bytes by default, for this machine (buffer.default_max_bytes).
MAX_BUFFER_BYTES = default_max_bytes()

PROG = "conntrack-event-collector"
EVENT_TYPES = tuple(_native.EVENT_TYPES)
# Options that are not settings: they cannot come from the file or the environment.
NOT_SETTINGS = frozenset({"help", "config", "print_config"})
AMQP_NAME_BYTES = 255  # an exchange or vhost name is an AMQP shortstr
MAX_SOCKET_BUFFER_BYTES = (1 << 30) - 1  # the most the kernel grants (it doubles the value)
MAX_SECONDS = 86_400.0  # a timeout of a day or more is a typo

log = logging.getLogger("conntrack_collector")


class EventTypes(click.ParamType):  # type: ignore[type-arg]
    """`NEW,DESTROY` (or a YAML list) -> ("NEW", "DESTROY")."""

    name = "types"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[str, ...]:
        items = value if isinstance(value, (list, tuple)) else str(value).split(",")
        types = tuple(str(item).strip().upper() for item in items if str(item).strip())
        bad = [t for t in types if t not in EVENT_TYPES]
        if bad or not types:
            self.fail(f"{value!r}: expected a comma-separated list of {', '.join(EVENT_TYPES)}",
                      param, ctx)
        return tuple(dict.fromkeys(types))  # de-duplicated, in the given order


class FieldNames(click.ParamType):  # type: ignore[type-arg]
    """`state,zone` (or a YAML list) -> ("state", "zone"); empty: the reference's message."""

    name = "fields"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[str, ...]:
        items = value if isinstance(value, (list, tuple)) else str(value).split(",")
        fields = tuple(str(item).strip().lower() for item in items if str(item).strip())
        bad = [f for f in fields if f not in _native.FIELDS]  # the Rust schema's names
        if bad:
            self.fail(f"{value!r}: expected a comma-separated list of {', '.join(_native.FIELDS)}",
                      param, ctx)
        return tuple(dict.fromkeys(fields))
class FilterList(click.ParamType):  # type: ignore[type-arg]
    """`tcp,udp` / `10.0.0.0/8,fd00::/8` (or a YAML list) -> a tuple, checked by the same
    parser as the reader's (a bad item is a usage error)."""

    def __init__(self, key: str, metavar: str) -> None:
        self.key = key
        self.name = metavar.lower()

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> tuple[str, ...]:
        items = filter_items(value if isinstance(value, (str, list, tuple)) else str(value))
        try:
            _native.check_filter({self.key: items})
        except ValueError as exc:
            self.fail(str(exc).split(": ", 1)[-1], param, ctx)
        return tuple(dict.fromkeys(items))


class Text(click.ParamType):  # type: ignore[type-arg]
    """A string the broker or Vault will read: UTF-8 (a byte that is not, from argv or the
    environment, could never be sent), no NUL (AMQP PLAIN's separator); an AMQP name (exchange,
    vhost) is a shortstr, at most 255 bytes, and not empty. The value itself is never echoed:
    it may be a password."""

    name = "text"

    def __init__(self, max_bytes: int | None = None, empty: bool = True) -> None:
        self.max_bytes = max_bytes
        self.empty = empty

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        text = str(value)
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            self.fail("not UTF-8 text", param, ctx)
        if "\0" in text:
            self.fail("contains a NUL character", param, ctx)
        if not text and not self.empty:
            self.fail("must not be empty", param, ctx)
        if self.max_bytes is not None and size > self.max_bytes:
            self.fail(f"{size} bytes long: an AMQP name holds at most {self.max_bytes} bytes",
                      param, ctx)
        return text


class Hosts(Text):
    """`host[:port],...`, checked now so that --print-config shows it can work; the run
    parses it again with the port of --amqp-port."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        text = super().convert(value, param, ctx)
        try:
            parse_hosts(text, 1)
        except BrokerConfigError as exc:
            self.fail(str(exc), param, ctx)
        return text


class Seconds(click.FloatRange):
    """A duration: a range, and finite (`nan` passes any range, as no comparison holds)."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        seconds: float = super().convert(value, param, ctx)
        if math.isnan(seconds):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


class Address(Text):
    """`--metrics-addr`: `HOST:PORT` (empty: no metrics)."""

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        text = super().convert(value, param, ctx)
        if text:
            from .metrics import MetricsAddressError, parse_address  # prometheus_client: only then

            try:
                parse_address(text)
            except MetricsAddressError as err:
                self.fail(str(err), param, ctx)
        return text


def _load_settings(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """Eager: runs before the other options, so the file and the environment become their
    defaults (click's default_map) and the command line still wins over both."""
    env: Mapping[str, str] = ctx.obj["env"]
    keys = [p.name for p in ctx.command.params if p.name and p.name not in NOT_SETTINGS]
    path_text = value or env.get(config.env_name("config"))
    warnings: list[str] = ctx.meta.setdefault("warnings", [])
    path = Path(path_text) if path_text else config.find_config_file(env, skipped=warnings)
    list_keys = [p.name for p in ctx.command.params
                 if p.name and isinstance(p.type, (EventTypes, FieldNames, FilterList))]
    try:
        from_file = config.load_config_file(path, keys, list_keys) if path else {}
    except config.ConfigError as exc:
        raise click.UsageError(str(exc), ctx) from None
    from_env = config.env_settings(env, keys)
    params = {p.name: p for p in ctx.command.params}
    checked: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for source, values in ((f"config file {path}", from_file), ("environment", from_env)):
        for key, raw in values.items():
            label = config.env_name(key) if source == "environment" else f"{source}: {key}"
            try:
                checked[key] = params[key].type_cast_value(ctx, raw)
            except click.BadParameter as exc:
                raise click.UsageError(f"{label}: {exc.format_message()}", ctx) from None
            sources[key] = "environment" if source == "environment" else str(path)
    ctx.default_map = checked
    ctx.meta["sources"] = sources
    return value


def tune_kernel_for(netns: str | None) -> None:
    """`--tune-kernel`. A namespace that does not exist is left to the stream to report."""
    if netns is not None and not netns_path(netns).exists():
        return
    try:
        tune_kernel(netns)
    except KernelTuningError as err:
        raise Error(f"--tune-kernel: {err}",
                    ExitCode.USAGE if err.usage else ExitCode.ERROR) from None


def write_out(text: str) -> None:
    """Standard output that cannot be written (a full disk, /dev/full) is one line, exit 1;
    one nobody reads any more (`| head`) is EPIPE, which click ends quietly, exit 1."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise Error(f"cannot write to standard output: {exc.strerror or exc}",
                    ExitCode.ERROR) from None


def _show_help(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    """-h/--help, as click's own but through write_out."""
    if value and not ctx.resilient_parsing:
        write_out(ctx.get_help() + "\n")
        ctx.exit()


# The reference's flags, its help texts and defaults; `string`/`int` as its help showed them.
@click.group(
    name=PROG,
    invoke_without_command=True,
    # The help's width as a mapping, not rich_config(RichHelpConfiguration): that imports rich
    # at start-up, which only help needs.
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True,
                      "max_content_width": 100, "rich_help_config": {"width": 100}},
    help="Watch the Linux connection-tracking table and publish every event as JSON "
         "to a RabbitMQ exchange.",
    # The reference's help texts stay as they were; what they leave out is said here.
    epilog="--amqp-host also takes the nodes of a cluster, `host[:port],...`, tried in order. "
           "A password given with --amqp-password (a token with --vault-token) is visible in "
           "`ps` (a warning says so): prefer OWP_AMQP_PASSWORD (OWP_VAULT_TOKEN), the config "
           "file or Vault's credentials. With a Vault "
           "token, the secrets at the Vault paths override the AMQP settings, and the "
           "credentials' lease is renewed. Every flag can be set as OWP_<FLAG> "
           "(OWP_AMQP_HOST, ...) or in conntrack-event-collector.yml (/etc/owp, /etc/config/owp, $HOME/.owp, .); a flag "
           "wins over the environment, which wins over the file. See docs/cli.md.",
)
@click.option_panel("Flags", options=[
    "--amqp-ca", "--amqp-crt", "--amqp-exchange", "--amqp-host", "--amqp-key",
    "--amqp-password", "--amqp-port", "--amqp-user", "--help", "--verbose", "--nat-only",
    "--vault-addr", "--vault-path-config", "--vault-path-creds", "--vault-token"])
@click.option_panel("Collector flags", options=[
    "--netns", "--events", "--fields", "--buffer-size", "--reliable", "--output", "--amqp-vhost",
    "--router-id", "--max-buffer-events", "--max-buffer-bytes", "--max-in-flight",
    "--batch-events", "--batch-bytes", "--gap-records", "--shutdown-timeout", "--connect-timeout",
    "--config", "--print-config"])
@click.option_panel("Filters (in the kernel)", options=[
    "--accept-protocols", "--ignore-protocols", "--accept-addresses", "--ignore-addresses",
    "--accept-tcp-states", "--ignore-tcp-states"])
@click.option_panel("Operations", options=["--metrics-addr", "--tune-kernel"])
@click.help_option("-h", "--help", help="help for this command", callback=_show_help)
@click.option("--amqp-ca", metavar="string", help="CA certificate")
@click.option("--amqp-crt", metavar="string", help="RabbitMQ client cert")
@click.option("--amqp-exchange", metavar="string", type=Text(AMQP_NAME_BYTES, empty=False),
              default="conntrack", help="RabbitMQ Exchange")
@click.option("--amqp-host", metavar="string", type=Hosts(), default="localhost",
              help="RabbitMQ Host")
@click.option("--amqp-key", metavar="string", help="RabbitMQ client key")
@click.option("--amqp-password", metavar="string", type=Text(), default="guest",
              help="RabbitMQ password")
@click.option("--amqp-port", metavar="int", type=click.IntRange(1, 65535), default=5672,
              help="RabbitMQ Port")
@click.option("--amqp-user", metavar="string", type=Text(), default="guest",
              help="RabbitMQ user")
@click.option("-v", "--verbose", is_flag=True, default=False, help="Enable verbose")
@click.option("-n", "--nat-only", is_flag=True, default=False, help="Track nat only")
@click.option("--vault-addr", metavar="string", type=Text(), default="http://127.0.0.1:8200",
              help="Vault address")
@click.option("--vault-path-config", metavar="string", type=Text(),
              default="secret/owp/conntrack-event-collector",
              help="Vault Config Path for rabbitmq")
@click.option("--vault-path-creds", metavar="string", type=Text(), default="rabbitmq/creds/owp",
              help="Vault Credentials Path for rabbitmq")
@click.option("--vault-token", metavar="string", type=Text(), help="Vault Token")
# Ours.
@click.option("--netns", metavar="NAME", type=Text(empty=False),
              help="Watch this network namespace (a name under /run/netns, or a path); "
                   "the broker connection stays in ours")
@click.option("--events", type=EventTypes(), default=",".join(_native.DEFAULT_TYPES), metavar="TYPES",
              help="Event types, comma-separated: NEW, UPDATE, DESTROY")
@click.option("--fields", type=FieldNames(), default="", metavar="LIST",
              help="Keys added after ASSURED, comma-separated: timestamps (Start, Stop, "
                   "Duration), state, zone, mark, labels, icmp, status; see docs/cli.md")
@click.option("--buffer-size", type=click.IntRange(4096, MAX_SOCKET_BUFFER_BYTES),
              default=_native.DEFAULT_BUFFER_BYTES, metavar="BYTES",
              help="Netlink socket receive buffer, absorbs bursts before they are read")
@click.option("--reliable", is_flag=True, default=False,
              help="Ask the kernel for reliable event delivery (NETLINK_BROADCAST_ERROR + "
                   "NETLINK_NO_ENOBUFS): it retries DESTROY events instead of dropping them; NEW "
                   "and UPDATE are still dropped (counted) when the buffer is full")
@click.option("--output", type=click.Choice(["amqp", "stdout"], case_sensitive=False),
              default="amqp", help="Where events go: RabbitMQ, or one JSON object per line")
@click.option("--amqp-vhost", metavar="string", type=Text(AMQP_NAME_BYTES, empty=False),
              default="/", help="RabbitMQ virtual host")
@click.option("--router-id", metavar="string", type=Text(),
              help="The `router_id` header  [default: SHA-256 of the first up interface's MAC, "
                   "12 hex digits]")
@click.option("--max-buffer-events", type=click.IntRange(1), default=500_000, metavar="N",
              help="Events held while the broker is slow or away; beyond, new events are "
                   "dropped (counted, logged)")
@click.option("--max-buffer-bytes", type=click.IntRange(1), default=MAX_BUFFER_BYTES,
              metavar="BYTES", show_default=False,
              help="The same bound in bytes: the JSON of the events held, waiting or with the "
                   "publisher, and their overhead  [default: 1/8 of MemTotal, within 16 MiB-1 "
                   f"GiB: {MAX_BUFFER_BYTES} here]")
@click.option("--max-in-flight", type=click.IntRange(1, 65535), default=DEFAULT_MAX_IN_FLIGHT,
              metavar="N",
              help="Messages published and not yet confirmed")
@click.option("--batch-events", type=click.IntRange(1, 100_000), default=DEFAULT_BATCH_EVENTS,
              metavar="N",
              help="Up to N events per message, body a JSON array (AMQP type "
                   "`conntrack.events.batch`); 1 = one event per message, as the reference")
@click.option("--batch-bytes", type=click.IntRange(1024, 512 << 20), default=DEFAULT_BATCH_BYTES,
              metavar="BYTES",
              help="With --batch-events: a batch's body at most this many bytes, under the "
                   "broker's max_message_size (RabbitMQ 4: 16 MiB)")
@click.option("--gap-records", is_flag=True, default=False,
              help="When events are lost (kernel, full buffer, stop), publish a gap record "
                   "(AMQP type `conntrack.gap`, body {\"Type\": \"GAP\", \"Lost\": N, ...}) "
                   "where they were; off: consumers of the reference's messages expect events "
                   "only. Every message has a `sequence` header either way; see "
                   "docs/completeness.md")
@click.option("--shutdown-timeout", type=Seconds(0, MAX_SECONDS), default=10.0, metavar="SECONDS",
              help="On SIGTERM/SIGINT, how long to wait for outstanding confirms")
@click.option("--connect-timeout", type=Seconds(0.1, MAX_SECONDS),
              default=DEFAULT_CONNECT_TIMEOUT_S, metavar="SECONDS",
              help="Per host, for TCP, TLS and AMQP handshakes")
@click.option("--config", metavar="PATH", is_eager=True, expose_value=True,
              callback=_load_settings,
              help="YAML config file  [default: the first conntrack-event-collector.yml in "
                   "/etc/owp, /etc/config/owp, $HOME/.owp, .]")
@click.option("--print-config", is_flag=True, default=False,
              help="Print the effective configuration (secrets hidden) and exit")
@click.option("--accept-protocols", type=FilterList("accept_protocols", "LIST"), default=(),
              metavar="LIST", show_default=False,
              help="Only events of these IP protocols, comma-separated: tcp, udp, udplite, icmp, "
                   "icmpv6, sctp, gre, dccp or numbers")
@click.option("--ignore-protocols", type=FilterList("ignore_protocols", "LIST"), default=(),
              metavar="LIST", show_default=False,
              help="All events but those of these IP protocols")
@click.option("--accept-addresses", type=FilterList("accept_addresses", "CIDRS"), default=(),
              metavar="CIDRS", show_default=False,
              help="Only events whose original source or destination is in one of these "
                   "addresses or subnets (10.0.0.0/8,fd00::/8); a list of one family keeps "
                   "every event of the other")
@click.option("--ignore-addresses", type=FilterList("ignore_addresses", "CIDRS"), default=(),
              metavar="CIDRS", show_default=False,
              help="All events but those whose original source or destination is in one of "
                   "these addresses or subnets")
@click.option("--accept-tcp-states", type=FilterList("accept_tcp_states", "STATES"), default=(),
              metavar="STATES", show_default=False,
              help="Only TCP events in these states (SYN_SENT, ESTABLISHED, TIME_WAIT, ...); "
                   "other protocols, and TCP events that carry no state, pass")
@click.option("--ignore-tcp-states", type=FilterList("ignore_tcp_states", "STATES"), default=(),
              metavar="STATES", show_default=False,
              help="All TCP events but those in these states")
@click.option("--metrics-addr", metavar="HOST:PORT", type=Address(),
              help="Serve Prometheus metrics at http://HOST:PORT/metrics (:PORT: every interface)")
@click.option("--tune-kernel", is_flag=True, default=False,
              help="Set net.netfilter.nf_conntrack_acct, _timestamp and _events to 1 where the "
                   "events are watched, logging each change")
@click.pass_context
def cli(ctx: click.RichContext, /, **options: Any) -> int:
    if ctx.invoked_subcommand is not None:
        return ExitCode.OK
    # In the order of the help, not the order click happened to process them.
    effective = {p.name: options[p.name] for p in ctx.command.params
                 if p.name in options and p.name not in NOT_SETTINGS}
    # The computed id is a SHA-256, and hashlib loads OpenSSL (3.5 MiB resident): made only
    # where it is sent (publishing) or shown (--print-config, -v).
    if not effective["router_id"] and (effective["output"].lower() == "amqp"
                                       or options["print_config"] or effective["verbose"]):
        effective["router_id"] = default_router_id()
    warnings = [*ctx.meta.get("warnings", ()), *_secrets_warnings(ctx)]
    if options["print_config"]:
        for warning in warnings:  # stdout stays the configuration alone
            click.echo(f"{PROG}: warning: {warning}", err=True)
        write_out(_describe(ctx, effective))
        return ExitCode.OK
    _setup_logging(effective["verbose"])
    for warning in warnings:
        log.warning("%s", warning)
    if effective["verbose"]:
        log.info("effective configuration:\n%s", _describe(ctx, effective).rstrip())
    credentials, from_vault = _apply_vault(ctx, effective)
    try:
        hosts = parse_hosts(effective["amqp_host"], effective["amqp_port"])
    except BrokerConfigError as exc:
        if "amqp_host" in from_vault:
            raise Error(f"Vault: the host in {effective['vault_path_config']}: {exc}",
                        ExitCode.ERROR) from None
        raise click.UsageError(f"--amqp-host: {exc}", ctx) from None
    settings = RunSettings(
        types=effective["events"],
        netns=effective["netns"],
        nat_only=effective["nat_only"],
        socket_buffer_bytes=effective["buffer_size"],
        reliable=effective["reliable"],
        filter_lists=tuple((name, effective[name]) for name in FILTER_LISTS if effective[name]),
        output=effective["output"].lower(),
        broker=BrokerSettings(
            hosts=hosts,
            vhost=effective["amqp_vhost"],
            user=effective["amqp_user"],
            password=effective["amqp_password"],
            exchange=effective["amqp_exchange"],
            router_id=effective["router_id"],
            ca=effective["amqp_ca"],
            crt=effective["amqp_crt"],
            key=effective["amqp_key"],
            connect_timeout_s=effective["connect_timeout"],
        ),
        max_buffer_events=effective["max_buffer_events"],
        max_buffer_bytes=effective["max_buffer_bytes"],
        max_in_flight=effective["max_in_flight"],
        batch_events=effective["batch_events"],
        batch_bytes=effective["batch_bytes"],
        shutdown_timeout_s=effective["shutdown_timeout"],
        fields=effective["fields"],
        credentials=credentials,
        gap_records=effective["gap_records"],
    )
    stats = CollectorStats()
    if effective["tune_kernel"]:
        tune_kernel_for(effective["netns"])
    with observers.observing(stats, metrics_addr=effective["metrics_addr"],
                             verbose=effective["verbose"],
                             events_to_stdout=settings.output == "stdout") as watching, \
            vault.running(credentials):
        return run(settings, stats, stream_factory=watching.watch(open_stream))


def _apply_vault(ctx: click.Context, effective: dict[str, Any]
                 ) -> tuple[vault.VaultCredentials | None, dict[str, Any]]:
    """With a Vault address and token: the config secret's AMQP settings put into
    `effective` (as the reference, they win over flags, environment and file), checked as
    the same flags are, and the credentials; also the settings Vault gave."""
    vault_settings = vault.settings_from(effective)
    if vault_settings is None:
        return None, {}
    try:  # hvac is imported only now, when Vault is used
        given = vault.connect(vault_settings)
    except vault.VaultError as exc:
        raise Error(f"Vault: {exc}", ExitCode.ERROR) from None
    params = {p.name: p for p in ctx.command.params}
    vault_key = {setting: key for key, setting in vault.AMQP_SETTING_BY_KEY.items()}
    for setting, value in given.overrides.items():
        try:
            params[setting].type_cast_value(ctx, value)
        except click.BadParameter as exc:
            raise Error(f"Vault: the {vault_key[setting]} in {vault_settings.path_config}: "
                        f"{exc.message}", ExitCode.ERROR) from None
    effective.update(given.overrides)
    return given.credentials, given.overrides


def _secrets_warnings(ctx: click.Context) -> list[str]:
    """One line per secret given as a flag (never the secret itself)."""
    return [f"--{key.replace('_', '-')} on the command line is visible to every user in `ps` "
            f"and /proc/PID/cmdline: give it as {safe_ways} instead"
            for key, safe_ways in config.COMMAND_LINE_SECRETS.items()
            if ctx.get_parameter_source(key) == ParameterSource.COMMANDLINE]


def _describe(ctx: click.Context, effective: Mapping[str, Any]) -> str:
    """YAML of the effective settings, secrets hidden, each with where it came from."""
    import yaml  # only here and when a file is read: it costs start-up time

    sources: Mapping[str, str] = ctx.meta.get("sources", {})
    lines = []
    for key, value in config.redacted(effective).items():
        if ctx.get_parameter_source(key) == ParameterSource.COMMANDLINE:
            source = "command line"
        else:
            source = sources.get(key, "default")
        shown = list(value) if isinstance(value, tuple) else value
        text = yaml.safe_dump({key: shown}, default_flow_style=True, width=1000).strip()
        lines.append(f"{text.strip('{}')}  # {source}")
    return "\n".join(lines) + "\n"


def _setup_logging(verbose: bool) -> None:
    """Log lines to stderr through the root logger (the live display re-routes its handlers).
    Not basicConfig: it does nothing when a handler exists already (pytest's, a caller's)."""
    global _log_handler
    root = logging.getLogger()
    if _log_handler is not None:  # main() called again in the same process (tests)
        root.removeHandler(_log_handler)
    _log_handler = logging.StreamHandler(sys.stderr)
    _log_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root.addHandler(_log_handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # pika logs every reconnect attempt at length; we say it in one line ourselves.
    logging.getLogger("pika").setLevel(logging.WARNING if verbose else logging.CRITICAL)
    # Vault's HTTP client would log every request line; our own lines say what matters.
    logging.getLogger("urllib3").setLevel(logging.WARNING)


_log_handler: logging.Handler | None = None


@cli.command(name="version", help="Print the version.")
def version() -> None:
    write_out(version_line() + "\n")


@cli.command(name="help", help="Help about any command")
@click.argument("command", required=False)
@click.pass_context
def help_(ctx: click.Context, command: str | None) -> None:
    """`help` as the reference's (cobra's): `help` alone, or `help version`."""
    parent = ctx.parent
    assert parent is not None
    if command is None:
        write_out(parent.get_help() + "\n")
        return
    sub = cli.get_command(parent, command)
    if sub is None:
        raise click.UsageError(f"unknown command {command!r} for help", ctx)
    with sub.context_class(sub, info_name=command, parent=parent) as sub_ctx:
        write_out(sub.get_help(sub_ctx) + "\n")


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """Run the command; returns the exit code. Tests pass argv and env; the console script
    passes nothing (sys.argv, os.environ)."""
    args = list(sys.argv[1:] if argv is None else argv)
    environment = dict(os.environ if env is None else env)
    try:
        result = cli.main(args=args, prog_name=PROG, obj={"env": environment},
                          standalone_mode=False)
    except click.UsageError as exc:
        return _error(exc.format_message().rstrip(".") + " (see --help)", ExitCode.USAGE)
    except click.ClickException as exc:
        return _error(exc.format_message(), ExitCode(exc.exit_code) if exc.exit_code in
                      ExitCode._value2member_map_ else ExitCode.ERROR)
    except Error as exc:
        return _error(str(exc), exc.code)
    except (KeyboardInterrupt, click.Abort):
        return ExitCode.INTERRUPTED
    except Exception as exc:  # a bug: still one line, no traceback (-v logs it)
        logging.getLogger("conntrack_collector").debug("internal error", exc_info=True)
        return _error(f"internal error: {exc!r} (please report it)", ExitCode.ERROR)
    return int(result) if isinstance(result, int) else ExitCode.OK


def _error(message: str, code: ExitCode) -> int:
    one_line = " ".join(message.split())
    print(f"{PROG}: error: {one_line}", file=sys.stderr)
    return code
