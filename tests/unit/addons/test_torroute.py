"""torroute: a Tor route belongs to one flow, never to the client connection's shared server object."""

import asyncio
import dataclasses
import inspect
import logging
from pathlib import Path

import pytest
from mitmproxy import connection
from mitmproxy.net.server_spec import ServerSpec
from mitmproxy.proxy import commands, context, events, layer, layers, server_hooks
from mitmproxy.proxy.layers.http import HttpConnectHook, HTTPMode
from mitmproxy.proxy.layers.http import HttpRequestHeadersHook as RequestHeadersHook
from mitmproxy.proxy.layers.http._hooks import HttpConnectUpstreamHook
from mitmproxy.proxy.layers.http._upstream_proxy import HttpUpstreamProxy
from mitmproxy.test import taddons, tflow

from hush.addons.audit import flow_record
from hush.addons.notes import notes
from hush.addons.torroute import TorRoute, _StaticTor, isolation_key
from tests.tls import client_hello

from .drive import FakeTor, running
from .helpers import connect_flow, http_flow

TOR = ("127.0.0.1", 9050)


def test_a_routed_flow_gets_its_own_server_object():
    router = TorRoute(_StaticTor(TOR))
    with taddons.context(router):
        first = http_flow("http://a.hushtest/x")
        shared = first.server_conn  # mitmproxy hands every request of a connection this one object
        notes(first).app = "a"
        assert router.route_request(first, "app") is None
        assert first.server_conn is not shared and first.server_conn.via == ServerSpec(("http", TOR))
        assert shared.via is None  # the connection's next request starts without a route
        assert notes(first).tor.address == TOR


def test_a_flow_not_routed_drops_a_route_left_on_its_server():
    router = TorRoute(_StaticTor(TOR))
    with taddons.context(router):
        f = http_flow("http://127.0.0.1/direct")
        f.server_conn = connection.Server(address=("127.0.0.1", 80), via=ServerSpec(("http", TOR)))
        router.requestheaders(f)
        assert f.server_conn.via is None and f.server_conn.address == ("127.0.0.1", 80)
        routed = http_flow("http://a.hushtest/x")
        assert router.route_request(routed, "app") is None
        router.requestheaders(routed)
        assert routed.server_conn.via == ServerSpec(("http", TOR))  # its own route stays


def test_a_tunnel_is_relayed_into_tor_only_once_decide_has_read_its_clienthello():
    from mitmproxy.proxy import context, layers

    from hush.addons.tunnel import Tunnel

    router = TorRoute(_StaticTor(TOR))
    with taddons.context(router):
        client = connection.Client(peername=("127.0.0.1", 5000), sockname=("127.0.0.1", 8101))
        for error, chosen, expect in ((None, None, None), ("refused: the TLS names blocked.org", object(), "refused"),
                                      (None, object(), "routed")):
            tunnel = Tunnel(client.id, "a", "l", "onion.org", 443, None, client=client)
            tunnel.error = error
            assert router.route_tunnel(tunnel, "app") is None
            nl = type("NL", (), {})()
            nl.context = context.Context(client, None)
            nl.context.server = connection.Server(address=("onion.org", 443))
            nl.layer = chosen  # None: decide still waits for the rest of the ClientHello
            router.next_layer(nl)
            if expect is None:
                assert nl.layer is None  # nothing relayed yet
            elif expect == "refused":
                assert isinstance(nl.layer, layers.TCPLayer) and nl.context.server.via is None
            else:
                assert nl.context.server.via == ServerSpec(("http", TOR))
            router.client_disconnected(client)


# -- through the whole chain: what a Tor-routed flow or tunnel does on the wire ----------------

TOR_POLICY = """\
app: x
listen: 8101
default: allow
rules:
  - match: {host: onion.org}
    action: tor
    isolation: site
  - match: {host: "*.flow.org"}
    action: tor
    isolation: flow
  - match: {host: app.org}
    action: tor
"""


def run(coro):
    return asyncio.run(coro)


