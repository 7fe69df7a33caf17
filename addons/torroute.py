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
from typing import TYPE_CHECKING, Optional

from mitmproxy import connection, ctx, http
from mitmproxy.net.server_spec import ServerSpec
from mitmproxy.proxy import layers
from mitmproxy.proxy.layers.http._upstream_proxy import HttpUpstreamProxy

from hush.daemon.policy.hosts import normalize, site_of

if TYPE_CHECKING:
    from hush.addons.tunnel import Tunnel

log = logging.getLogger("hush.tor")


@dataclasses.dataclass(eq=False)
class Route:
    """How one flow (or tunnel) went through tor."""

    isolation: str
    address: tuple[str, int] | None  # tor's HTTPTunnelPort used
    source_port: int | None = None  # our end of the connection to tor
    circuit: str | None = None
    exit: tuple[str, str] | None = None  # (fingerprint, nickname)


class _StaticTor:
    """A tor hush does not manage (mitmdump -s): assumed ready."""

    def __init__(self, address: tuple[str, int]):
        self.tunnel_address = address
        self.ready = True
        self.reason = "configured with hush_tor_tunnel"
        self.stream_callbacks: list = []


def isolation_key(isolation: str, app: str | None, host: str) -> str:
    if isolation == "site":
        return f"hush/{app}/site/{site_of(host)}"
    if isolation == "flow":
        return f"hush/{app}/flow/{uuid.uuid4().hex}"
    return f"hush/{app}"


