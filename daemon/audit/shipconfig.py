"""What ``audit.ship`` names, as the config reads it: where to, and how redacted.

Apart from :mod:`hush.daemon.audit.ship` (the thread that sends) so that
reading the config imports no sockets, threads or hashes (``hush status``
and the policy commands start fast).
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from typing import Literal

SHIP_REDACTIONS = ("full", "no-query", "site", "hash")
DEFAULT_SHIP_REDACTION = "site"
JOURNAL_SOCKET = "/run/systemd/journal/socket"
QUEUE_MAX = 10_000  # records held while the collector is away (audit.ship_queue)


# -- where to ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    kind: Literal["journald", "tcp", "udp"]
    host: str = ""
    port: int = 0
    path: str = JOURNAL_SOCKET  # journald's socket

    def __str__(self) -> str:
        if self.kind == "journald":
            return "journald" if self.path == JOURNAL_SOCKET else f"journald ({self.path})"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"syslog {self.kind}://{host}:{self.port}"


def parse_syslog_url(text: str) -> Target:
    """``tcp://host:port`` or ``udp://host:port`` (``[v6]:port``).

    :raises ValueError: saying what is wrong with ``text``
    """
    try:
        parts = urllib.parse.urlsplit(text)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"not a syslog address ({e}): {text!r}; expected tcp://HOST:PORT or udp://HOST:PORT") from None
    if parts.scheme not in ("tcp", "udp"):
        raise ValueError(f"syslog address must start with tcp:// or udp://, not {text!r}")
    if not parts.hostname or port is None or port == 0:
        raise ValueError(f"syslog address needs a host and a port: {text!r}; expected {parts.scheme}://HOST:PORT")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"syslog address has more than HOST:PORT: {text!r}")
    return Target(parts.scheme, parts.hostname, port)  # type: ignore[arg-type]