async def tunnel_into_tor(hush, host="onion.org", port=443):
    """A CONNECT decided `tor`, its connection's layer chosen, started: (flow, top layer, the open command)."""
    f = connect_flow(host, port)
    await hush.hook(HttpConnectHook(f))
    ctx = hush.context(f.client_conn, (host, port))
    # no byte yet: nothing can be relayed before the ClientHello is read and checked
    assert await hush.next_layer(ctx, layers.TCPLayer) is None
    top = await hush.next_layer(ctx, layers.TCPLayer, data=client_hello(host))
    [opened] = await hush.events(top, events.Start())
    return f, top, opened


def test_contract_the_mitmproxy_layer_api_torroute_and_counted_rely_on():
    """mitmproxy's proxy layers are a private API (pyproject pins mitmproxy): this fails on an upgrade
    that changes the classes, signatures, attributes or hooks hush uses."""
    from mitmproxy.proxy import tunnel

    # the upstream-proxy layer that sends CONNECT to tor; its make() reads server.via as (scheme, address)
    assert issubclass(HttpUpstreamProxy, tunnel.TunnelLayer)
    assert list(inspect.signature(HttpUpstreamProxy.make).parameters) == ["ctx", "send_connect"]
    server = connection.Server(address=("onion.org", 443), via=ServerSpec(("http", TOR)))
    assert tuple(server.via) == ("http", TOR)
    assert {"via", "sockname", "timestamp_start", "address"} <= set(vars(server)) | set(dir(server))
    # a relay that reads nothing; the HTTP layer (left alone for plain HTTP in a tunnel)
    assert "ignore" in inspect.signature(layers.TCPLayer).parameters
    assert isinstance(layers.HttpLayer, type)
    # the hooks and the data they carry
    assert layer.NextLayerHook.name == "next_layer"
    assert [f.name for f in dataclasses.fields(layer.NextLayerHook)] == ["data"]
    nl = layer.NextLayer(context.Context(connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2)),
                                         None))
    assert nl.layer is None and nl.context.client is not None and hasattr(nl.context, "server")
    assert HttpConnectUpstreamHook.name == "http_connect_upstream"
    assert [f.name for f in dataclasses.fields(HttpConnectUpstreamHook)] == ["flow"]
    # a layer's construction registers it in context.layers (Counted and NextLayer take themselves out);
    # commands carry the connection and the data
    ctx = context.Context(connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2)), None)
    tcp = layers.TCPLayer(ctx, ignore=True)
    assert ctx.layers == [tcp]
    assert list(inspect.signature(commands.SendData).parameters) == ["connection", "data"]
    assert issubclass(commands.StartHook, commands.Command)  # hooks a layer raises are commands it waits on


def test_a_tunnel_decided_tor_sends_connect_with_its_isolation_key_to_tor_then_relays_untouched():
    async def scenario():
        tor = FakeTor()
        async with running(TOR_POLICY, tor=tor) as hush:
            f, top, opened = await tunnel_into_tor(hush)
            assert isinstance(opened, commands.OpenConnection) and opened.connection.address == TOR  # tor, not the site
            opened.connection.sockname = ("127.0.0.1", 40001)
            opened.connection.state = connection.ConnectionState.OPEN
            sent = await hush.events(top, events.OpenConnectionCompleted(opened, None))
            [connect] = [c.data for c in sent if isinstance(c, commands.SendData)]
            assert connect.startswith(b"CONNECT onion.org:443 HTTP/1.1\r\n")  # the name, never an address
            assert b"\r\nX-Tor-Stream-Isolation: hush/x/site/onion.org\r\n" in connect
            assert await hush.events(top, events.DataReceived(opened.connection, b"HTTP/1.1 200 OK\r\n\r\n")) == []
            hello = client_hello("onion.org")
            up = await hush.events(top, events.DataReceived(f.client_conn, hello))
            assert [(c.connection is opened.connection, c.data) for c in up] == [(True, hello)]
            down = await hush.events(top, events.DataReceived(opened.connection, b"\x16\x03\x03 server"))
            assert [(c.connection is f.client_conn, c.data) for c in down] == [(True, b"\x16\x03\x03 server")]
            # tor's STREAM event for that connection names the circuit and exit the tunnel went through
            tor.stream(40002, "99", ("F" * 40, "other"))  # another connection's: ignored
            tor.stream(40001, "17", ("E" * 40, "exit0"))
            [tunnel] = hush.tunnels.announced
            assert (tunnel.route.circuit, tunnel.route.exit) == ("17", ("E" * 40, "exit0"))
            assert tunnel.route.isolation == "hush/x/site/onion.org" and tunnel.route.address == TOR

    run(scenario())


