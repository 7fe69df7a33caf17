"""Decide: the first matching rule of the app's policy, at the earliest level.

A CONNECT (HTTP listener) or a new connection (SOCKS5 listener) is decided at
*connection level* when every rule that can match its host needs only host and
port: the TLS inside is then relayed untouched, or refused, and no CA is
involved.  Otherwise the connection is intercepted and each request is decided
on its own (``requestheaders``).  The decision is noted on the flow
(``notes(flow).decision``); connection-level ones are also announced with the
``hush_tunnel`` hook.  ``chain()`` hands it identify (the app of a connection
with no CONNECT) and act (whose permits it withdraws from a tunnel it refuses).

Whatever goes wrong here (no app for the listener, no policy loaded, an
exception) becomes a fail-closed decision: nothing leaves.  This addon also
pins ``connection_strategy=lazy``: with ``eager`` mitmproxy would contact the
site — TCP and, for TLS, the handshake with its SNI — before any hook runs.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from mitmproxy import connection, ctx, hooks, http, tcp, tls
from mitmproxy.net.tls import starts_like_tls_record
from mitmproxy.proxy.layers.tcp import TCPLayer
from mitmproxy.proxy.layers.tls import parse_client_hello
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from hush.addons.flowinfo import drop_proxy_headers, fail_closed, request_info
from hush.addons.notes import conn_notes, notes
from hush.addons.tunnel import HushTunnelEndHook, HushTunnelHook, Tunnel
from hush.daemon.handshake import RECORD_TYPES, tls_record_start
from hush.daemon.policy.hosts import normalize
from hush.daemon.policy.model import Decision, PolicySet, RequestInfo, stricter

if TYPE_CHECKING:
    from mitmproxy.proxy.layer import NextLayer

    from hush.addons.act import Act
    from hush.addons.identify import Identify

log = logging.getLogger("hush.decide")

# SOCKS5 reply codes (RFC 1928, 6.) for a connection refused before its reply
SOCKS5_GENERAL_FAILURE = 0x01  # hush could not decide (fail closed), or tor cannot carry it
SOCKS5_NOT_ALLOWED = 0x02  # "connection not allowed by ruleset": the policy blocks the destination

MAX_CLIENT_HELLO = 64 * 1024  # waited for before a Tor-routed tunnel is relayed; more is refused
UNREADABLE = object()  # a ClientHello that does not parse


def client_hello_sni(data: bytes):
    """From a connection's first bytes: None while a ClientHello is still
    arriving, ``UNREADABLE`` if it does not parse, else ``(sni,)`` — the name
    it asks for (``(None,)``: no name, or not TLS at all).  No byte yet is
    still arriving: a client that has said nothing has not said it is not TLS."""
    record = tls_record_start(data)
    if record is None:
        return None  # nothing yet, or the start of what may be a TLS record
    if not starts_like_tls_record(data):
        # a record mitmproxy does not take for a ClientHello: a handshake record whose version is
        # above 0x0303 (OpenSSL takes any minor version), or another record first (OpenSSL skips
        # empty change_cipher_spec records, then reads the hello): a name no one checked
        return UNREADABLE if record or data[:1] == b"\x16" else (None,)
    try:
        hello = parse_client_hello(data)
    except ValueError:
        return UNREADABLE
    if hello is None:
        return None if len(data) < MAX_CLIENT_HELLO else UNREADABLE
    return (hello.sni,)


def connect_decision(policyset: PolicySet | None, app: str | None, host: str, port: int) -> Decision | None:
    """The connection-level decision, None to inspect, or a fail-closed one."""
    if policyset is None:
        return fail_closed(app, "no policy loaded", level="connect")
    if app is None:
        return fail_closed(app, "no policy owns this listener", policyset.version, "connect")
    try:
        return policyset.decide_connect(app, host, port)
    except Exception as e:  # fail closed, never open
        log.exception("deciding CONNECT %s:%s for %s failed", host, port, app)
        return fail_closed(app, f"error while deciding: {e!r}", policyset.version, "connect")


class Decide:
    def __init__(self, identify: Identify | None = None, act: Act | None = None):
        self.identify = identify
        self.act = act
        # every connection's tunnel is its own state (conn_notes); these are the
        # ones still open (by key, in the order they were decided), ended here if hush stops first
        self._tunnels: weakref.WeakValueDictionary[str, Tunnel] = weakref.WeakValueDictionary()
        # how hush_tunnel / hush_tunnel_end reach the addons: mitmproxy's addon manager, or the
        # daemon's front door, which calls the same methods without its per-call cost (daemon/frontdoor.py)
        self.announce: Callable[[hooks.Hook], None] | None = None

    def trigger(self, hook: hooks.Hook) -> None:
        if self.announce is not None:
            self.announce(hook)
        else:
            ctx.master.addons.trigger(hook)

    def configure(self, updated: set[str]) -> None:
        if "connection_strategy" in updated and ctx.options.connection_strategy != "lazy":
            log.warning("hush requires connection_strategy=lazy (eager contacts sites before any policy runs); "
                        "setting it back to lazy")
            ctx.options.connection_strategy = "lazy"

    # -- connection level ----------------------------------------------------

    def _open(self, tunnel: Tunnel, policyset: PolicySet | None, decision: Decision | None = None) -> None:
        tunnel.decision = decision or connect_decision(policyset, tunnel.app, tunnel.host, tunnel.port)
        self.keep(tunnel)
        if tunnel.decision is not None:
            self.trigger(HushTunnelHook(tunnel))

    def keep(self, tunnel: Tunnel) -> None:
        """The tunnel of its connection, until the connection ends (the front door's too)."""
        if tunnel.client is not None:
            state = conn_notes(tunnel.client)
            if state.tunnel is not None:
                self._tunnels.pop(state.tunnel.key, None)
            state.tunnel = tunnel
        self._tunnels[tunnel.key] = tunnel

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error:
            return
        n = notes(flow)
        policyset = n.policy
        tunnel = Tunnel(
            client_id=flow.client_conn.id,
            app=n.app,
            listener=n.listener if n.listener is not None else flow.client_conn.proxy_mode.full_spec,
            host=normalize(flow.request.host),
            port=flow.request.port,
            policyset=policyset,
            flow=flow,
            user_agent=flow.request.headers.get("user-agent"),
            client=flow.client_conn,
        )
        self._open(tunnel, policyset)
        if tunnel.decision is not None:
            n.decision = tunnel.decision

    def _flowless(self, client: connection.Client, server: connection.Server,
                  name: str | None) -> tuple[Tunnel, PolicySet | None]:
        """A tunnel for a connection with no CONNECT before it (SOCKS5)."""
        identify = self.identify
        policyset = identify.holder.current if identify else None
        app, listener = identify.app_for(client, policyset) if identify else (None, client.proxy_mode.full_spec)
        host, port = server.address if server.address else ("", 0)
        tunnel = Tunnel(client.id, app, listener, normalize(name or host), port, policyset, client=client)
        return tunnel, policyset

    def _flowless_tunnel(self, client: connection.Client, server: connection.Server, name: str | None) -> Tunnel:
        tunnel, policyset = self._flowless(client, server, name)
        self._open(tunnel, policyset)
        return tunnel

    def _flowless_tls_tunnel(self, client: connection.Client, server: connection.Server, sni: str | None) -> Tunnel:
        """A SOCKS5 destination and the TLS SNI can differ: a client that
        resolved the name itself gives hush an address and names the host only
        in the SNI (or a shared server is asked for another site).  Both must
        allow what happens: the stricter of the two decisions applies (block,
        then tor, then direct), it is recorded under the SNI's name, and a
        direct connection is permitted to the destination the client gave."""
        tunnel, policyset = self._flowless(client, server, sni)
        address = normalize(server.address[0]) if server.address else ""
        if not (sni and address and address != tunnel.host):
            self._open(tunnel, policyset)
            return tunnel
        tunnel.address = (address, tunnel.port)
        by_name = connect_decision(policyset, tunnel.app, tunnel.host, tunnel.port)
        by_address = connect_decision(policyset, tunnel.app, address, tunnel.port)
        decided = [d for d in (by_name, by_address) if d is not None]
        if len(decided) < 2 and not any(d.action.egress == "none" for d in decided):
            # a rule needs the requests: they are inspected, each decided on the
            # address, its Host and the SNI's name (requestheaders), the stricter applying
            tunnel.decision = None
            self.keep(tunnel)
            return tunnel
        self._open(tunnel, policyset, stricter(*decided) if len(decided) == 2 else decided[0])
        return tunnel

    def next_layer(self, nextlayer: NextLayer) -> None:
        """A SOCKS5 connection the policy sends through Tor is decided as soon
        as its destination is known, before any byte is read: the relay into
        tor must be in place before data flows (one the policy blocks on its
        destination was refused before that, ``socks_refusal``).  Other SOCKS5
        connections are decided later, with the TLS SNI or the HTTP request in
        hand."""
        context = nextlayer.context
        client = context.client
        state = conn_notes(client)
        if isinstance(nextlayer.layer, TCPLayer) and context.server.address is not None:
            data = nextlayer.data_client()
            if data and data[0] in RECORD_TYPES and not starts_like_tls_record(data):
                # mitmproxy relays as raw TCP a first read shorter than a record header, a
                # handshake record whose version it does not take for TLS, and another record
                # first; a server may take them for TLS (OpenSSL takes any minor version, and
                # skips empty change_cipher_spec records before the hello) and serve a name never checked
                record = tls_record_start(data)
                if len(data) < 3 and (record is not False or data[0] == 0x16):
                    nextlayer.layer = None  # the record header is still arriving: ask again
                    return
                if record or data[0] == 0x16:
                    state.tls_unreadable = True  # tcp_start closes it, whatever was decided
        tunnel = state.tunnel
        if tunnel is not None and tunnel.route is not None and not state.hello_read:
            self._tor_hello(nextlayer, tunnel)  # a CONNECT routed into tor
            return
        # SOCKS5, and `hush launch` (transparent: the destination came from nftables): both
        # know where the connection goes before its first byte
        if client.proxy_mode.type_name not in ("socks5", "transparent") or state.socks_seen:
            return  # next_layer runs again for every layer of a connection: decide once
        if context.server.address is None:
            return
        tunnel, policyset = self._flowless(client, context.server, None)
        decision = connect_decision(policyset, tunnel.app, tunnel.host, tunnel.port)
        if decision is not None and decision.action.egress == "tor":
            if client_hello_sni(nextlayer.data_client()) is None:
                nextlayer.layer = None  # wait for the whole ClientHello, then decide
                return
            state.socks_seen = True
            self._open(tunnel, policyset, decision)
            if tunnel.route is not None:
                self._tor_hello(nextlayer, tunnel)
            return
        state.socks_seen = True

    def socks_refusal(self, client: connection.Client, server: connection.Server) -> int | None:
        """A SOCKS5 connection whose destination is known and not yet granted
        (asked by intake, as mitmproxy's SOCKS5 layer is about to reply): if the
        policy blocks that destination on its own — nothing a TLS name or a
        request could make less strict — it is decided and announced now, and
        the SOCKS5 reply code returned: 0x02 "connection not allowed by
        ruleset", or 0x01 "general failure" when hush fails closed (no policy,
        no app, an error).  One the policy sends through Tor while tor is not
        ready is answered 0x01 too (tor's own code when it has no circuit),
        audited ``tor-unavailable``.  None: grant it; it is decided as before."""
        state = conn_notes(client)
        if client.proxy_mode.type_name != "socks5" or state.tunnel is not None or server.address is None:
            return None
        tunnel, policyset = self._flowless(client, server, None)
        decision = connect_decision(policyset, tunnel.app, tunnel.host, tunnel.port)
        if decision is None:
            return None
        if decision.action.egress == "tor":
            router = self.act.services.router if self.act is not None else None
            if router is not None and router.unavailable() is None:
                return None  # decided once its ClientHello is in (next_layer)
            # tor cannot carry it: the tor action audits it tor-unavailable and relays nothing
            state.socks_seen = True
            self._open(tunnel, policyset, decision)
            return SOCKS5_GENERAL_FAILURE
        if decision.action.egress != "none":
            return None
        state.socks_seen = True
        self._open(tunnel, policyset, decision)
        return SOCKS5_GENERAL_FAILURE if (decision.note or "").startswith("fail-closed") else SOCKS5_NOT_ALLOWED

    def _tor_hello(self, nextlayer: NextLayer, tunnel: Tunnel) -> None:
        """A tunnel routed into tor is relayed from its first byte, so its TLS
        never reaches ``tls_clienthello``: its ClientHello is read here, and
        nothing is relayed before the whole of it is in hand.  A name the
        policy treats more strictly than the target closes the tunnel (torroute
        then relays nothing, and no permit is left for the dial); so does a
        ClientHello that does not parse."""
        hello = client_hello_sni(nextlayer.data_client())
        if hello is None:
            nextlayer.layer = None  # NextLayer asks again when more arrives; torroute waits too
            return
        conn_notes(nextlayer.context.client).hello_read = True
        if hello is UNREADABLE:
            self._revoke(tunnel.client)
            tunnel.error = "refused: the tunnel's TLS ClientHello cannot be read"
            log.warning("refused a tunnel to %s:%s into tor: its ClientHello cannot be read", tunnel.host, tunnel.port)
        elif hello[0]:
            self._check_sni(tunnel, normalize(hello[0]))

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        client = data.context.client
        tunnel = conn_notes(client).tunnel
        if tunnel is None:
            tunnel = self._flowless_tls_tunnel(client, data.context.server, data.client_hello.sni)
        elif tunnel.decision is not None and data.client_hello.sni:
            self._check_sni(tunnel, normalize(data.client_hello.sni))
        elif tunnel.decision is None and data.client_hello.sni:
            self._inspected_sni(tunnel, normalize(data.client_hello.sni))
        if tunnel.decision is None and data.client_hello.sni:
            # hush's own TLS to the site will ask for this name: each request is decided on it too
            conn_notes(client).sni = normalize(data.client_hello.sni)
        if tunnel.decision is not None:
            # Decided without the request: relay the TLS untouched (and, if
            # the decision sends nothing, act grants no egress).
            data.ignore_connection = True

    def _check_sni(self, tunnel: Tunnel, name: str) -> None:
        """A tunnel decided on its target before the TLS began.  If the SNI
        names another host — which a shared server or CDN will serve — that
        the policy treats more strictly (or only per request), the connection
        set up for the target is refused: nothing is sent, not even the
        ClientHello."""
        decided = tunnel.decision
        if decided is None or name == tunnel.host or tunnel.error or tunnel.outcome or decided.action.egress == "none":
            return
        tunnel.sni = name  # a reload decides it again (act.tunnel_decision)
        by_name = connect_decision(tunnel.policyset, tunnel.app, name, tunnel.port)
        if by_name is not None and (stricter(decided, by_name) is decided
                                    or by_name.action.egress == decided.action.egress):
            return
        self._revoke(tunnel.client)
        why = f"{by_name.action.name} by {by_name.describe()}" if by_name else "decided only per request"
        tunnel.error = f"refused: the TLS names {name} ({why}), not {tunnel.host}"
        if by_name is not None:
            tunnel.decision = by_name
        log.warning("refused a tunnel to %s:%s whose TLS names %s (%s)", tunnel.host, tunnel.port, name, why)

    def _inspected_sni(self, tunnel: Tunnel, name: str) -> None:
        """A tunnel hush inspects because rules need its requests.  Its TLS is
        terminated here and hush's own TLS to the site asks for the name the
        app's ClientHello named.  That name is decided like the target: if
        its host is blocked at connection level, the tunnel is closed before
        the app's TLS is answered; otherwise each request inside is decided on
        it too (``requestheaders``), the stricter applying."""
        if name == tunnel.host:
            return
        by_name = connect_decision(tunnel.policyset, tunnel.app, name, tunnel.port)
        if by_name is None or by_name.action.egress != "none":
            return
        self._revoke(tunnel.client)
        tunnel.decision = by_name
        tunnel.error = f"refused: the TLS names {name} (block by {by_name.describe()}), not {tunnel.host}"
        log.warning("refused a tunnel to %s:%s whose TLS names %s (blocked)", tunnel.host, tunnel.port, name)
        self.trigger(HushTunnelHook(tunnel))

    @staticmethod
    def sni_decision(flow: http.HTTPFlow, policyset: PolicySet, app: str, req: RequestInfo,
                     decision: Decision) -> Decision:
        """A request inside an inspected TLS tunnel is sent over hush's own TLS
        to the site, whose SNI is the name the app's ClientHello asked for:
        that name is decided too (like a ``Host`` header naming another
        host), and the stricter decision applies."""
        name = conn_notes(flow.client_conn).sni
        if not name or name == normalize(req.host) or decision.action.egress == "none":
            return decision
        other = policyset.decide(app, dataclasses.replace(req, host=name, authority=""))
        return dataclasses.replace(other, host=name) if stricter(decision, other) is other else decision

    def server_connect(self, data: ServerConnectionHookData) -> None:
        """The TLS name hush itself sends to a site must be one that was
        decided: the address dialled, the tunnel's target, or the SNI checked
        above.  (mitmproxy copies the app's SNI into its own ClientHello.)"""
        sni, address = data.server.sni, data.server.address
        if not sni or address is None:
            return
        name = normalize(sni)
        state = conn_notes(data.client)
        tunnel = state.tunnel
        if name in (normalize(address[0]), state.sni, tunnel.host if tunnel else None):
            return
        log.warning("refused a connection to %s:%s whose TLS would name %s (not decided)", address[0], address[1], name)
        data.server.error = f"hush: the TLS name {name} was not decided"

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        """mitmproxy relays a connection as raw TCP when it cannot read it as
        HTTP or TLS: a leading CRLF or blank, a first read shorter than three
        bytes, no space in the first line, unknown bytes, a banner, or after
        TLS an unknown ALPN.  A tunnel decided at connection level is relayed
        as decided; one hush decided to inspect is closed, never relayed.

        Killing a TCP flow does not stop mitmproxy's relay (its issue #4711):
        what stops it is the egress guard, so every permit of this client
        (an earlier request's, on a keep-alive connection) is withdrawn."""
        if flow.server_conn.timestamp_start is not None:
            return  # a protocol switch (101) on a connection a decided request opened: its decision covers it
        tunnel = conn_notes(flow.client_conn).tunnel
        if tunnel is None:
            tunnel = self._flowless_tunnel(flow.client_conn, flow.server_conn, None)
        if tunnel.decision is None:
            self._not_readable(tunnel, "rules need HTTP but the connection is not HTTP")
        decision = tunnel.decision
        assert decision is not None  # _not_readable decided it
        notes(flow).decision = decision
        if decision.action.egress == "none":
            self._revoke(tunnel.client)
            flow.kill()
        elif conn_notes(flow.client_conn).tls_unreadable:
            self._revoke(tunnel.client)
            tunnel.error = "refused: the tunnel's TLS record cannot be read (its name cannot be checked)"
            log.warning("refused a tunnel to %s:%s: a TLS record hush cannot read", tunnel.host, tunnel.port)
            flow.kill()

    def _revoke(self, client: connection.Client | None) -> None:
        if self.act is not None and client is not None:
            self.act.revoke(client)

    def _not_readable(self, tunnel: Tunnel, reason: str) -> None:
        """Close an inspected tunnel whose contents hush cannot read: audited, nothing sent."""
        self._revoke(tunnel.client)
        tunnel.decision = fail_closed(tunnel.app, reason, getattr(tunnel.policyset, "version", ""), "connect")
        log.warning("closed a tunnel to %s:%s: %s", tunnel.host, tunnel.port, reason)
        self.trigger(HushTunnelHook(tunnel))

    def tls_failed_client(self, data: tls.TlsData) -> None:
        """An inspected tunnel whose TLS hush cannot read (a ClientHello that
        does not parse, records that are not TLS) is closed by mitmproxy; it
        is audited too.  A client that hangs up or distrusts hush's CA during
        the handshake sent nothing anywhere and is not recorded."""
        client = data.context.client
        error = data.conn.error or ""
        if data.conn is not client or "disconnected" in error or "trust" in error:
            return
        reason = f"the tunnel's TLS cannot be read: {error[:200]}"
        tunnel = conn_notes(client).tunnel
        if tunnel is None:  # SOCKS5: no ClientHello, so never decided; nothing was relayed
            tunnel, _ = self._flowless(client, data.context.server, None)
            self.keep(tunnel)
        if tunnel.decision is None:
            self._not_readable(tunnel, reason)
        elif tunnel.error is None and tunnel.outcome is None:
            tunnel.error = reason  # decided, but nothing could be relayed: the record must not say it was

    def _end(self, tunnel: Tunnel) -> None:
        if tunnel.decision is not None and tunnel.ended is None:
            tunnel.ended = time.time()
            self.trigger(HushTunnelEndHook(tunnel))

    def client_disconnected(self, client: connection.Client) -> None:
        state = conn_notes(client)
        state.socks_seen, state.sni, state.hello_read, state.tls_unreadable = False, None, False, False
        tunnel, state.tunnel = state.tunnel, None
        if tunnel is not None:
            self._tunnels.pop(tunnel.key, None)
            self._end(tunnel)

    def done(self) -> None:
        for tunnel in list(self._tunnels.values()):
            self._end(tunnel)
        self._tunnels.clear()

    # -- request level -------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error:
            return
        n = notes(flow)
        policyset, app = n.policy, n.app
        if policyset is None:
            decision = fail_closed(app, "no policy loaded")
        elif app is None:
            decision = fail_closed(app, "no policy owns this listener", policyset.version)
        else:
            try:
                req = request_info(flow, n.kind or "other")
                decision = policyset.decide(app, req)  # the Host header's host too, if it names another
                decision = self.sni_decision(flow, policyset, app, req, decision)  # and the TLS SNI's
            except Exception as e:
                log.exception("deciding %s for %s failed", flow.request.pretty_url, app)
                decision = fail_closed(app, f"error while deciding: {e!r}", policyset.version)
        n.decision = decision
        # Decided on the request as the app sent it; what is sent on (by
        # any action) carries no proxy header: they tell the site a proxy is
        # in use, or hand it the app's proxy credentials.
        drop_proxy_headers(flow.request.headers)

    def request(self, flow: http.HTTPFlow) -> None:
        """The last look before a request is sent: anything that added a
        proxy header since ``requestheaders`` (an action, a held flow's
        ``then``) does not get it through either."""
        if flow.response is None and flow.error is None:
            drop_proxy_headers(flow.request.headers)


addons = [Decide()]
