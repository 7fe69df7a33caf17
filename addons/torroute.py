"""TorRoute: carry flows the policy sends through Tor into tor's HTTPTunnelPort.

- An inspected request: ``flow.server_conn.via`` is set to tor's
  HTTPTunnelPort in ``requestheaders``; mitmproxy then sends ``CONNECT
  host:port`` to tor — with the *name*, never an address resolved here.
- A tunnel decided at connection level (CONNECT, SOCKS5): in ``next_layer``
  an upstream-proxy layer is put in front of a TCP relay, so the app's own
  TLS goes through tor untouched.  This uses mitmproxy's layer classes, a
  private API: it lives in this file only, and pyproject pins mitmproxy 12.2.
- ``http_connect_upstream``: the CONNECT to tor carries the isolation key in
  ``X-Tor-Stream-Isolation`` (tor's IsolateSOCKSAuth, on by default, puts
  streams with different keys on different circuits).  The local port of
  that connection is how tor's STREAM events are matched back to the flow,
  so the audit can name the circuit and exit that carried it.

If tor is not ready, nothing is routed: the tor action answers at once
(503, or a refused CONNECT) and the flow is audited ``tor-unavailable``.
Under a stock ``mitmdump -s``, ``--set hush_tor_tunnel=127.0.0.1:PORT`` names
a running tor's HTTPTunnelPort (assumed ready).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
import weakref
from typing import TYPE_CHECKING, Protocol

from mitmproxy import addonmanager, connection, ctx, http
from mitmproxy.net.server_spec import ServerSpec
from mitmproxy.proxy import layers
from mitmproxy.proxy.layers.http._upstream_proxy import HttpUpstreamProxy

from hush.addons.notes import conn_notes, notes
from hush.daemon.policy.hosts import normalize, site_of

if TYPE_CHECKING:
    from mitmproxy.proxy.layer import NextLayer

    from hush.addons.tunnel import Tunnel
    from hush.daemon.tor import Circuit, StreamCallback

log = logging.getLogger("hush.tor")


@dataclasses.dataclass(eq=False)
class Route:
    """How one flow (or tunnel) went through tor."""

    isolation: str
    address: tuple[str, int]  # tor's HTTPTunnelPort used
    source_port: int | None = None  # our end of the connection to tor
    circuit: str | None = None
    exit: tuple[str, str] | None = None  # (fingerprint, nickname)


class Tor(Protocol):
    """What torroute needs of a tor (``hush.daemon.tor.TorManager``, or ``_StaticTor``)."""

    @property
    def tunnel_address(self) -> tuple[str, int] | None: ...
    @property
    def ready(self) -> bool: ...
    @property
    def reason(self) -> str: ...
    @property
    def stream_callbacks(self) -> list[StreamCallback]: ...


class _StaticTor:
    """A tor hush does not manage (mitmdump -s): assumed ready."""

    def __init__(self, address: tuple[str, int]):
        self.tunnel_address: tuple[str, int] | None = address
        self.ready = True
        self.reason = "configured with hush_tor_tunnel"
        self.stream_callbacks: list[StreamCallback] = []


def bootstrap_text(manager: object) -> str:
    """``; bootstrapped 14% (handshake: Handshaking with a relay)``, from the daemon's
    tor (``TorManager.bootstrap``), or nothing for a tor that reports no progress."""
    phase = getattr(manager, "bootstrap", None)
    progress = getattr(phase, "progress", None)
    if not isinstance(progress, int) or (progress == 0 and not getattr(phase, "tag", "")):
        return ""
    tag, summary = getattr(phase, "tag", "") or "", getattr(phase, "summary", "") or ""
    what = ": ".join(x for x in (tag, summary) if x)
    return f"; bootstrapped {progress}%" + (f" ({what})" if what else "")


class _Unshared(tuple):
    """tor's address for a flow that must have its own connection to tor
    (``isolation: flow``).  mitmproxy hands a request an open upstream
    connection whose (address, TLS, ``via``) equal the request's — one kept
    alive, or one still being opened for another flow — and the circuit is
    chosen once per connection, by its CONNECT's isolation key.  An address
    equal only to itself makes ``via`` match no other flow's connection."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return self is other

    def __ne__(self, other: object) -> bool:
        return self is not other

    __hash__ = object.__hash__


