"""torroute: a Tor route belongs to one flow, never to the client connection's shared server object."""

from mitmproxy import connection
from mitmproxy.net.server_spec import ServerSpec
from mitmproxy.test import taddons

from hush.addons.torroute import TorRoute, _StaticTor

from .helpers import http_flow

TOR = ("127.0.0.1", 9050)


def test_a_routed_flow_gets_its_own_server_object():
    router = TorRoute(_StaticTor(TOR))
    with taddons.context(router):
        first = http_flow("http://a.hushtest/x")
        shared = first.server_conn  # mitmproxy hands every request of a connection this one object
        first.metadata["hush.app"] = "a"
        assert router.route_request(first, "app") is None
        assert first.server_conn is not shared and first.server_conn.via == ServerSpec(("http", TOR))
        assert shared.via is None  # the connection's next request starts without a route
        assert first.metadata["hush.tor"].address == TOR


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
            tunnel = Tunnel(client.id, "a", "l", "onion.org", 443, None)
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
