"""Connection-level decisions, and the hooks that announce them.

A *tunnel* is a client connection whose destination is known before any HTTP
request is seen: a CONNECT on an HTTP listener, or any connection on a SOCKS5
listener.  SOCKS5 connections have no flow to carry ``flow.metadata``, so the
decide addon announces every connection-level decision with the custom hook
``hush_tunnel(tunnel)`` and its end with ``hush_tunnel_end(tunnel)``; act and
audit implement those hooks.
"""

from __future__ import annotations

import dataclasses
import time

from mitmproxy import hooks, http

from hush.daemon.policy.model import Decision, PolicySet


@dataclasses.dataclass(eq=False)
class Tunnel:
    client_id: str
    app: str | None
    listener: str
    host: str
    port: int
    policyset: PolicySet | None
    decision: Decision | None = None  # None: the requests inside are inspected
    flow: http.HTTPFlow | None = None  # the CONNECT, on HTTP listeners
    user_agent: str | None = None  # the CONNECT's own User-Agent, if any
    started: float = dataclasses.field(default_factory=time.time)
    ended: float | None = None
    error: str | None = None
    outcome: str | None = None  # what happened instead of the decision (e.g. "tor-unavailable")
    route: object | None = None  # a torroute.Route when the tunnel goes through tor
    # where a direct connection goes, when that is not (host, port): a SOCKS5
    # client that resolved the name itself gives an address, and the TLS SNI
    # names the host
    address: tuple[str, int] | None = None


@dataclasses.dataclass
class HushTunnelHook(hooks.Hook):
    """A connection was decided without seeing a request."""

    tunnel: Tunnel


@dataclasses.dataclass
class HushTunnelEndHook(hooks.Hook):
    """A decided tunnel's client connection closed (or hush is stopping)."""

    tunnel: Tunnel
