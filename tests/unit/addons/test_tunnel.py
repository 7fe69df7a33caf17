"""tunnel: the Tunnel record, the hush_tunnel hooks, and Counted, a layer that counts what the
layers under it send (mitmproxy's layer API, a private one: the contract test below pins it)."""

import dataclasses
import inspect
import time

from mitmproxy import connection, hooks
from mitmproxy.proxy import commands, context, events, layer, layers
from mitmproxy.test import taddons

from hush.addons.tunnel import Counted, HushTunnelEndHook, HushTunnelHook, Tally, Tunnel


def new_context(tctx):
    client = connection.Client(peername=("127.0.0.1", 5000), sockname=("127.0.0.1", 8101),
                               state=connection.ConnectionState.OPEN)
    ctx = context.Context(client, tctx.options)
    ctx.server = connection.Server(address=("site.org", 443))
    return ctx


def relay_through_nextlayer(ctx, choose):
    """What mitmproxy does with a new connection: a NextLayer asks (next_layer), ``choose(ctx)``
    answers, the connection opens, 5 bytes come from the app and 6 from the site.  The commands."""
    nl = layer.NextLayer(ctx, ask_on_start=True)
    [hook] = list(nl.handle_event(events.Start()))
    assert isinstance(hook, layer.NextLayerHook) and hook.data is nl
    nl.layer = choose(ctx)
    given = []
    for command in nl.handle_event(events.HookCompleted(hook)):
        given.append(command)
        if isinstance(command, commands.OpenConnection):
            command.connection.state = connection.ConnectionState.OPEN
            given += nl.handle_event(events.OpenConnectionCompleted(command, None))
    given += nl.handle_event(events.DataReceived(ctx.client, b"hello"))
    given += nl.handle_event(events.DataReceived(ctx.server, b"world!"))
    return given


def test_contract_counted_sits_where_mitmproxy_puts_the_next_layer():
    """Counted overrides ``Layer.handle_event`` and leaves ``context.layers`` as NextLayer does: this
    fails if mitmproxy stops handing a chosen layer's events to its ``handle_event``, stops registering
    layers in ``context.layers`` on construction, or changes the commands a relay gives."""
    assert "context" in inspect.signature(layer.Layer.__init__).parameters
    assert list(inspect.signature(commands.SendData).parameters) == ["connection", "data"]
    with taddons.context() as tctx:
        plain = relay_through_nextlayer(new_context(tctx), lambda ctx: layers.TCPLayer(ctx, ignore=True))
        tally = Tally()
        ctx = new_context(tctx)
        counted = relay_through_nextlayer(ctx, lambda c: Counted(c, layers.TCPLayer(c, ignore=True), tally))
    # the same commands, the same data to the same sides: Counted changes nothing
    assert [(type(c), getattr(c, "data", None)) for c in counted] == [(type(c), getattr(c, "data", None))
                                                                        for c in plain]
    assert [(c.connection is ctx.client, c.data) for c in counted if isinstance(c, commands.SendData)] == [
        (False, b"hello"), (True, b"world!")]
    assert tally == Tally(up=5, down=6)


def test_counted_is_not_among_the_context_layers_its_inner_layer_is():
    with taddons.context() as tctx:
        ctx = new_context(tctx)
        inner = layers.TCPLayer(ctx, ignore=True)
        counted = Counted(ctx, inner, Tally())
        assert ctx.layers == [inner] and counted.inner is inner
        assert repr(counted) == f"Counted:{inner!r}"


def test_counted_counts_every_send_by_direction_and_passes_every_command_through():
    class Scripted(layer.Layer):
        def __init__(self, ctx, script):
            super().__init__(ctx)
            self.script = script

        def _handle_event(self, event):
            yield from self.script

    with taddons.context() as tctx:
        ctx = new_context(tctx)
        other = connection.Server(address=("tor", 9050))
        script = [commands.SendData(ctx.server, b"abc"), commands.Log("x"), commands.SendData(ctx.client, b"12"),
                  commands.SendData(other, b"defg"), commands.SendData(ctx.client, b""),
                  commands.CloseConnection(ctx.server)]
        tally = Tally()
        out = list(Counted(ctx, Scripted(ctx, script), tally).handle_event(events.Start()))
    assert out == script  # the very commands, in order
    assert tally == Tally(up=3 + 4, down=2)  # up: towards the site or tor, whichever connection; down: to the app


def test_a_tunnel_starts_now_with_a_key_of_its_own_and_nothing_decided():
    before = time.time()
    a = Tunnel("c1", "wa", "regular@127.0.0.1:8101", "a.org", 443, None)
    b = Tunnel("c1", "wa", "regular@127.0.0.1:8101", "a.org", 443, None)
    assert a.key != b.key and len(a.key) == 32  # one audit row each
    assert before <= a.started <= time.time() and a.ended is None
    assert (a.decision, a.flow, a.error, a.outcome, a.route, a.address) == (None, None, None, None, None, None)
    assert a != b  # identity, not value: two tunnels to the same place are two tunnels