def test_tor_refusing_the_connect_closes_the_tunnel_with_its_answer():
    async def scenario():
        async with running(TOR_POLICY, tor=FakeTor()) as hush:
            _, top, opened = await tunnel_into_tor(hush)
            opened.connection.state = connection.ConnectionState.OPEN
            await hush.events(top, events.OpenConnectionCompleted(opened, None))
            out = await hush.events(top, events.DataReceived(opened.connection, b"HTTP/1.0 404 Not found\r\n\r\n"))
            assert any(isinstance(c, commands.CloseConnection) for c in out)
            assert not any(isinstance(c, commands.SendData) and c.connection.address == ("onion.org", 443)
                           for c in out)

    run(scenario())


def test_a_tunnel_is_routed_only_for_the_decided_target():
    async def scenario():
        async with running(TOR_POLICY, tor=FakeTor()) as hush:
            f = connect_flow("onion.org", 443)
            await hush.hook(HttpConnectHook(f))
            ctx = hush.context(f.client_conn, ("elsewhere.org", 443))  # not what was decided
            top = await hush.next_layer(ctx, layers.TCPLayer)
            assert ctx.server.via is None and "HttpUpstreamProxy" not in repr(top)

    run(scenario())


def test_plain_http_in_a_tor_routed_tunnel_is_left_to_the_http_layer():
    async def scenario():
        async with running(TOR_POLICY, tor=FakeTor()) as hush:
            f = connect_flow("onion.org", 80)
            await hush.hook(HttpConnectHook(f))
            ctx = hush.context(f.client_conn, ("onion.org", 80))
            top = await hush.next_layer(ctx, lambda c: layers.HttpLayer(c, HTTPMode.transparent),
                                        data=b"GET / HTTP/1.1\r\nHost: onion.org\r\n\r\n")
            assert ctx.server.via is None  # each request is decided, and routed if decided tor, on its own
            assert "HttpLayer" in repr(top) and "HttpUpstreamProxy" not in repr(top)

    run(scenario())


def test_tor_not_ready_nothing_is_routed_and_the_connect_is_refused():
    async def scenario():
        async with running(TOR_POLICY, tor=FakeTor(ready=False, reason="bootstrapping 40%")) as hush:
            f = connect_flow("onion.org", 443)
            await hush.hook(HttpConnectHook(f))
            assert f.response is not None and f.response.status_code == 503
            assert b"bootstrapping 40%" in f.response.content
            [tunnel] = hush.tunnels.announced
            assert tunnel.route is None and tunnel.outcome == "tor-unavailable"

    run(scenario())


def test_why_nothing_can_go_through_tor():
    assert TorRoute().unavailable() == "no tor is configured"
    assert TorRoute(FakeTor(ready=False, reason="bootstrapping 40%")).unavailable() == \
        "tor is not ready: bootstrapping 40%"
    assert TorRoute(FakeTor()).unavailable() is None