def isolation_key(isolation: str, app: str | None, host: str) -> str:
    if isolation == "site":
        return f"hush/{app}/site/{site_of(host)}"
    if isolation == "flow":
        return f"hush/{app}/flow/{uuid.uuid4().hex}"
    return f"hush/{app}"


class TorRoute:
    def __init__(self, manager: Tor | None = None):
        # our end of each connection to tor → its route, for tor's STREAM events (the
        # routes themselves are their connection's state, conn_notes: they end with it)
        self._by_port: weakref.WeakValueDictionary[int, Route] = weakref.WeakValueDictionary()
        self.manager: Tor | None = None  # hush.daemon.tor.TorManager, handed over by chain()
        if manager is not None:
            self.set_manager(manager)

    def load(self, loader: addonmanager.Loader) -> None:
        loader.add_option(
            # mitmproxy types typespec as `type`, but takes (and compares equal) X | None
            "hush_tor_tunnel", str | None, None,  # type: ignore[arg-type]
            "HOST:PORT of a running tor's HTTPTunnelPort, for the tor action under mitmdump -s "
            "(the hush daemon runs its own tor).",
        )

    def configure(self, updated: set[str]) -> None:
        if "hush_tor_tunnel" in updated and ctx.options.hush_tor_tunnel:
            host, _, port = ctx.options.hush_tor_tunnel.rpartition(":")
            self.set_manager(_StaticTor((host or "127.0.0.1", int(port))))

    def set_manager(self, manager: Tor) -> None:
        self.manager = manager
        if self._on_stream not in manager.stream_callbacks:
            manager.stream_callbacks.append(self._on_stream)

    def unavailable(self) -> str | None:
        """Why nothing can go through tor now, or None."""
        if self.manager is None:
            return "no tor is configured"
        if not self.manager.ready:
            return f"tor is not ready: {self.manager.reason}{bootstrap_text(self.manager)}"
        return None

    def _tunnel_port(self) -> tuple[tuple[str, int], None] | tuple[None, str]:
        """(tor's HTTPTunnelPort, None), or (None, why nothing can go through tor now)."""
        why = self.unavailable()
        if why is None and self.manager is not None and self.manager.tunnel_address is not None:
            return self.manager.tunnel_address, None
        return None, why or "tor has no HTTPTunnelPort"

    # -- called by the tor action ------------------------------------------------------

    @staticmethod
    def _route(client: connection.Client, host: str, port: int, key: str, address: tuple[str, int]) -> Route:
        targets = conn_notes(client).routes
        route = targets.get((host, port))
        if route is None or route.isolation != key or route.address != address:
            route = Route(key, address)
            targets[(host, port)] = route
        return route

    def route_request(self, flow: http.HTTPFlow, isolation: str) -> str | None:
        """Send ``flow`` through tor; return why not if it cannot be."""
        address, why = self._tunnel_port()
        if address is None:
            return why
        host = normalize(flow.request.host)
        n = notes(flow)
        key = isolation_key(isolation, n.app, host)
        route = self._route(flow.client_conn, host, flow.request.port, key, address)
        tor_address = route.address
        if isolation == "flow":  # its own connection to tor, whose CONNECT finds this route by it
            tor_address = _Unshared(route.address)
            conn_notes(flow.client_conn).routes[tor_address] = route
        # This flow's own server object: the one it starts with is shared by every
        # request of the client connection (mitmproxy forks contexts shallowly), and
        # a ``via`` set on it would send the connection's later requests through tor.
        via: ServerSpec = ("http", tor_address)
        flow.server_conn = connection.Server(address=flow.server_conn.address, via=via)
        n.tor = route
        return None

    def route_tunnel(self, tunnel: Tunnel, isolation: str) -> str | None:
        client = tunnel.client
        address, why = self._tunnel_port()
        if client is None:
            return "the tunnel has no client connection"
        if address is None:
            if tunnel.flow is None:
                conn_notes(client).tor_refused = True
            return why
        key = isolation_key(isolation, tunnel.app, tunnel.host)
        tunnel.route = self._route(client, tunnel.host, tunnel.port, key, address)
        conn_notes(client).tor_tunnel = tunnel
        return None

    # -- mitmproxy hooks ------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """A flow not routed through tor must not dial tor: drop a ``via`` it
        did not get from ``route_request`` (one left on a shared server object)."""
        if notes(flow).tor is None and flow.server_conn.via is not None \
                and flow.server_conn.timestamp_start is None:
            flow.server_conn = connection.Server(address=flow.server_conn.address)

    def next_layer(self, nextlayer: NextLayer) -> None:
        state = conn_notes(nextlayer.context.client)
        if state.tor_refused:
            # relay nothing: with no permit the guard refuses the dial, the connection closes
            state.tor_refused = False
            nextlayer.layer = layers.TCPLayer(nextlayer.context, ignore=True)
            return
        tunnel = state.tor_tunnel
        if tunnel is None or tunnel.route is None:
            return
        host, port, route = tunnel.host, tunnel.port, tunnel.route
        if nextlayer.layer is None:
            return  # decide is still waiting for the whole ClientHello: nothing is relayed before it is checked
        if tunnel.error is not None:
            # decide refused it (its ClientHello names a host treated more strictly, or does not
            # parse): relay nothing; with its permits withdrawn the guard refuses the dial
            state.tor_tunnel = None
            nextlayer.layer = layers.TCPLayer(nextlayer.context, ignore=True)
            return
        server = nextlayer.context.server
        if server.address is None or (normalize(server.address[0]), server.address[1]) != (host, port):
            return
        state.tor_tunnel = None
        if isinstance(getattr(nextlayer.layer, "inner", nextlayer.layer), layers.HttpLayer):
            # Plain HTTP in the tunnel: mitmproxy reads it, so each request is decided on its
            # own (its Host header too) and a request decided `tor` is routed here (`via`).
            # Relayed raw, a Host naming a blocked site would have reached it through the exit.
            return
        # CONNECT host:port to tor, then relay the app's bytes untouched.
        server.via = ("http", route.address)
        stack = HttpUpstreamProxy.make(nextlayer.context, True)
        stack /= layers.TCPLayer(nextlayer.context, ignore=True)
        nextlayer.layer = stack[0]

    def http_connect_upstream(self, flow: http.HTTPFlow) -> None:
        target = (normalize(flow.request.host), flow.request.port)
        routes = conn_notes(flow.client_conn).routes
        tor_address = flow.server_conn.address  # an isolation: flow route is found by its own address
        route = routes.pop(tor_address, None) if isinstance(tor_address, _Unshared) else routes.get(target)
        if route is None:  # not one of ours: still never share a circuit with the apps
            log.warning("CONNECT to tor for %s:%s without a route", *target)
            flow.request.headers["X-Tor-Stream-Isolation"] = f"hush/unrouted/{uuid.uuid4().hex}"
            return
        flow.request.headers["X-Tor-Stream-Isolation"] = route.isolation
        sockname = flow.server_conn.sockname
        if sockname:
            route.source_port = sockname[1]
            self._by_port[sockname[1]] = route

    def _on_stream(self, source_port: int, circ_id: str, circuit: Circuit | None) -> None:
        route = self._by_port.pop(source_port, None)
        if route is not None:
            route.circuit = circ_id
            route.exit = circuit.exit if circuit is not None else None

    def client_disconnected(self, client: connection.Client) -> None:
        state = conn_notes(client)
        for route in state.routes.values():  # tor's later events for them match nothing
            for port, routed in list(self._by_port.items()):
                if routed is route:
                    del self._by_port[port]
        state.tor_refused, state.routes, state.tor_tunnel = False, {}, None


addons = [TorRoute()]