def test_the_hooks_are_mitmproxy_hooks_named_for_addons():
    assert HushTunnelHook.name == "hush_tunnel" and HushTunnelEndHook.name == "hush_tunnel_end"
    assert hooks.all_hooks["hush_tunnel"] is HushTunnelHook and hooks.all_hooks["hush_tunnel_end"] is HushTunnelEndHook
    tunnel = Tunnel("c1", "wa", "l", "a.org", 443, None)
    assert HushTunnelHook(tunnel).args() == [tunnel] and HushTunnelEndHook(tunnel).args() == [tunnel]
    assert [f.name for f in dataclasses.fields(HushTunnelHook)] == ["tunnel"]


def test_an_addon_gets_the_tunnel_through_the_addon_manager():
    class Listener:
        def __init__(self):
            self.seen = []

        def hush_tunnel(self, tunnel):
            self.seen.append(("start", tunnel))

        def hush_tunnel_end(self, tunnel):
            self.seen.append(("end", tunnel))

    listener = Listener()
    tunnel = Tunnel("c1", "wa", "l", "a.org", 443, None)
    with taddons.context(listener) as tctx:
        tctx.master.addons.trigger(HushTunnelHook(tunnel))
        tctx.master.addons.trigger(HushTunnelEndHook(tunnel))
    assert listener.seen == [("start", tunnel), ("end", tunnel)]


# -- the hand-over to the splice relay: the private APIs it reads (a contract test) -------------

def test_contract_mitmproxys_connection_handler_as_the_relay_reads_it():
    """The hand-over reads the proxyserver addon's ``connections`` (client id → handler), each
    handler's ``transports`` (connection → ConnectionIO with ``reader``/``writer``) and its
    ``timeout_watchdog.register_activity``: if mitmproxy renames them, this fails, not the relay."""
    from mitmproxy.addons import proxyserver
    from mitmproxy.proxy import server

    assert "connections" in vars(proxyserver.Proxyserver())
    assert {f.name for f in dataclasses.fields(server.ConnectionIO)} >= {"handler", "reader", "writer"}
    assert "transports" in inspect.signature(server.ConnectionHandler.__init__).parameters or \
        "transports" in server.ConnectionHandler.__annotations__
    assert callable(server.TimeoutWatchdog.register_activity)
    assert "timeout_watchdog" in server.ConnectionHandler.__annotations__


def test_contract_asyncio_streams_idle_and_buffer():
    """An idle stream (its reader waits in read(), nothing buffered) is told apart from one whose
    reader holds data; what the stream buffered is taken, once."""
    import asyncio

    from hush.addons.tunnel import _idle, _take

    async def go():
        reader = asyncio.StreamReader()
        task = asyncio.ensure_future(reader.read(100))
        await asyncio.sleep(0)
        assert _idle(reader)  # waiting in read()
        reader.feed_data(b"abc")
        assert not _idle(reader)  # woken with data: its task has a chunk on the way
        assert await task == b"abc"
        reader.feed_data(b"left")  # read from the socket, not consumed yet
        assert not _idle(reader) and _take(reader) == b"left" and _take(reader) == b""
        reader.feed_eof()
        assert not _idle(reader)

    asyncio.run(go())


def test_only_layers_that_relay_untouched_are_handed_to_the_relay():
    from mitmproxy.proxy.layers import tls

    from hush.addons.tunnel import only_relays

    with taddons.context() as tctx:
        ctx = new_context(tctx)
        assert only_relays(layers.TCPLayer(ctx, ignore=True))
        assert not only_relays(layers.TCPLayer(ctx))  # a TCP flow: its hooks see every message
        client_tls = tls.ClientTLSLayer(ctx)
        client_tls.child_layer = layers.TCPLayer(ctx, ignore=True)
        assert not only_relays(client_tls)  # TLS still to be read (or intercepted)
        client_tls.conn = connection.Client(peername=("ignore-conn", 0), sockname=("ignore-conn", 0))
        assert only_relays(client_tls)  # what mitmproxy makes of it when tls_clienthello ignores it
        assert not only_relays(layers.HttpLayer(ctx, layers.http.HTTPMode.transparent))
        assert not only_relays(None)


# -- the watch of a second ClientHello after a HelloRetryRequest (handshake.RetryWatch) -------------

def opened(ctx, tunnel=None):
    """Counted over a relay (TCPLayer, as a passed-through TLS tunnel ends up), started and connected;
    ``tunnel`` is the connection's, decided direct (what act notes as relayed)."""
    from hush.addons.notes import conn_notes

    if tunnel is not None:
        conn_notes(ctx.client).tunnel = conn_notes(ctx.client).relayed = tunnel
        conn_notes(ctx.client).permits.add(("site.org", 443))
    counted = Counted(ctx, layers.TCPLayer(ctx, ignore=True), Tally())
    counted._relayable = False  # no event loop here: _eligible() is asked directly
    for command in counted.handle_event(events.Start()):
        if isinstance(command, commands.OpenConnection):
            command.connection.state = connection.ConnectionState.OPEN
            list(counted.handle_event(events.OpenConnectionCompleted(command, None)))
    return counted


def sent(given, conn) -> bytes:
    return b"".join(c.data for c in given if isinstance(c, commands.SendData) and c.connection is conn)