def test_inspected_requests_dial_tor_and_their_connect_names_their_isolation():
    async def scenario():
        tor = FakeTor()
        async with running(TOR_POLICY, tor=tor) as hush:
            flows = {}
            for url in ("http://onion.org/a", "http://app.org/b", "http://a.flow.org/c", "http://b.flow.org/c",
                        "http://direct.org/d"):
                f = http_flow(url)
                await hush.hook(RequestHeadersHook(f))
                flows[url] = f
            plain = {u: f.server_conn.via and (f.server_conn.via[0], tuple(f.server_conn.via[1]))
                     for u, f in flows.items()}
            assert plain == {**{u: ServerSpec(("http", TOR)) for u in list(flows)[:4]}, "http://direct.org/d": None}
            # mitmproxy reuses an open upstream connection whose `via` equals the request's: the
            # isolation: flow ones equal no other flow's (each its own connection, its own circuit)
            a, b, c, d = (flows[u].server_conn.via for u in list(flows)[:4])
            assert c != d and c != a and c == c and a == b == ServerSpec(("http", TOR))
            again = http_flow("http://a.flow.org/c")
            again.client_conn = flows["http://a.flow.org/c"].client_conn  # the same keep-alive client connection
            await hush.hook(RequestHeadersHook(again))
            assert again.server_conn.via != c
            keys = []
            for port, f in enumerate(list(flows.values())[:4], start=41000):
                upstream = tflow.tflow()  # the CONNECT mitmproxy sends to tor for this flow's connection
                upstream.client_conn = f.client_conn
                upstream.server_conn.address = f.server_conn.via[1]  # the connection to tor: via's address
                upstream.request.method, upstream.request.host, upstream.request.port = "CONNECT", f.request.host, 80
                upstream.server_conn.sockname = ("127.0.0.1", port)
                await hush.hook(HttpConnectUpstreamHook(upstream))
                keys.append(upstream.request.headers["X-Tor-Stream-Isolation"])
            assert keys[:2] == ["hush/x/site/onion.org", "hush/x"]
            assert keys[2].startswith("hush/x/flow/") and keys[3].startswith("hush/x/flow/") and keys[2] != keys[3]
            tor.stream(41000, "5", ("A" * 40, "exit0"))
            record = flow_record(flows["http://onion.org/a"], "full")
            assert (record["tor_isolation"], record["tor_circuit"]) == ("hush/x/site/onion.org", "5")
            assert record["tor_exit"].endswith("~exit0")

    run(scenario())


def test_a_connect_to_tor_hush_did_not_route_still_gets_a_key_of_its_own(caplog):
    async def scenario():
        async with running(TOR_POLICY, tor=FakeTor()) as hush:
            keys = set()
            for _ in range(2):
                upstream = tflow.tflow()
                upstream.request.method, upstream.request.host, upstream.request.port = "CONNECT", "x.org", 443
                await hush.hook(HttpConnectUpstreamHook(upstream))
                keys.add(upstream.request.headers["X-Tor-Stream-Isolation"])
            assert len(keys) == 2 and all(k.startswith("hush/unrouted/") for k in keys)  # never a shared circuit

    with caplog.at_level(logging.WARNING, logger="hush.tor"):
        run(scenario())
    assert "CONNECT to tor for x.org:443 without a route" in caplog.text


def test_a_closed_connection_leaves_no_route_behind():
    async def scenario():
        tor = FakeTor()
        async with running(TOR_POLICY, tor=tor) as hush:
            f = http_flow("http://onion.org/a")
            await hush.hook(RequestHeadersHook(f))
            await hush.hook(server_hooks.ClientDisconnectedHook(f.client_conn))
            upstream = tflow.tflow()
            upstream.client_conn = f.client_conn
            upstream.request.method, upstream.request.host, upstream.request.port = "CONNECT", "onion.org", 80
            upstream.server_conn.sockname = ("127.0.0.1", 42000)
            await hush.hook(HttpConnectUpstreamHook(upstream))
            assert upstream.request.headers["X-Tor-Stream-Isolation"].startswith("hush/unrouted/")

    run(scenario())


@pytest.mark.parametrize(("isolation", "host", "key"), [
    ("app", "a.example.co.uk", "hush/wa"), ("site", "a.b.example.co.uk", "hush/wa/site/example.co.uk"),
    ("site", "onion.org", "hush/wa/site/onion.org")])
def test_isolation_keys(isolation, host, key):
    assert isolation_key(isolation, "wa", host) == key


def test_flow_isolation_is_a_new_key_every_time():
    keys = {isolation_key("flow", "wa", "a.org") for _ in range(100)}
    assert len(keys) == 100 and all(k.startswith("hush/wa/flow/") for k in keys)


def test_mitmdump_names_a_running_tors_tunnel_port():
    router = TorRoute()
    with taddons.context(router) as tctx:
        tctx.configure(router, hush_tor_tunnel="127.0.0.1:9999")
        assert router.unavailable() is None
        f = http_flow("http://onion.org/a")
        assert router.route_request(f, "app") is None and f.server_conn.via == ServerSpec(("http", ("127.0.0.1", 9999)))
        tctx.configure(router, hush_tor_tunnel=":9150")  # no host: loopback
        g = http_flow("http://onion.org/b")
        router.route_request(g, "app")
        assert g.server_conn.via == ServerSpec(("http", ("127.0.0.1", 9150)))