class TorRoute:
    def __init__(self, manager=None):
        self.manager = manager  # hush.daemon.tor.TorManager, set by the daemon
        self._pending: dict[str, dict[tuple[str, int], Route]] = {}  # client id → target → route
        self._tunnels: dict[str, tuple[str, int, Route, Tunnel]] = {}
        self._by_port: dict[int, Route] = {}
        self._ports: dict[str, list[int]] = {}
        self._refused: set[str] = set()  # SOCKS5 tunnels tor could not carry: close them

    def load(self, loader):
        loader.add_option(
            "hush_tor_tunnel", Optional[str], None,  # noqa: UP045 (mitmproxy reads typing.Optional)
            "HOST:PORT of a running tor's HTTPTunnelPort, for the tor action under mitmdump -s "
            "(the hush daemon runs its own tor).",
        )

    def configure(self, updated):
        if "hush_tor_tunnel" in updated and ctx.options.hush_tor_tunnel:
            host, _, port = ctx.options.hush_tor_tunnel.rpartition(":")
            self.set_manager(_StaticTor((host or "127.0.0.1", int(port))))

    def set_manager(self, manager) -> None:
        self.manager = manager
        if self._on_stream not in manager.stream_callbacks:
            manager.stream_callbacks.append(self._on_stream)

    def unavailable(self) -> str | None:
        """Why nothing can go through tor now, or None."""
        if self.manager is None:
            return "no tor is configured"
        if not self.manager.ready:
            return f"tor is not ready: {self.manager.reason}"
        return None

    # -- called by the tor action ------------------------------------------------------

    def _route(self, client_id: str, host: str, port: int, key: str) -> Route:
        targets = self._pending.setdefault(client_id, {})
        route = targets.get((host, port))
        if route is None or route.isolation != key or route.address != self.manager.tunnel_address:
            route = Route(key, self.manager.tunnel_address)
            targets[(host, port)] = route
        return route

    def route_request(self, flow: http.HTTPFlow, isolation: str) -> str | None:
        """Send ``flow`` through tor; return why not if it cannot be."""
        why = self.unavailable()
        if why:
            return why
        host = normalize(flow.request.host)
        key = isolation_key(isolation, flow.metadata.get("hush.app"), host)
        route = self._route(flow.client_conn.id, host, flow.request.port, key)
        # This flow's own server object: the one it starts with is shared by every
        # request of the client connection (mitmproxy forks contexts shallowly), and
        # a ``via`` set on it would send the connection's later requests through tor.
        flow.server_conn = connection.Server(address=flow.server_conn.address, via=ServerSpec(("http", route.address)))
        flow.metadata["hush.tor"] = route
        return None

    def route_tunnel(self, tunnel, isolation: str) -> str | None:
        why = self.unavailable()
        if why:
            if tunnel.flow is None:
                self._refused.add(tunnel.client_id)
            return why
        key = isolation_key(isolation, tunnel.app, tunnel.host)
        route = self._route(tunnel.client_id, tunnel.host, tunnel.port, key)
        tunnel.route = route
        self._tunnels[tunnel.client_id] = (tunnel.host, tunnel.port, route, tunnel)
        return None

    # -- mitmproxy hooks ------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """A flow not routed through tor must not dial tor: drop a ``via`` it
        did not get from ``route_request`` (one left on a shared server object)."""
        if flow.metadata.get("hush.tor") is None and flow.server_conn.via is not None \
                and flow.server_conn.timestamp_start is None:
            flow.server_conn = connection.Server(address=flow.server_conn.address)

    def next_layer(self, nextlayer) -> None:
        client = nextlayer.context.client
        if client.id in self._refused:
            # relay nothing: with no permit the guard refuses the dial, the connection closes
            self._refused.discard(client.id)
            nextlayer.layer = layers.TCPLayer(nextlayer.context, ignore=True)
            return
        entry = self._tunnels.get(client.id)
        if entry is None:
            return
        host, port, route, tunnel = entry
        if nextlayer.layer is None:
            return  # decide is still waiting for the whole ClientHello: nothing is relayed before it is checked
        if tunnel.error is not None:
            # decide refused it (its ClientHello names a host treated more strictly, or does not
            # parse): relay nothing; with its permits withdrawn the guard refuses the dial
            del self._tunnels[client.id]
            nextlayer.layer = layers.TCPLayer(nextlayer.context, ignore=True)
            return
        server = nextlayer.context.server
        if server.address is None or (normalize(server.address[0]), server.address[1]) != (host, port):
            return
        del self._tunnels[client.id]
        if isinstance(getattr(nextlayer.layer, "inner", nextlayer.layer), layers.HttpLayer):
            # Plain HTTP in the tunnel: mitmproxy reads it, so each request is decided on its
            # own (its Host header too) and a request decided `tor` is routed here (`via`).
            # Relayed raw, a Host naming a blocked site would have reached it through the exit.
            return
        # CONNECT host:port to tor, then relay the app's bytes untouched.
        server.via = ServerSpec(("http", route.address))
        stack = HttpUpstreamProxy.make(nextlayer.context, True)
        stack /= layers.TCPLayer(nextlayer.context, ignore=True)
        nextlayer.layer = stack[0]

    def http_connect_upstream(self, flow: http.HTTPFlow) -> None:
        client_id = flow.client_conn.id
        target = (normalize(flow.request.host), flow.request.port)
        route = self._pending.get(client_id, {}).get(target)
        if route is None:  # not one of ours: still never share a circuit with the apps
            log.warning("CONNECT to tor for %s:%s without a route", *target)
            flow.request.headers["X-Tor-Stream-Isolation"] = f"hush/unrouted/{uuid.uuid4().hex}"
            return
        flow.request.headers["X-Tor-Stream-Isolation"] = route.isolation
        sockname = flow.server_conn.sockname
        if sockname:
            route.source_port = sockname[1]
            self._by_port[sockname[1]] = route
            self._ports.setdefault(client_id, []).append(sockname[1])

    def _on_stream(self, source_port: int, circ_id: str, circuit) -> None:
        route = self._by_port.pop(source_port, None)
        if route is not None:
            route.circuit = circ_id
            route.exit = circuit.exit if circuit is not None else None

    def client_disconnected(self, client: connection.Client) -> None:
        self._refused.discard(client.id)
        self._pending.pop(client.id, None)
        self._tunnels.pop(client.id, None)
        for port in self._ports.pop(client.id, ()):
            self._by_port.pop(port, None)


addons = [TorRoute()]
