"""The daemon's config file (``~/.config/hush/config.yaml``), read strictly.

::

    state_dir: ~/.local/state/hush    # where audit.db and the CA live
    listen_host: 127.0.0.1            # for policies whose `listen` is only a port (loopback only)
    allow_non_loopback_listeners: false  # true: policies may listen on other addresses (other machines can connect!)
    policies: ~/.config/hush/policies
    organisation_policies: /etc/hush/policies  # the organisation's floor: root's only (docs/policy.md)
    audit:
      redaction: site                 # full | no-query | site
      keep_days: 30                   # delete older records (0: keep forever)
      ship: journald                  # also to the system log: journald | {syslog: "tcp://host:port"} (udp:// too)
      ship_redaction: site            # what is shipped: site | hash | no-query | full (docs/fleet.md)
      ship_queue: 10000               # records held while the collector is away; beyond: dropped, counted
    strip:
      user_agent: "Mozilla/5.0 …"     # what `strip` puts in place of User-Agent
    upstream_ca: /path/to/ca.pem      # extra CAs to trust for sites (intercepted flows)
    log_level: info                   # debug | info | warning | error
    ui:                               # the live view (`hush ui`, docs/ui.md); `ui: false` turns it off
      listen: 127.0.0.1:8100          # loopback only: 127.0.0.0/8 or [::1], and a port (0: any free one);
                                      # not given and 8100 taken (another hush): any free port
    timing:                           # flows held by delay/debounce
      max_held_per_app: 500           # beyond these, new held flows are refused (overflow)
      max_held_total: 1000            # ~30 KB each, ~105 KB if HTTPS is intercepted
    limits:                           # request heads, at every listener; beyond them: 431, audited
      max_headers: 100                # header fields per request (Apache's LimitRequestFields)
      max_header_bytes: 32KiB         # request line and headers (nginx: 4 buffers of 8k)
    tor:                              # used when a policy has `action: tor`
      mode: launch                    # launch (hush runs its own tor) | attach
      control: 127.0.0.1:9051         # attach: control port, or a unix socket path
      password: …                     # attach: control password (default: cookie)
      binary: tor                     # launch: the tor executable
      torrc:                          # launch: extra torrc lines (bridges, a test network)
        - UseBridges 1

Errors come as ``file:line:col: message``, all at once, like policy errors.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from hush.daemon.audit.redaction import DEFAULT_REDACTION, REDACTIONS
from hush.daemon.audit.shipconfig import DEFAULT_SHIP_REDACTION, SHIP_REDACTIONS, parse_syslog_url
from hush.daemon.audit.shipconfig import QUEUE_MAX as SHIP_QUEUE_MAX
from hush.daemon.audit.shipconfig import Target as ShipTarget
from hush.daemon.policy.context import GENERIC_USER_AGENT, ParseContext
from hush.daemon.torconfig import TorConfig
from hush.daemon.yamlschema import INT, STR, LoadError, LocatedError, Location, Reader

LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_ORGANISATION_POLICIES = Path("/etc/hush/policies")


@dataclasses.dataclass(frozen=True)
class Config:
    file: Path | None = None
    state_dir: Path | None = None
    policies: Path | None = None
    organisation_policies: Path = DEFAULT_ORGANISATION_POLICIES  # absent: no floor
    redaction: str = DEFAULT_REDACTION
    keep_days: int = 30
    ship: ShipTarget | None = None  # audit.ship: where audit records go besides audit.db
    ship_redaction: str = DEFAULT_SHIP_REDACTION
    ship_queue: int = SHIP_QUEUE_MAX
    user_agent: str = GENERIC_USER_AGENT
    upstream_ca: Path | None = None
    log_level: str = "info"
    tor: TorConfig = dataclasses.field(default_factory=TorConfig)
    listen_host: str = "127.0.0.1"
    allow_non_loopback: bool = False
    max_held_per_app: int = 500
    max_held_total: int = 1000
    max_headers: int = 100
    max_header_bytes: int = 32 * 1024
    ui_listen: tuple[str, int] | None = ("127.0.0.1", 8100)  # the live view's address; None: `ui: false`
    ui_listen_given: bool = False  # ui.listen written in the config: that address or no live view

    @property
    def parse_context(self) -> ParseContext:
        return ParseContext(user_agent=self.user_agent, listen_host=self.listen_host,
                            allow_non_loopback=self.allow_non_loopback)


def load_config(path: Path | None) -> Config:
    """:raises LoadError: with every error in the file."""
    if path is None:
        return Config()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise LoadError([LocatedError(Location(str(path), 1, 1), f"cannot read: {e}")]) from e
    return parse_config(str(path), text)


def parse_config(file: str, text: str) -> Config:
    reader = Reader(file)
    root = reader.compose(text)
    if root is None:
        raise LoadError(reader.errors)
    fields = reader.mapping(
        root, allowed={"state_dir", "policies", "audit", "strip", "upstream_ca", "log_level", "tor", "listen_host",
                 "timing", "allow_non_loopback_listeners", "limits",
                 "organisation_policies", "ui"},
        what="the config"
    )
    base = Path(file).parent
    values: dict = {"file": Path(file)}

    def path_of(key: str) -> Path | None:
        text = reader.string(fields[key].value, key)
        if text is None:
            return None
        path = Path(text).expanduser()
        return path if path.is_absolute() else base / path

    for key in ("state_dir", "policies", "upstream_ca", "organisation_policies"):
        if key in fields:
            values[key] = path_of(key)
    if "audit" in fields:
        audit = reader.mapping(fields["audit"].value, what="audit",
                               allowed={"redaction", "keep_days", "ship", "ship_redaction", "ship_queue"})
        if "redaction" in audit:
            values["redaction"] = reader.choice(audit["redaction"].value, "audit redaction", REDACTIONS)
        if "keep_days" in audit:
            values["keep_days"] = reader.integer(audit["keep_days"].value, "audit keep_days", 0, 36500)
        if "ship" in audit:
            values["ship"] = _ship(reader, audit["ship"].value)
        if "ship_redaction" in audit:
            values["ship_redaction"] = reader.choice(audit["ship_redaction"].value, "audit ship_redaction",
                                                     SHIP_REDACTIONS)
        if "ship_queue" in audit:
            values["ship_queue"] = reader.integer(audit["ship_queue"].value, "audit ship_queue", 1, 1_000_000)
    if "strip" in fields:
        strip = reader.mapping(fields["strip"].value, allowed={"user_agent"}, what="strip")
        if "user_agent" in strip:
            values["user_agent"] = reader.string(strip["user_agent"].value, "strip user_agent")
    if "log_level" in fields:
        values["log_level"] = reader.choice(fields["log_level"].value, "log_level", LOG_LEVELS)
    if "tor" in fields:
        values["tor"] = _tor(reader, fields["tor"].value)
    if "allow_non_loopback_listeners" in fields:
        values["allow_non_loopback"] = reader.boolean(fields["allow_non_loopback_listeners"].value,
                                                      "allow_non_loopback_listeners")
    if "listen_host" in fields:
        values["listen_host"] = _loopback(reader, fields["listen_host"].value, bool(values.get("allow_non_loopback")))
    if "timing" in fields:
        timing = reader.mapping(fields["timing"].value, allowed={"max_held_per_app", "max_held_total"}, what="timing")
        for key in ("max_held_per_app", "max_held_total"):
            if key in timing:
                values[key] = reader.integer(timing[key].value, f"timing {key}", 0, 1_000_000)
    if "limits" in fields:
        limits = reader.mapping(fields["limits"].value, allowed={"max_headers", "max_header_bytes"}, what="limits")
        if "max_headers" in limits:
            values["max_headers"] = reader.integer(limits["max_headers"].value, "limits max_headers", 1, 10_000)
        if "max_header_bytes" in limits:
            values["max_header_bytes"] = _size(reader, limits["max_header_bytes"].value, "limits max_header_bytes",
                                               1024, 1024 * 1024)
    if "ui" in fields:
        values["ui_listen"] = _ui(reader, fields["ui"].value)
        values["ui_listen_given"] = isinstance(fields["ui"].value, yaml.MappingNode) and any(
            key.value == "listen" for key, _ in fields["ui"].value.value)
    if reader.errors:
        raise LoadError(reader.errors)
    return Config(**values)


_SIZE = re.compile(r"^(\d+)\s*(B|KB|KiB|MB|MiB)?$")
_UNITS = {None: 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 1000**2, "MiB": 1024**2}


def _size(reader: Reader, node, what: str, lo: int, hi: int) -> int | None:
    """``32KiB``, ``64KB``, ``1MiB`` or a number of bytes, between ``lo`` and ``hi``."""
    if isinstance(node, yaml.ScalarNode) and node.tag in (INT, STR):
        m = _SIZE.match(node.value.replace("_", "").strip())
        if m:
            value = int(m.group(1)) * _UNITS[m.group(2)]
            if lo <= value <= hi:
                return value
            reader.error(node, f"{what} must be between {lo} and {hi} bytes, not {node.value}")
            return None
    reader.error(node, f"{what} must be a size such as 32KiB, 64KB or 16384, not {node.value!r}"
                 if isinstance(node, yaml.ScalarNode) else f"{what} must be a size such as 32KiB, 64KB or 16384")
    return None


def _ship(reader: Reader, node) -> ShipTarget | None:
    """``journald``, ``{journald: /path/to/socket}``, ``{syslog: tcp://host:port}`` (or ``udp://``)."""
    expected = "audit ship must be journald, {journald: SOCKET_PATH} or {syslog: \"tcp://HOST:PORT\"} (udp:// too)"
    if isinstance(node, yaml.ScalarNode):
        if node.value == "journald":
            return ShipTarget("journald")
        reader.error(node, f"{expected}, not {node.value!r}")
        return None
    ship = reader.mapping(node, allowed={"journald", "syslog"}, what="audit ship")
    if len(ship) != 1:
        if ship:
            reader.error(node, "audit ship takes one of journald or syslog, not both")
        elif isinstance(node, yaml.MappingNode) and not node.value:
            reader.error(node, expected)
        return None
    if "journald" in ship:
        path = reader.string(ship["journald"].value, "audit ship journald socket")
        return None if path is None else ShipTarget("journald", path=path)
    url = reader.string(ship["syslog"].value, "audit ship syslog")
    if url is None:
        return None
    try:
        return parse_syslog_url(url)
    except ValueError as e:
        reader.error(ship["syslog"].value, str(e))
        return None


def _loopback(reader: Reader, node, allow_non_loopback: bool) -> str | None:
    from hush.daemon.policy.loader import listen_address

    text = reader.string(node, "listen_host")
    return None if text is None else listen_address(reader, node, text, "listen_host", allow_non_loopback)


def _ui(reader: Reader, node) -> tuple[str, int] | None:
    """``ui: false`` (off), ``ui: true`` (the default address) or ``ui: {listen: HOST:PORT}``,
    HOST a loopback address only: the page can change what leaves the machine."""
    import ipaddress

    default = Config.ui_listen
    if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:bool":
        return default if reader.boolean(node, "ui") else None
    fields = reader.mapping(node, allowed={"listen"}, what="ui")
    if "listen" not in fields:
        return default
    value = fields["listen"].value
    text = reader.string(value, "ui listen")
    if text is None:
        return None
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(host)
        number = int(port)
    except ValueError:
        reader.error(value, f"ui listen must be ADDRESS:PORT on loopback, such as 127.0.0.1:8100 or [::1]:8100, "
                     f"not {text!r}")
        return None
    if not sep or not 0 <= number <= 65535:
        reader.error(value, f"ui listen needs a port between 0 and 65535, not {text!r}")
        return None
    if not address.is_loopback:
        reader.error(value, f"ui listen must be a loopback address (127.0.0.0/8 or ::1), not {host}: "
                     "the page can change what leaves this machine")
        return None
    return str(address), number


def _tor(reader: Reader, node) -> TorConfig:
    fields = reader.mapping(node, allowed={"mode", "control", "password", "binary", "torrc"}, what="tor")
    values: dict[str, Any] = {}  # TorConfig's keyword arguments
    if "mode" in fields:
        values["mode"] = reader.choice(fields["mode"].value, "tor mode", ("launch", "attach"))
    for key in ("control", "password", "binary"):
        if key in fields:
            values[key] = reader.string(fields[key].value, f"tor {key}")
    if "torrc" in fields:
        lines = []
        for item in reader.sequence(fields["torrc"].value, "tor torrc"):
            line = reader.string(item, "torrc line")
            if line is None:
                continue
            key = line.split(None, 1)[0]
            if key in ("DataDirectory", "ControlPort", "ControlSocket", "HTTPTunnelPort", "SocksPort", "Log"):
                reader.error(item, f"torrc line '{key}' is set by hush itself")
            else:
                lines.append(line)
        values["torrc"] = tuple(lines)
    if values.get("mode") == "attach" and not values.get("control"):
        reader.error(node, "tor mode attach needs 'control' (HOST:PORT or a socket path)")
    return TorConfig(**{k: v for k, v in values.items() if v is not None})