def test_tor_not_ready_an_inspected_request_is_answered_503_and_dials_nothing():
    async def scenario():
        async with running(TOR_POLICY, tor=FakeTor(ready=False, reason="bootstrapping 10%")) as hush:
            f = http_flow("http://onion.org/a")
            f.server_conn = connection.Server(address=("onion.org", 80))  # not connected yet, as on a new connection
            await hush.hook(RequestHeadersHook(f))
            assert f.response.status_code == 503 and f.server_conn.via is None
            record = flow_record(f, "full")
            assert (record["decision"], record["ip_exposed"]) == ("tor-unavailable", False)

    run(scenario())


def test_tor_not_ready_a_socks5_tunnel_relays_nothing_and_may_not_dial():
    from mitmproxy.proxy.mode_specs import ProxyMode

    policy = TOR_POLICY.replace("listen: 8101", "listen: {port: 1080, mode: socks5}")

    async def scenario():
        async with running(policy, tor=FakeTor(ready=False, reason="bootstrapping 10%")) as hush:
            client = tflow.tclient_conn()
            client.proxy_mode = ProxyMode.parse("socks5@127.0.0.1:1080")
            ctx = hush.context(client, ("onion.org", 443))
            nextlayer = layer.NextLayer(ctx)
            nextlayer.events.append(events.DataReceived(client, client_hello("onion.org")))
            nextlayer.layer = layers.TCPLayer(ctx)  # what mitmproxy would choose for TLS it does not intercept
            await hush.hook(layer.NextLayerHook(nextlayer))
            assert ctx.server.via is None and "HttpUpstreamProxy" not in repr(nextlayer.layer)
            [tunnel] = hush.tunnels.announced
            assert tunnel.outcome == "tor-unavailable" and tunnel.route is None
            data = server_hooks.ServerConnectionHookData(ctx.server, client)
            await hush.hook(server_hooks.ServerConnectHook(data))
            assert ctx.server.error and ctx.server.error.startswith("hush: no decision permits")

    run(scenario())


def test_the_fake_tor_has_what_torroute_needs_and_the_daemons_tor_has_it_too():
    from hush.addons.torroute import Tor
    from hush.daemon.config import TorConfig
    from hush.daemon.tor import Circuit, TorManager

    needed = {name for name in vars(Tor) if not name.startswith("_")}
    assert needed == {"tunnel_address", "ready", "reason", "stream_callbacks"}
    real = TorManager(TorConfig(), Path("/nonexistent"))
    assert all(hasattr(FakeTor(), name) and hasattr(real, name) for name in needed)
    assert "exit" in vars(Circuit)  # what a STREAM callback reads of the circuit (FakeTor.stream gives it)


def test_the_refusal_names_tors_bootstrap_percentage_and_phase():
    from hush.daemon.tor import Bootstrap

    tor = FakeTor(ready=False, reason="tor 4242 started")
    assert TorRoute(tor).unavailable() == "tor is not ready: tor 4242 started"  # a tor reporting no progress
    tor.bootstrap = Bootstrap(14, "handshake", "Handshaking with a relay")  # as TorManager has it
    assert TorRoute(tor).unavailable() == \
        "tor is not ready: tor 4242 started; bootstrapped 14% (handshake: Handshaking with a relay)"
    tor.bootstrap = Bootstrap(0, "", "")
    assert TorRoute(tor).unavailable() == "tor is not ready: tor 4242 started"

    async def scenario():
        tor.bootstrap = Bootstrap(14, "handshake", "Handshaking with a relay")
        async with running(TOR_POLICY, tor=tor) as hush:
            f = connect_flow("onion.org", 443)
            await hush.hook(HttpConnectHook(f))
            assert f.response is not None and f.response.status_code == 503
            assert b"bootstrapped 14% (handshake: Handshaking with a relay)" in f.response.content

    run(scenario())
