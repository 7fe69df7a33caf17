"""Act: carry out the decision, and let nothing else leave.

Applies the decision noted on each request (``requestheaders``) and each
connection-level decision (``hush_tunnel``).  Only after an action that sends
directly has been applied without error does this addon *permit* a direct
connection to that exact host and port for that client connection.

``server_connect`` is the egress guard: mitmproxy asks it before every
connection it dials, and any connection without a permit is refused.  A flow
sent through tor permits only tor's HTTPTunnelPort.  That
covers a decide step that raised, a hook that never ran, a Host that differs
from the address decided, or an action that failed half-way: fail closed.

Permits are the connection's own state (``conn_notes``): they end with it.
``chain()`` hands act what applying an action may use (``Services``: timing
for held flows, torroute for tor), identify (which app a connection is under a
new policy set) and timing (its held flows, on a reload).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import weakref
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from mitmproxy import connection, ctx, http
from mitmproxy.proxy import server_hooks

from hush.addons.actions.base import Holding, Services, local_response
from hush.addons.flowinfo import fail_closed
from hush.addons.notes import conn_notes, notes
from hush.addons.tunnel import Tunnel, stop_relay
from hush.daemon.launch.server import app_of_spec
from hush.daemon.policy.hosts import is_ip, normalize, this_machine
from hush.daemon.policy.model import Decision, PolicySet, stricter

if TYPE_CHECKING:
    from mitmproxy.proxy.server import ConnectionHandler

    from hush.addons.identify import Identify
    from hush.addons.timing import Timing
    from hush.addons.torroute import Route, TorRoute

log = logging.getLogger("hush.act")


REVOKED = "revoked"


def launched(client: connection.Client) -> bool:
    """A connection of an app started with ``hush launch`` (its mode names the launch)."""
    mode = getattr(client, "proxy_mode", None)
    return app_of_spec(getattr(mode, "full_spec", "") or "") is not None


def tunnel_decision(policyset: PolicySet, tunnel: Tunnel, app: str | None) -> Decision | None:
    """How ``policyset`` decides an open tunnel: on its target, on the address
    it was permitted to and on the TLS name it let through when those differ
    (the stricter applies);
    None when it would be decided only per request."""
    from hush.addons.decide import connect_decision

    decision = connect_decision(policyset, app, tunnel.host, tunnel.port)
    for other in (tunnel.address, (tunnel.sni, tunnel.port) if tunnel.sni else None):
        if other is not None and decision is not None:
            by_other = connect_decision(policyset, app, *other)
            decision = None if by_other is None else stricter(decision, by_other)
    return decision


def more_strictly(old: Decision, new: Decision | None) -> bool:
    """``new`` lets less reach the site than ``old`` (or needs to see requests
    that a relayed tunnel never shows)."""
    return new is None or stricter(old, new) is new


class Act:
    def __init__(self, identify: Identify | None = None, timing: Timing | None = None,
                 router: TorRoute | None = None):
        self.identify = identify
        self.timing = timing
        self.services = Services(timing, router)
        # the tunnels relayed on a connection-level decision, by key in the order they were relayed,
        # while their connection lives (a reload re-decides them)
        self._tunnels: weakref.WeakValueDictionary[str, Tunnel] = weakref.WeakValueDictionary()

    @staticmethod
    def revoke(client: connection.Client) -> None:
        """Withdraw every connection permitted to this client (decide found the tunnel must not open)."""
        conn_notes(client).permits.clear()

    @staticmethod
    def _egress(client: connection.Client, egress: str, host: str, port: int, route: Route | None) -> None:
        """Permit what the applied action sends: the site itself, or tor."""
        permits = conn_notes(client).permits
        if egress == "direct":
            permits.add((normalize(host), port))
        elif egress == "tor" and route is not None:
            permits.add((normalize(route.address[0]), route.address[1]))

    def hush_tunnel(self, tunnel: Tunnel) -> None:
        decision = tunnel.decision
        if decision is None:
            return  # inspected: nothing decided at connection level
        try:
            decision.action.on_tunnel(tunnel, decision, self.services)
            if tunnel.outcome is None and not (tunnel.flow and tunnel.flow.response) and tunnel.client is not None:
                self._egress(tunnel.client, decision.action.egress, *(tunnel.address or (tunnel.host, tunnel.port)),
                             tunnel.route)
                if decision.action.egress != "none":
                    self._relay(tunnel.client, tunnel)
        except Exception as e:
            log.exception("applying %s to CONNECT %s:%s failed", decision.action.name, tunnel.host, tunnel.port)
            tunnel.error = f"hush failed to apply {decision.action.name}: {e!r}"
            tunnel.decision = fail_closed(tunnel.app, tunnel.error, decision.policy_version, "connect")
            if tunnel.flow is not None:
                notes(tunnel.flow).decision = tunnel.decision
                tunnel.flow.response = local_response(502, tunnel.error, tunnel.decision)

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error:
            return
        n = notes(flow)
        decision = n.decision
        if decision is None:
            decision = n.decision = fail_closed(n.app, "no decision was made")
        action = decision.action
        try:
            if isinstance(action, Holding):  # delay / debounce: await, never sleep
                outcome = await action.hold(flow, decision, self.services)
                if outcome is not None:
                    n.outcome = outcome
                    if flow.response is None:
                        flow.response = local_response(503, f"Not sent ({outcome}): {decision.describe()}", decision)
                    return
                if flow.response is not None or flow.error is not None:
                    return  # answered, or the client left, while held
                if n.decision is not None and n.decision is not decision:  # ask: its answer or fallback decides
                    decision = n.decision
                    action = decision.action
                else:
                    action = action.then
            action.on_request(flow, decision, self.services)
        except Exception as e:
            log.exception("applying %s to %s failed", decision.action.name, flow.request.pretty_url)
            decision = n.decision = fail_closed(decision.app, f"failed to apply {decision.action.name}: {e!r}",
                                                decision.policy_version)
            flow.response = local_response(502, decision.describe(), decision)
            return
        if flow.response is None and flow.error is None:
            self._egress(flow.client_conn, action.egress, flow.request.host, flow.request.port, n.tor)

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> Coroutine[Any, Any, None] | None:
        """The egress guard.  Synchronous (the front door calls it so), except
        for a launch's connection to a name: then it returns the check of what
        the name resolves to (:meth:`_launch_name`), which mitmproxy awaits
        before it dials."""
        try:
            # open_connection dials server.address, whatever server.via says
            # (via only works through an upstream-proxy layer, whose own
            # connection to tor is what arrives here): check what is dialled.
            address = data.server.address
            permitted = conn_notes(data.client).permits
            if address is not None and (normalize(address[0]), address[1]) in permitted:
                if (launched(data.client) and not data.server.error and data.server.via is None
                        and not is_ip(normalize(address[0]))):  # through tor: the exit resolves it, never here
                    return self._launch_name(data, address[0], address[1])
                return None
            where = f"{address[0]}:{address[1]}" if address else "an unknown address"
            log.warning("refused a connection to %s that no decision permits", where)
            data.server.error = f"hush: no decision permits a direct connection to {where}"
        except Exception as e:  # the guard itself failing must not open anything
            data.server.error = f"hush: egress check failed: {e!r}"
        return None

    def _own_address_allowed(self, client: connection.Client, address: str, port: int) -> bool:
        """Whether the app's policy lets it reach this machine's ``address`` by a rule naming that
        address (``net: 127.0.0.0/8``, ``host: 127.0.0.1``) — the first such rule that matches,
        in order, and lets it through directly —, not by its default nor a rule that names no
        address: a name that resolves to this machine is dialled only then."""
        identify = self.identify
        try:
            policyset = identify.holder.current if identify is not None else None
            app = identify.app_for(client, policyset)[0] if identify is not None else None
            policy = policyset.policies.get(app) if policyset is not None and app is not None else None
            if policy is None:
                return False
            rule = policy.rule_naming(normalize(address.split("%")[0]), port)
            return rule is not None and rule.action.egress == "direct"
        except Exception:
            log.exception("deciding whether a launch may reach %s failed; refused", address)
        return False

    async def _launch_name(self, data: server_hooks.ServerConnectionHookData, host: str, port: int) -> None:
        """A launch's connection to a name is dialled by the daemon, on the host's
        network: if the name resolves (here, as mitmproxy will, getaddrinfo in a
        thread) to this machine's loopback, unspecified or a link-local address,
        it would reach the host's own services (hush's UI, tor's ports), which a
        launched app must not reach — refused before any connection is made,
        unless a rule of the app's policy allows that address itself."""
        try:
            try:
                found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError:
                return  # mitmproxy's own lookup fails the same way: nothing is dialled
            for *_, sockaddr in found:
                why = this_machine(str(sockaddr[0]))
                if why and not self._own_address_allowed(data.client, str(sockaddr[0]), port):
                    log.warning("refused a launch's connection to %s:%s: it resolves to %s", host, port, sockaddr[0])
                    data.server.error = (f"hush: {host} resolves to {sockaddr[0]}, {why}: "
                                         "a launched app does not reach the host's own services")
                    return
        except Exception as e:  # the check failing must not open anything
            data.server.error = f"hush: egress check failed: {e!r}"

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        """A launch's connection whose name resolved anew, between the check
        above and mitmproxy's own lookup, to one of this machine's addresses
        (DNS rebinding): closed now, before a byte is sent on it."""
        address = data.server.address
        if (not launched(data.client) or data.server.peername is None or data.server.via is not None
                or address is None or is_ip(normalize(address[0]))):
            return  # only a name dialled here can have resolved anew (tor's port is dialled by its address)
        why = this_machine(str(data.server.peername[0]))
        if not why or self._own_address_allowed(data.client, str(data.server.peername[0]), data.server.peername[1]):
            return
        where = data.server.address
        error = f"hush: {where[0] if where else '?'} resolved to {data.server.peername[0]}, {why}, when dialled"
        log.warning("closed a launch's connection: %s", error)
        data.server.error = error
        self.revoke(data.client)
        tunnel = conn_notes(data.client).tunnel
        if tunnel is not None and tunnel.error is None:
            tunnel.error = error  # its audit row says why
        handler = self._handler(data.client.id)
        io = handler.transports.get(data.server) if handler is not None else None
        transport = getattr(io.writer, "transport", None) if io is not None else None
        if transport is not None:
            transport.abort()  # nothing buffered yet; what the layers write next is dropped
        elif handler is not None:
            handler.close_connection(data.server)

    def _relay(self, client: connection.Client, tunnel: Tunnel) -> None:
        state = conn_notes(client)
        if state.relayed is not None:
            self._tunnels.pop(state.relayed.key, None)
        state.relayed = tunnel
        self._tunnels[tunnel.key] = tunnel

    def _unrelay(self, client: connection.Client | None) -> None:
        if client is None:
            return
        state = conn_notes(client)
        if state.relayed is not None:
            self._tunnels.pop(state.relayed.key, None)
            state.relayed = None

    def client_disconnected(self, client: connection.Client) -> None:
        self.revoke(client)
        self._unrelay(client)

    # -- a reload -------------------------------------------------------------------------

    def policy_changed(self, old: PolicySet | None, new: PolicySet) -> int:
        """A new policy set replaced ``old``.  Every open tunnel (relayed on a
        decision made at connection level) and every held flow that ``new``
        treats more strictly is closed, never sent on, and audited
        ``revoked``; the others keep going.  Returns how many were revoked."""
        revoked = 0
        for tunnel in list(self._tunnels.values()):
            if tunnel.error is not None or tunnel.outcome is not None:
                continue  # refused since it was permitted (its TLS named a stricter host): closing already
            try:
                if self._revoke_tunnel(tunnel, new):
                    revoked += 1
            except Exception as e:  # fail closed: a tunnel that cannot be re-decided is closed
                log.exception("re-deciding the tunnel to %s:%s failed", tunnel.host, tunnel.port)
                self._close(tunnel, f"revoked on reload: hush could not decide it under policy set {new.version}: "
                                    f"{e!r}")
                revoked += 1
        if self.timing is not None:
            revoked += self.timing.policy_changed(old, new)
        if revoked:
            log.warning("policy set %s: closed %d tunnel(s) and held flow(s) it treats more strictly",
                        new.version, revoked)
        return revoked

    def _revoke_tunnel(self, tunnel: Tunnel, new: PolicySet) -> bool:
        app = tunnel.app
        handler = self._handler(tunnel.client_id)
        client = handler.client if handler is not None else tunnel.client  # the front door's has no handler
        if self.identify is not None and client is not None:
            # a shared listener's policies may name it otherwise now
            app = self.identify.app_for(client, new)[0]
        decision = tunnel_decision(new, tunnel, app) if app == tunnel.app else None
        if tunnel.decision is None or not more_strictly(tunnel.decision, decision):
            return False
        if decision is None:
            why = f"app {app or 'none'}, not {tunnel.app}" if app != tunnel.app else "decided only per request"
        else:
            why = f"{decision.action.name} by {decision.describe()}"
        self._close(tunnel, f"revoked on reload: policy set {new.version} decides {tunnel.host}:{tunnel.port} "
                            f"{why}")
        return True

    def _close(self, tunnel: Tunnel, why: str) -> None:
        if tunnel.client is not None:
            self.revoke(tunnel.client)  # nothing new leaves, whatever the close below does
        stop_relay(tunnel.client_id)  # a spliced tunnel: both sockets shut down now
        self._unrelay(tunnel.client)
        self._tunnels.pop(tunnel.key, None)
        tunnel.outcome, tunnel.error = REVOKED, why
        log.warning("%s", why)
        handler = self._handler(tunnel.client_id)
        if handler is not None:
            handler.close_connection(handler.client)  # its end: client_disconnected, hush_tunnel_end, the audit
        elif tunnel.close is not None:
            tunnel.close()  # relayed by the front door: the same end, from there

    @staticmethod
    def _handler(client_id: str) -> ConnectionHandler | None:
        """mitmproxy's handler of a client connection (its proxyserver addon's, the one lookup kept)."""
        master = getattr(ctx, "master", None)
        proxyserver = master.addons.get("proxyserver") if master else None
        return getattr(proxyserver, "connections", {}).get(client_id) if proxyserver is not None else None


addons = [Act()]
