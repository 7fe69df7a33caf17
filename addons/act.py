"""Act: carry out the decision, and let nothing else leave.

Applies ``hush.decision`` to each request (``requestheaders``) and each
connection-level decision (``hush_tunnel``).  Only after an action that sends
directly has been applied without error does this addon *permit* a direct
connection to that exact host and port for that client connection.

``server_connect`` is the egress guard: mitmproxy asks it before every
connection it dials, and any connection without a permit is refused.  A flow
sent through tor permits only tor's HTTPTunnelPort.  That
covers a decide step that raised, a hook that never ran, a Host that differs
from the address decided, or an action that failed half-way: fail closed.
"""

from __future__ import annotations

import logging

from mitmproxy import connection, http
from mitmproxy.proxy import server_hooks

from hush.addons.actions.base import local_response
from hush.addons.flowinfo import fail_closed
from hush.addons.tunnel import Tunnel
from hush.daemon.policy.hosts import normalize

log = logging.getLogger("hush.act")


class Act:
    def __init__(self):
        self._permits: dict[str, set[tuple[str, int]]] = {}

    def _permit(self, client_id: str, host: str, port: int) -> None:
        self._permits.setdefault(client_id, set()).add((normalize(host), port))

    def revoke(self, client_id: str) -> None:
        """Withdraw every connection permitted to this client (decide found the tunnel must not open)."""
        self._permits.pop(client_id, None)

    def _egress(self, client_id: str, egress: str, host: str, port: int, route) -> None:
        """Permit what the applied action sends: the site itself, or tor."""
        if egress == "direct":
            self._permit(client_id, host, port)
        elif egress == "tor" and route is not None and route.address is not None:
            self._permit(client_id, *route.address)

    def hush_tunnel(self, tunnel: Tunnel) -> None:
        decision = tunnel.decision
        try:
            decision.action.on_tunnel(tunnel)
            if tunnel.outcome is None and not (tunnel.flow and tunnel.flow.response):
                self._egress(tunnel.client_id, decision.action.egress, *(tunnel.address or (tunnel.host, tunnel.port)),
                             tunnel.route)
        except Exception as e:
            log.exception("applying %s to CONNECT %s:%s failed", decision.action.name, tunnel.host, tunnel.port)
            tunnel.error = f"hush failed to apply {decision.action.name}: {e!r}"
            tunnel.decision = fail_closed(tunnel.app, tunnel.error, decision.policy_version, "connect")
            if tunnel.flow is not None:
                tunnel.flow.metadata["hush.decision"] = tunnel.decision
                tunnel.flow.response = local_response(502, tunnel.error, tunnel.decision)

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error:
            return
        decision = flow.metadata.get("hush.decision")
        if decision is None:
            decision = fail_closed(flow.metadata.get("hush.app"), "no decision was made")
            flow.metadata["hush.decision"] = decision
        action = decision.action
        try:
            hold = getattr(action, "hold", None)
            if hold is not None:  # delay / debounce: await, never sleep
                outcome = await hold(flow, decision)
                if outcome is not None:
                    flow.metadata["hush.outcome"] = outcome
                    if flow.response is None:
                        flow.response = local_response(503, f"Not sent ({outcome}): {decision.describe()}", decision)
                    return
                if flow.response is not None or flow.error is not None:
                    return  # answered, or the client left, while held
                action = action.then
            action.on_request(flow, decision)
        except Exception as e:
            log.exception("applying %s to %s failed", decision.action.name, flow.request.pretty_url)
            decision = fail_closed(decision.app, f"failed to apply {decision.action.name}: {e!r}",
                                   decision.policy_version)
            flow.metadata["hush.decision"] = decision
            flow.response = local_response(502, decision.describe(), decision)
            return
        if flow.response is None and flow.error is None:
            self._egress(flow.client_conn.id, action.egress, flow.request.host, flow.request.port,
                         flow.metadata.get("hush.tor"))

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        try:
            # open_connection dials server.address, whatever server.via says
            # (via only works through an upstream-proxy layer, whose own
            # connection to tor is what arrives here): check what is dialled.
            address = data.server.address
            permitted = self._permits.get(data.client.id, ())
            if address is not None and (normalize(address[0]), address[1]) in permitted:
                return
            where = f"{address[0]}:{address[1]}" if address else "an unknown address"
            log.warning("refused a connection to %s that no decision permits", where)
            data.server.error = f"hush: no decision permits a direct connection to {where}"
        except Exception as e:  # the guard itself failing must not open anything
            data.server.error = f"hush: egress check failed: {e!r}"

    def client_disconnected(self, client: connection.Client) -> None:
        self._permits.pop(client.id, None)


addons = [Act()]
