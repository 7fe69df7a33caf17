"""Connection-level decisions, and the hooks that announce them.

A *tunnel* is a client connection whose destination is known before any HTTP
request is seen: a CONNECT on an HTTP listener, or any connection on a SOCKS5
listener.  SOCKS5 connections have no flow to carry ``flow.metadata``, so the
decide addon announces every connection-level decision with the custom hook
``hush_tunnel(tunnel)`` and its end with ``hush_tunnel_end(tunnel)``; act and
audit implement those hooks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from mitmproxy import connection, hooks, http
from mitmproxy.proxy import commands, context, events, layer
from mitmproxy.proxy.layers import tcp, tls

from hush.daemon.handshake import RetryWatch
from hush.daemon.policy.model import Decision, PolicySet
from hush.daemon.relay import Relay, tell

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
    # a connection the front door relays itself (daemon/frontdoor.py), not mitmproxy: how to close it
    close: Callable[[], None] | None = None


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


log = logging.getLogger("hush.tunnel")

# Hand decided tunnels over to the splice relay (daemon/relay.py); False: mitmproxy relays them
# (bench/tunnels.py measures both).
SPLICE = True
# … once they have carried this many bytes through mitmproxy: starting a relay (a thread, two pipes)
# costs a new connection ~2 ms before its first answer (bench/tunnels.py), which short exchanges
# should not pay; a bulk transfer passes this within its first milliseconds.
SPLICE_AFTER = 256 * 1024

# the splice relays running, by client connection id
_relays: dict[str, Relay] = {}


def register_relay(client_id: str, relay: Relay) -> None:
    """A splice relay the front door started (daemon/frontdoor.py): stopped like the others."""
    _relays[client_id] = relay


def stop_relay(client_id: str) -> None:
    """Stop the splice relay of a connection, if it has one: both its sockets are shut down before
    this returns, so nothing more reaches the site (a reload revoked it, or it is closing)."""
    relay = _relays.pop(client_id, None)
    if relay is not None:
        relay.stop()


def relays() -> int:
    """How many connections the splice relay carries now."""
    return len(_relays)


class Counted(layer.Layer):
    """A layer in front of another that counts the bytes the layers under it
    send, and changes nothing.  Put in front of a tunnel's contents (in
    ``next_layer``), it counts what a relay that has no flow (TLS passed
    through untouched, a tunnel into tor) carried.  Like mitmproxy's
    ``NextLayer`` it is not in ``context.layers``: the layers under it find
    their parents as before.

    It is also where a tunnel leaves mitmproxy's layers: once the layers under
    it only relay (``TCPLayer(ignore=True)``, under TLS layers that pass the
    bytes through), the site is connected (the egress guard let the dial
    through), the tunnel was decided at connection level to go direct
    (not through tor) and it has carried ``SPLICE_AFTER`` bytes, both sockets
    are handed to a splice relay
    (``daemon/relay.py``); mitmproxy keeps the connection (paused) and sees its
    end when the relay has passed both EOFs on.  This reads mitmproxy's
    connection handler (its transports and timeout watchdog) and asyncio's
    stream buffer: private APIs, here only (tests/unit/addons/test_tunnel.py
    pins them)."""

    def __init__(self, context: context.Context, inner: layer.Layer, tally: Tally):
        super().__init__(context)
        self.context.layers.remove(self)
        self.inner = inner
        self.tally = tally
        self.relay: Relay | None = None
        self._relayable = SPLICE
        self._scheduled = False
        # a tunnel whose first bytes are a TLS handshake record is watched until the server's first
        # record shows no HelloRetryRequest (then a second ClientHello must name the same host)
        self._looked = False  # its first byte was seen
        self._watch: RetryWatch | None = None
        self._released = b""  # client bytes the watch let through from the server's side, to pass in
        self._refused = False

    def handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        client = self.context.client
        if self._refused:
            return  # closed: nothing more goes anywhere
        if (isinstance(event, (events.DataReceived, events.ConnectionClosed)) and event.connection is client
                and (self._watch is not None or not self._looked)):
            passed = yield from self._watched_client(event)
            if passed is None:
                return
            event = passed
        watch = self._watch
        for command in self.inner.handle_event(event):
            if isinstance(command, commands.SendData):
                if command.connection is client:
                    self.tally.down += len(command.data)
                    if watch is not None and not self._refused:
                        self._watched_server(watch, command.data)
                else:
                    self.tally.up += len(command.data)
            yield command
        if self._refused and self._watch is not None:
            yield from self._refuse()
            return
        if watch is not None and self._watch is None:  # the watch ended: what it held goes in now
            released, self._released = self._released, b""
            if released:
                yield from self.handle_event(events.DataReceived(client, released))
        if self._relayable and self.relay is None and not self._scheduled and self._eligible():
            # not from inside an event: mitmproxy's reading tasks must be idle first (see _hand_over)
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._hand_over)

    # -- the watch of a second ClientHello (handshake.RetryWatch) --------------------------

    def _watched_client(self, event: events.Event) -> layer.CommandGenerator[events.Event | None]:
        """A client event while the watch may be on: the event to pass in (maybe with fewer
        bytes), or None (held, or the tunnel refused)."""
        if isinstance(event, events.ConnectionClosed):
            if self._watch is not None and not self._watch.eof():
                yield from self._refuse()  # it ended its side with bytes held
                return None
            return event
        assert isinstance(event, events.DataReceived)
        if not self._looked:
            if not event.data:
                return event
            self._looked = True
            if event.data[0] != 0x16:
                return event  # not TLS: nothing to watch
            self._watch = RetryWatch()
        watch = self._watch
        assert watch is not None
        sent = watch.up(event.data)
        if sent is None:
            yield from self._refuse()
            return None
        if watch.done:
            self._watch = None
        if not sent:
            return None
        return event if sent is event.data else events.DataReceived(event.connection, sent)

    def _watched_server(self, watch: RetryWatch, data: bytes) -> None:
        """The server's bytes on their way to the client: the watch's verdict, acted on once the
        inner layer has handled its event."""
        released = watch.down(data)
        if released is None:
            self._refused = True
            return
        self._released += released
        if watch.done:
            self._watch = None

    def _refuse(self) -> layer.CommandGenerator[None]:
        """Close the tunnel: the watch found a second ClientHello it must not pass (audited)."""
        from hush.addons.notes import conn_notes

        watch = self._watch
        why = watch.why if watch is not None else "refused"
        self._refused = True
        self._watch = None
        self._released = b""
        client = self.context.client
        state = conn_notes(client)
        state.permits.clear()  # no dial for it from now on (act's permits)
        tunnel = state.tunnel
        if tunnel is not None and tunnel.error is None:
            tunnel.error = why
        log.warning("closed a tunnel to %s: %s", self.context.server.address, why)
        yield commands.CloseConnection(client)

    # -- the hand-over to the splice relay ---------------------------------------------

    def _decided_direct(self) -> bool:
        from hush.addons.notes import conn_notes

        tunnel = conn_notes(self.context.client).relayed  # act's: relayed on a connection-level decision
        if tunnel is None or tunnel.decision is None:
            return False
        return (tunnel.decision.action.egress == "direct" and tunnel.route is None and tunnel.error is None
                and tunnel.outcome is None)

    def _eligible(self) -> bool:
        context = self.context
        return (self.tally.up + self.tally.down >= SPLICE_AFTER and self._looked and self._watch is None
                and not self._refused and context.server.connected
                and context.client.connected and only_relays(self.inner) and self._decided_direct())

    def _hand_over(self) -> None:
        """Hand both sockets to a splice relay, if mitmproxy holds no byte of them now: both
        reading tasks wait in ``read()`` on an empty buffer (a task that read a chunk and waits
        for mitmproxy's event lock would deliver it later, out of order), nothing is left to
        write.  Otherwise mitmproxy relays on, and the next event tries again."""
        self._scheduled = False
        if self.relay is not None or not self._relayable or not self._eligible():
            return
        context = self.context
        client, server = context.client, context.server
        handler = _handler(client.id)
        if handler is None:
            self._relayable = False
            return
        cio, sio = handler.transports.get(client), handler.transports.get(server)
        streams = [io for io in (cio, sio) if io is not None and isinstance(io.reader, asyncio.StreamReader)
                   and isinstance(io.writer, asyncio.StreamWriter)]
        if len(streams) != 2:
            self._relayable = False  # not asyncio sockets (mitmproxy_rs streams): mitmproxy relays it
            return
        ct, st = cio.writer.transport, sio.writer.transport
        csock, ssock = ct.get_extra_info("socket"), st.get_extra_info("socket")
        if csock is None or ssock is None or ct.is_closing() or st.is_closing():
            self._relayable = False
            return
        if ct.get_write_buffer_size() or st.get_write_buffer_size():
            return  # mitmproxy still has bytes to write: after the next event
        if not (_idle(cio.reader) and _idle(sio.reader)):
            return  # a reading task holds a chunk (or saw EOF): after the next event
        ct.pause_reading()
        st.pause_reading()
        up_head, down_head = _take(cio.reader), _take(sio.reader)
        loop = asyncio.get_running_loop()
        watchdog = handler.timeout_watchdog

        def ended(relay: Relay) -> None:  # in the relay's thread
            tell(loop, self._ended, relay, ct, st)

        def active() -> None:  # in the relay's thread: mitmproxy's idle timeout must not close a busy tunnel
            tell(loop, watchdog.register_activity)

        self.relay = Relay(csock.fileno(), ssock.fileno(), up_head, down_head, on_end=ended, on_activity=active,
                           counts=self.tally)
        _relays[client.id] = self.relay
        self.relay.start()
        log.debug("relaying %s ⇄ %s in the kernel (splice)", client.peername, server.address)

    def _ended(self, relay: Relay, *transports: asyncio.BaseTransport) -> None:
        """Both directions passed their EOF on (or a socket failed): mitmproxy reads the end
        itself, and closes the connection as it would have."""
        if _relays.get(self.context.client.id) is relay:
            del _relays[self.context.client.id]
        if relay.error:
            log.info("relay of %s ended: %s", self.context.server.address, relay.error)
        for transport in transports:
            if not transport.is_closing():
                transport.resume_reading()  # type: ignore[attr-defined]

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:  # pragma: no cover
        # never called: handle_event is overridden
        yield from self.handle_event(event)

    def __repr__(self):
        return f"Counted:{self.inner!r}"


def only_relays(top: layer.Layer | None) -> bool:
    """The layers from ``top`` down only relay bytes: TLS layers that pass them through
    (``tls_clienthello`` set ``ignore_connection``) over a ``TCPLayer`` with no flow."""
    current = top
    while current is not None:
        if isinstance(current, tcp.TCPLayer):
            return current.flow is None
        if isinstance(current, tls.ClientTLSLayer) and current.conn is not current.context.client:
            current = current.child_layer
            continue
        if isinstance(current, tls.ServerTLSLayer) and current.conn is not current.context.server:
            current = current.child_layer
            continue
        return False
    return False


def _idle(reader: asyncio.StreamReader) -> bool:
    """mitmproxy's task reading this stream waits in ``read()``: its buffer is empty and no
    chunk it read is on its way through the layers (asyncio's private waiter)."""
    return getattr(reader, "_waiter", None) is not None and not reader.at_eof()


def _take(reader: asyncio.StreamReader) -> bytes:
    """What the stream read from its socket and mitmproxy has not consumed yet (asyncio's
    buffer): the relay sends it first."""
    buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
    data = bytes(buffer)
    buffer.clear()
    return data


def _handler(client_id: str):
    """mitmproxy's handler of a client connection (act's one lookup of the proxyserver addon)."""
    from hush.addons.act import Act

    return Act._handler(client_id)

