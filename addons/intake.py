"""Intake: what a client sends before hush has decided anything.

Two guards around mitmproxy's own parsing, both on its layer objects (a
private API, like the upstream-proxy layer in torroute; pyproject pins
mitmproxy 12.2):

- **Connections mitmproxy refuses itself** — SOCKS4/4a or HTTP sent to a
  SOCKS5 listener, an unsupported SOCKS5 command, a request head that does
  not parse, a request with chunked trailers (mitmproxy raises
  ``NotImplementedError``), garbage.  Each client connection's top layer is
  watched: an exception in mitmproxy's layers closes the connection
  instead of leaving it open behind a "mitmproxy has crashed!" traceback;
  a close mitmproxy asks for on the very first read crashed too (under its
  eager task factory the task reading the connection is not stored yet) and
  left the connection open: it is deferred one loop turn.
  A connection that mitmproxy refused before hush decided anything on it is
  audited (one row, ``fail-closed: refused by mitmproxy: …``) with one log
  line; a request in flight when mitmproxy failed is audited with the error.

- **Request header bounds** (``hush_max_headers``, ``hush_max_header_bytes``;
  ``limits`` in the config).  mitmproxy buffers an HTTP/1 request head
  without bound; every HTTP layer (plain proxy, inside CONNECT and SOCKS5
  tunnels, inside intercepted TLS) is watched while a head is being read,
  and a head over either bound is answered 431 and closed before mitmproxy
  buffers or parses more of it, and audited.  HTTP/2 (and any request that
  got through) is checked again once parsed, in ``requestheaders``.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from mitmproxy import addonmanager, connection, ctx, http
from mitmproxy import flow as mflow
from mitmproxy.net.http.url import parse_authority
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layer import CommandGenerator, Layer
from mitmproxy.proxy.layers import HttpLayer
from mitmproxy.proxy.layers.http._http1 import Http1Server

from hush.addons.flowinfo import fail_closed
from hush.addons.notes import conn_notes, notes
from hush.addons.tunnel import HushTunnelHook, Tunnel, stop_relay
from hush.daemon.policy.model import PolicySet

if TYPE_CHECKING:
    from mitmproxy.proxy.layer import NextLayer

    from hush.addons.audit import Audit
    from hush.addons.decide import Decide
    from hush.addons.identify import Identify

log = logging.getLogger("hush.intake")

DEFAULT_MAX_HEADERS = 100  # Apache's LimitRequestFields
DEFAULT_MAX_HEADER_BYTES = 32 * 1024  # nginx: large_client_header_buffers 4 8k

_BLANK_LINE = re.compile(rb"\n\r?\n")


def limit_text(headers: int, size: int, max_headers: int, max_bytes: int) -> str | None:
    """Why a request head of ``headers`` fields and ``size`` bytes is over the limits, or None."""
    if headers > max_headers:
        return f"{headers} header fields, more than limits.max_headers ({max_headers})"
    if size > max_bytes:
        return f"a request head of {size} bytes, more than limits.max_header_bytes ({max_bytes})"
    return None


def response_431(why: str) -> http.Response:
    return http.Response.make(
        431, f"Request header fields too large: {why}\n".encode(),
        {"Content-Type": "text/plain; charset=utf-8", "Connection": "close",
         "X-Hush-Decision": "block <hush>:0"},
    )


class HeadBound(Layer):
    """Stands in for an HTTP layer (mitmproxy calls only ``handle_event``):
    while its HTTP/1 server reads a request head, the head's bytes and lines
    are counted — incrementally, each byte once — and a head over a bound is
    refused before the layer sees it.  Like mitmproxy's ``NextLayer`` it is
    not in ``context.layers``; anything else asked of it is the HTTP layer's."""

    def __init__(self, inner: HttpLayer, intake: Intake):
        super().__init__(inner.context)
        self.context.layers.remove(self)
        self.inner = inner
        self.intake = intake
        self.refused = False
        self._buffered = -1  # len(buf) when last counted, -1: count afresh
        self._lines = 0
        self._tail = b""

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"HeadBound({self.inner!r})"

    def _handle_event(self, event: events.Event) -> CommandGenerator[None]:  # pragma: no cover
        # never called: handle_event is overridden
        yield from self.handle_event(event)

    def _reading_head(self) -> Http1Server | None:
        server = self.inner.connections.get(self.inner.context.client) if hasattr(self.inner, "connections") else None
        if isinstance(server, Http1Server) and server.state == server.read_headers:
            return server
        return None

    def handle_event(self, event: events.Event):
        if self.refused:
            return
        server = None
        data = b""
        if isinstance(event, events.DataReceived) and event.connection is self.inner.context.client:
            server = self._reading_head()
            data = event.data
        end = None
        lines = 0
        if server is not None:
            buffered = len(server.buf)
            if buffered != self._buffered:  # a new head (or the layer consumed bytes): count it afresh
                head = bytes(server.buf)
                self._lines, self._tail = head.count(b"\n"), head[-2:]
            end = _BLANK_LINE.search(self._tail + data)
            part = data if end is None else data[: max(end.end() - len(self._tail), 0)]
            lines = self._lines + part.count(b"\n")
            size = buffered + len(part)
            # the request line and the blank line are lines too; continuation lines count as fields
            fields = max(lines - (2 if end is not None else 1), 0)
            why = limit_text(fields, size, self.intake.max_headers, self.intake.max_header_bytes)
            if why is not None:
                self.refused = True
                yield from self.intake.refuse_head(self.inner.context, bytes(server.buf) + part, why)
                return
        yield from self.inner.handle_event(event)
        server = self._reading_head() if server is not None else None
        if server is not None and end is None:  # still the same head: count on from here
            self._buffered = len(server.buf)
            self._lines = lines
            self._tail = (self._tail + data)[-2:]
        else:
            self._buffered = -1