def closed(given, conn) -> bool:
    return any(isinstance(c, commands.CloseConnection) and c.connection is conn for c in given)


def direct_tunnel():
    from tests.unit.addons.helpers import policyset

    policy = policyset("app: x\nlisten: 8101\ndefault: allow\n")
    return Tunnel("c", "x", "l", "site.org", 443, policy, decision=policy.decide_connect("x", "site.org", 443))


def test_counted_refuses_a_second_hello_naming_another_host_after_a_retry():
    from hush.addons.notes import conn_notes
    from hush.daemon.handshake import CCS
    from tests.tls import client_hello
    from tests.unit.daemon.test_handshake import second_hello, server_answer

    hello, again = client_hello(None), CCS + second_hello("blocked.org")
    with taddons.context() as tctx:
        for pipelined in (True, False):
            ctx = new_context(tctx)
            tunnel = direct_tunnel()
            counted = opened(ctx, tunnel)
            given = list(counted.handle_event(events.DataReceived(ctx.client, hello + (again if pipelined else b""))))
            assert sent(given, ctx.server) == hello  # the first hello goes; what follows it waits for the server
            retry = server_answer(hello)
            given = list(counted.handle_event(events.DataReceived(ctx.server, retry)))
            if not pipelined:
                assert sent(given, ctx.client) == retry and not closed(given, ctx.client)
                given = list(counted.handle_event(events.DataReceived(ctx.client, again)))
            assert sent(given, ctx.server) == b"" and closed(given, ctx.client), pipelined
            assert tunnel.error.startswith("refused: its second TLS ClientHello") and "blocked.org" in tunnel.error
            assert not conn_notes(ctx.client).permits
            assert list(counted.handle_event(events.DataReceived(ctx.client, b"more"))) == []  # closed: nothing goes
            assert counted.tally == Tally(up=len(hello), down=len(retry))


def test_counted_lets_a_second_hello_naming_the_same_host_through_then_may_splice(monkeypatch):
    from hush.addons import tunnel as tunnels
    from hush.daemon.handshake import CCS
    from tests.tls import client_hello
    from tests.unit.daemon.test_handshake import second_hello, server_answer

    monkeypatch.setattr(tunnels, "SPLICE_AFTER", 0)
    hello, again = client_hello("site.org"), CCS + second_hello("site.org")
    with taddons.context() as tctx:
        ctx = new_context(tctx)
        tunnel = direct_tunnel()
        counted = opened(ctx, tunnel)
        assert sent(counted.handle_event(events.DataReceived(ctx.client, hello + again)), ctx.server) == hello
        assert not counted._eligible()  # watching: no hand-over to the splice relay
        given = list(counted.handle_event(events.DataReceived(ctx.server, server_answer(hello))))
        assert sent(given, ctx.server) == again and not closed(given, ctx.client)
        assert tunnel.error is None and counted._eligible()
        assert sent(counted.handle_event(events.DataReceived(ctx.client, b"app data")), ctx.server) == b"app data"


def test_counted_stops_watching_at_a_server_hello_that_is_no_retry():
    from tests.tls import client_hello
    from tests.unit.daemon.test_handshake import server_answer

    hello, early = client_hello("site.org"), b"\x17\x03\x03\x00\x05early"
    with taddons.context() as tctx:
        ctx = new_context(tctx)
        counted = opened(ctx, direct_tunnel())
        assert sent(counted.handle_event(events.DataReceived(ctx.client, hello + early)), ctx.server) == hello
        answer = server_answer(hello, retry=False)
        given = list(counted.handle_event(events.DataReceived(ctx.server, answer)))
        assert sent(given, ctx.client) == answer and sent(given, ctx.server) == early
        assert counted._watch is None and counted.tally == Tally(up=len(hello + early), down=len(answer))


def test_counted_refuses_a_client_that_ends_its_side_with_bytes_held():
    from tests.tls import client_hello

    hello = client_hello(None)
    with taddons.context() as tctx:
        ctx = new_context(tctx)
        tunnel = direct_tunnel()
        counted = opened(ctx, tunnel)
        list(counted.handle_event(events.DataReceived(ctx.client, hello + hello)))
        given = list(counted.handle_event(events.ConnectionClosed(ctx.client)))
        assert closed(given, ctx.client) and sent(given, ctx.server) == b""
        assert tunnel.error.startswith("refused: the client ended its side")


def test_counted_does_not_watch_what_is_not_tls():
    with taddons.context() as tctx:
        ctx = new_context(tctx)
        counted = opened(ctx, direct_tunnel())
        given = list(counted.handle_event(events.DataReceived(ctx.client, b"\x16GET / HTTP/1.1\r\n")))
        assert counted._watch is None and counted._refused  # a 0x16 first byte that is no record: refused
        ctx = new_context(tctx)
        counted = opened(ctx, direct_tunnel())
        given = list(counted.handle_event(events.DataReceived(ctx.client, b"GET / HTTP/1.1\r\n")))
        assert sent(given, ctx.server) == b"GET / HTTP/1.1\r\n" and counted._watch is None and counted._looked
