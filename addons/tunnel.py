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
import uuid
from typing import TYPE_CHECKING

from mitmproxy import connection, hooks, http
from mitmproxy.proxy import commands, context, events, layer

from hush.daemon.policy.model import Decision, PolicySet

if TYPE_CHECKING:
    from hush.addons.torroute import Route


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
    route: Route | None = None  # set when the tunnel goes through tor
    # where a direct connection goes, when that is not (host, port): a SOCKS5
    # client that resolved the name itself gives an address, and the TLS SNI
    # names the host
    address: tuple[str, int] | None = None
    # the TLS SNI, when it named another host than the target and was let through
    sni: str | None = None
    # the audit row's key: the row written when the decision is applied is
    # completed in place when the tunnel connects and when it closes
    key: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)
    # the client connection (None for a connection refused before mitmproxy saw it)
    client: connection.Client | None = None


@dataclasses.dataclass
class HushTunnelHook(hooks.Hook):
    """A connection was decided without seeing a request."""

    tunnel: Tunnel


@dataclasses.dataclass
class HushTunnelEndHook(hooks.Hook):
    """A decided tunnel's client connection closed (or hush is stopping)."""

    tunnel: Tunnel


@dataclasses.dataclass
class Tally:
    """Bytes hush relayed for one client connection: ``up`` sent towards the
    site (or tor), ``down`` sent to the app."""

    up: int = 0
    down: int = 0


class Counted(layer.Layer):
    """A layer in front of another that counts the bytes the layers under it
    send, and changes nothing.  Put in front of a tunnel's contents (in
    ``next_layer``), it counts what a relay that has no flow (TLS passed
    through untouched, a tunnel into tor) carried.  Like mitmproxy's
    ``NextLayer`` it is not in ``context.layers``: the layers under it find
    their parents as before."""

    def __init__(self, context: context.Context, inner: layer.Layer, tally: Tally):
        super().__init__(context)
        self.context.layers.remove(self)
        self.inner = inner
        self.tally = tally

    def handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        client = self.context.client
        for command in self.inner.handle_event(event):
            if isinstance(command, commands.SendData):
                if command.connection is client:
                    self.tally.down += len(command.data)
                else:
                    self.tally.up += len(command.data)
            yield command

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:  # pragma: no cover
        # never called: handle_event is overridden
        yield from self.handle_event(event)

    def __repr__(self):
        return f"Counted:{self.inner!r}"