class Watch:
    """Stands in for a client connection's top layer."""

    def __init__(self, inner, handler, intake: Intake):
        self.inner = inner
        self.handler = handler
        self.intake = intake
        self.client: connection.Client = handler.client
        self.reason: str | None = None  # the last thing mitmproxy said about this connection
        self.crashed: str | None = None
        self.socks_refused = False  # a SOCKS5 connection answered with a refusal (decide's socks_reply)
        self._deferred: list[commands.CloseConnection] = []
        self._wakeup: commands.RequestWakeup | None = None

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __repr__(self):
        return f"Watch({self.inner!r})"

    def _close(self, command: commands.CloseConnection):
        """Close the client's connection, whichever task asks.

        mitmproxy closes a connection by cancelling the task that reads it.
        On the very first read that task is still being created (its eager
        task factory) and not stored yet: closing then crashed mitmproxy and
        left the connection open.  Such a close is deferred one loop turn
        (a wakeup), by when the task is stored.  When the close comes from
        another task (a hook's) while the reading task waits for mitmproxy's
        event lock, the cancelled reader dies without closing the socket: the
        connection stayed open, unread.  So the socket is closed here too
        (what was written is still flushed)."""
        io = self.handler.transports.get(self.client)
        if io is not None and io.handler is None:
            self._deferred.append(command)
            if self._wakeup is None:
                self._wakeup = commands.RequestWakeup(0)
                yield self._wakeup
            return
        yield command
        if io is not None and io.writer is not None and not getattr(command, "half_close", False):
            io.writer.close()

    def handle_event(self, event: events.Event):
        if self._wakeup is not None and isinstance(event, events.Wakeup) and event.command is self._wakeup:
            self._wakeup = None
            deferred, self._deferred = self._deferred, []
            for command in deferred:
                yield from self._close(command)
            return
        if self.crashed is not None or self.socks_refused:
            return  # mitmproxy's layers are broken for this connection, or it was refused: nothing more goes to them
        try:
            for command in self.inner.handle_event(event):
                if isinstance(command, commands.SendData) and command.connection is self.client \
                        and command.data == SOCKS5_GRANTED and self.client.proxy_mode.type_name == "socks5":
                    code = self.intake.socks_refusal(self.client, self.inner.context.server)
                    if code is not None:  # refused on its destination: say so, instead of "granted"
                        self.socks_refused = True
                        yield commands.SendData(self.client, socks5_reply(code))
                        yield from self._close(commands.CloseConnection(self.client))
                        return
                if isinstance(command, commands.Log) and command.level >= logging.INFO \
                        and not command.message.startswith("Client closed connection"):  # the client left: no refusal
                    self.reason = plain(command.message)
                if isinstance(command, commands.CloseConnection) and command.connection is self.client:
                    yield from self._close(command)
                else:
                    yield command
        except Exception as e:
            self.crashed = plain(f"{type(e).__name__}: {e}")
            log.warning("mitmproxy could not handle a connection from %s on %s (%s): closed",
                        _peer(self.client), self.client.proxy_mode.full_spec, self.crashed)
            yield from self._close(commands.CloseConnection(self.client))


# mitmproxy's SOCKS5 layer's only success reply (modes.Socks5Proxy.state_connect): bound to 0.0.0.0:0
SOCKS5_GRANTED = b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"
SOCKS5_GENERAL_FAILURE = 0x01


def socks5_reply(code: int) -> bytes:
    """A SOCKS5 reply (RFC 1928, 6.) with ``code``, bound to 0.0.0.0:0 as mitmproxy's are."""
    return bytes([0x05, code]) + SOCKS5_GRANTED[2:]


def plain(message: str, limit: int = 200) -> str:
    """mitmproxy's message without the client's bytes it quotes (a URL, a
    header: the audit keeps URLs only redacted), and not too long."""
    cut = min((i for i in (message.find("b'"), message.find('b"')) if i >= 0), default=-1)
    if cut >= 0:
        message = message[:cut].rstrip(" :") + " (the bytes are not kept)"
    return message[:limit]


def _peer(client: connection.Client) -> str:
    return f"{client.peername[0]}:{client.peername[1]}" if client.peername else "?"


class Intake:
    def __init__(self, identify: Identify | None = None, audit: Audit | None = None, decide: Decide | None = None):
        self.identify = identify  # the app of a connection refused before any flow
        self.audit = audit  # records what mitmproxy refused
        self.decide = decide  # decides a SOCKS5 destination before mitmproxy grants it
        self.max_headers = DEFAULT_MAX_HEADERS
        self.max_header_bytes = DEFAULT_MAX_HEADER_BYTES

    def load(self, loader: addonmanager.Loader) -> None:
        loader.add_option("hush_max_headers", int, DEFAULT_MAX_HEADERS,
                          "Most header fields a request may have; more is answered 431.")
        loader.add_option("hush_max_header_bytes", int, DEFAULT_MAX_HEADER_BYTES,
                          "Largest request head (request line and headers) in bytes; larger is answered 431.")

    def configure(self, updated: set[str]) -> None:
        if "hush_max_headers" in updated:
            self.max_headers = ctx.options.hush_max_headers
        if "hush_max_header_bytes" in updated:
            self.max_header_bytes = ctx.options.hush_max_header_bytes

    # -- watching connections -------------------------------------------------------

    def client_connected(self, client: connection.Client) -> None:
        proxyserver = ctx.master.addons.get("proxyserver")
        handler = getattr(proxyserver, "connections", {}).get(client.id)
        if handler is None or isinstance(handler.layer, Watch) or not hasattr(handler, "transports"):
            return
        watch = Watch(handler.layer, handler, self)
        handler.layer = watch
        conn_notes(client).watch = watch

    def next_layer(self, nextlayer: NextLayer) -> None:
        layer = nextlayer.layer
        if isinstance(layer, HttpLayer):
            nextlayer.layer = HeadBound(layer, self)
        elif isinstance(layer, _Parent) and isinstance(layer.child_layer, HttpLayer):  # HTTPS proxy: TLS, then HTTP
            layer.child_layer = HeadBound(layer.child_layer, self)

    def socks_refusal(self, client: connection.Client, server: connection.Server) -> int | None:
        """mitmproxy's SOCKS5 layer is about to reply "request granted" (RFC 1928), before
        hush has seen a byte of the connection (connection_strategy=lazy: it dials
        nothing yet).  The reply code to refuse with instead, or None to grant it:
        decide's, for a destination the policy blocks on its own; 0x01 (general
        failure) if deciding failed, fail closed."""
        if self.decide is None:
            return None
        try:
            return self.decide.socks_refusal(client, server)
        except Exception:
            log.exception("deciding a SOCKS5 destination failed: refused")
            return SOCKS5_GENERAL_FAILURE

    # -- what hush decided ------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> None:
        conn_notes(flow.client_conn).decided = True

    def hush_tunnel(self, tunnel: Tunnel) -> None:
        if tunnel.client is not None:
            conn_notes(tunnel.client).decided = True

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        state = conn_notes(flow.client_conn)
        state.decided = True
        state.in_flight = flow
        if flow.response or flow.error:
            return
        fields = flow.request.headers.fields
        size = len(flow.request.method) + len(flow.request.path) + sum(len(n) + len(v) + 4 for n, v in fields)
        why = limit_text(len(fields), size, self.max_headers, self.max_header_bytes)
        if why is not None:
            n = notes(flow)
            n.decision = fail_closed(n.app, f"request headers over the limit: {why}", _version(n.policy))
            flow.response = response_431(why)
            log.warning("answered 431 to %s on %s: %s", _peer(flow.client_conn), flow.client_conn.proxy_mode.full_spec,
                        why)

    def response(self, flow: http.HTTPFlow) -> None:
        conn_notes(flow.client_conn).in_flight = None

    def error(self, flow: http.HTTPFlow) -> None:
        conn_notes(flow.client_conn).in_flight = None

    # -- refusing ---------------------------------------------------------------------

    def _app(self, client: connection.Client) -> tuple[str | None, str, PolicySet | None]:
        identify = self.identify
        policyset = identify.holder.current if identify else None
        if identify is None:
            return None, client.proxy_mode.full_spec, policyset
        app, listener = identify.app_for(client, policyset)
        return app, listener, policyset

    def refuse_head(self, context, head: bytes, why: str):
        """Answer 431 to a request head over a bound, close, and audit it."""
        client = context.client
        response = response_431(why)
        yield commands.SendData(client, http1_bytes(response))
        yield commands.CloseConnection(client)
        conn_notes(client).decided = True
        log.warning("answered 431 to %s on %s: %s", _peer(client), client.proxy_mode.full_spec, why)
        try:
            self._record_head(context, head, why, response)
        except Exception:
            log.exception("audit: could not record the refused request head")

    def _record_head(self, context, head: bytes, why: str, response: http.Response) -> None:
        client = context.client
        app, listener, policyset = self._app(client)
        first = head.lstrip(b"\r\n").split(b"\n", 1)[0].strip().split(b" ")
        method = first[0].decode("latin-1")[:16] if first and first[0] else "?"
        target = first[1].decode("latin-1") if len(first) > 1 else "/"
        scheme = "https" if client.tls else "http"
        if method == "CONNECT":  # its authority names where it wanted to go
            try:
                host, port = parse_authority(target, check=True)
            except ValueError:
                host, port = "", 0
            scheme, path, port = "", "", port or 0
        elif context.server.address:
            host, port = context.server.address
            path = target if target.startswith("/") else "/"
        else:
            try:
                request = http.Request.make(method, target)
                scheme, host, port, path = request.scheme, request.host, request.port, request.path
            except Exception:
                host, port, path = "", 0, "/"
        now = response.timestamp_start or time.time()  # the request was whole when it was answered
        request = http.Request(host, port, method.encode(), scheme.encode(), b"", path.encode(), b"HTTP/1.1",
                               http.Headers(), b"", None, now, now)
        flow = http.HTTPFlow(client, connection.Server(address=context.server.address))
        flow.request = request
        flow.response = response
        n = notes(flow)
        n.app, n.listener, n.policy, n.kind = app, listener, policyset, "other"
        n.decision = fail_closed(app, f"request headers over the limit: {why}", _version(policyset),
                                 "connect" if method == "CONNECT" else "request")
        if self.audit is not None:
            self.audit.record(flow)

    def client_disconnected(self, client: connection.Client) -> None:
        stop_relay(client.id)  # a spliced tunnel ends with its connection
        state = conn_notes(client)
        watch, decided, in_flight = state.watch, state.decided, state.in_flight
        state.watch, state.decided, state.in_flight = None, False, None
        if watch is None or (watch.crashed is None and (decided or watch.reason is None)):
            return
        reason = watch.crashed or watch.reason
        try:
            if in_flight is not None and in_flight.response is None and not notes(in_flight).audited:
                in_flight.error = mflow.Error(f"mitmproxy could not handle the request: {reason}")
                if self.audit is not None:
                    self.audit.record(in_flight)
                return
            if decided:
                return
            if watch.crashed is None:
                log.warning("mitmproxy refused a connection from %s on %s: %s", _peer(client),
                            client.proxy_mode.full_spec, reason)
            app, listener, policyset = self._app(client)
            tunnel = Tunnel(client.id, app, listener, "", 0, policyset, client=client)
            tunnel.decision = fail_closed(app, f"refused by mitmproxy: {reason}", _version(policyset), "connect")
            tunnel.error = reason
            tunnel.ended = time.time()
            ctx.master.addons.trigger(HushTunnelHook(tunnel))
        except Exception:
            log.exception("audit: could not record a connection mitmproxy refused")


@runtime_checkable
class _Parent(Protocol):
    """A layer with a child (a TLS layer, a mode's layer)."""

    child_layer: Layer | None


def http1_bytes(response: http.Response) -> bytes:
    from mitmproxy.net.http.http1 import assemble_response

    return assemble_response(response)


def _version(policyset) -> str:
    return getattr(policyset, "version", "") or ""


addons = [Intake()]
