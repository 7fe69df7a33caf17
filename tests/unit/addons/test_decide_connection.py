"""decide, connection level: tunnels that stop being HTTP, the SNI of inspected and Tor-routed
tunnels, the SNI hush sends (issue 11, classes 5–7)."""


from mitmproxy import connection
from mitmproxy.proxy import context
from mitmproxy.proxy.server_hooks import ServerConnectionHookData
from mitmproxy.test import taddons, tflow

from hush.addons.decide import UNREADABLE, Decide, client_hello_sni
from hush.addons.notes import conn_notes, notes
from tests.tls import client_hello

from .helpers import Recorder, connect_flow, http_flow, noted, policyset

POLICY = """\
app: x
listen: 8101
default: allow
rules:
  - match: {host: [blocked.org, "*.blocked.org"]}
    action: block
  - match: {host: paths.org, path: "/private/*"}
    action: block
  - match: {host: onion.org}
    action: tor
  - match: {path: /never}
    action: block
"""


class Revocations:
    """Stands in for act: records what decide withdraws."""

    def __init__(self):
        self.revoked = []

    def revoke(self, client):
        self.revoked.append(client.id)


def test_client_hello_sni():
    hello = client_hello("a.example")
    assert client_hello_sni(hello) == ("a.example",)
    assert client_hello_sni(hello[:1]) is None and client_hello_sni(hello[:2]) is None  # a record starts
    assert client_hello_sni(b"") is None  # nothing yet: not "not TLS" (it would be relayed unchecked)
    assert client_hello_sni(hello[:40]) is None  # still arriving
    assert client_hello_sni(client_hello(None)) == (None,)
    assert client_hello_sni(b"GET / HTTP/1.1\r\n") == (None,)  # not TLS: nothing to read
    assert client_hello_sni(b"\x16\x03\x01\x00\x10" + b"\x01\x00\x00\x0c" + b"\xff" * 12) is UNREADABLE
    # a record header announcing more than any ClientHello hush waits for
    assert client_hello_sni(b"\x16\x03\x01\xff\xff\x01\xff\xff\xff" + b"\x00" * 70_000) is UNREADABLE


def test_client_hello_sni_of_another_tls_record_first_is_unreadable():
    # found: OpenSSL skips empty change_cipher_spec records before a ClientHello and serves its name;
    # "not TLS" here sent a blocked name through tor unchecked
    hello = client_hello("blocked.org")
    for first in (b"\x14\x03\x03\x00\x00", b"\x14\x03\x01\x00\x00" * 3, b"\x15\x03\x03\x00\x00",
                  b"\x17\x03\x03\x00\x00", b"\x18\x03\x03\x00\x00"):
        assert client_hello_sni(first + hello) is UNREADABLE, first
        assert client_hello_sni(first) is UNREADABLE, first
    assert client_hello_sni(b"\x14") is None and client_hello_sni(b"\x14\x03") is None  # a record header arriving
    assert client_hello_sni(b"\x14\x01") == (None,) and client_hello_sni(b"\x19\x03\x03") == (None,)  # not TLS


class _Hello:
    def __init__(self, sni):
        self.sni = sni


def clienthello(client, sni, host="127.0.0.1"):
    from mitmproxy import tls

    c = context.Context(client, None)
    c.server = tflow.tserver_conn()
    c.server.address = (host, 443)
    return tls.ClientHelloData(c, _Hello(sni))


def inspected_connect(decide, host="127.0.0.1"):
    f = connect_flow(host)
    noted(f, policy=policyset(POLICY), app="x", listener="l")
    decide.http_connect(f)
    assert conn_notes(f.client_conn).tunnel.decision is None  # the /never rule: inspected
    return f


def test_an_inspected_tunnel_naming_a_blocked_host_is_closed():
    act, recorder = Revocations(), Recorder()
    decide = Decide(act=act)
    with taddons.context(decide, recorder):
        f = inspected_connect(decide)
        data = clienthello(f.client_conn, "X.Blocked.org.")
        decide.tls_clienthello(data)
    tunnel = conn_notes(f.client_conn).tunnel
    assert data.ignore_connection is True  # relayed to nowhere: no permit is left for the dial
    assert act.revoked == [f.client_conn.id] and recorder.tunnels == [tunnel]
    assert tunnel.decision.action.name == "block" and tunnel.error.startswith("refused: the TLS names x.blocked.org")


def test_an_inspected_tunnel_naming_another_host_decides_each_request_on_it_too():
    act = Revocations()
    decide = Decide(act=act)
    ps = policyset(POLICY)
    with taddons.context(decide, Recorder()):
        f = inspected_connect(decide)
        decide.tls_clienthello(clienthello(f.client_conn, "paths.org"))
        assert act.revoked == []

        def request(path):
            r = http_flow(f"https://127.0.0.1{path}")
            r.client_conn = f.client_conn
            noted(r, policy=ps, app="x")
            decide.requestheaders(r)
            return notes(r).decision

        private, public = request("/private/x"), request("/public/x")
    assert (private.action.name, private.host) == ("block", "paths.org")
    assert (public.action.name, public.host) == ("allow", None)


def test_a_tor_routed_name_makes_the_request_go_through_tor():
    decide = Decide(act=Revocations())
    ps = policyset(POLICY)
    with taddons.context(decide, Recorder()):
        f = inspected_connect(decide)
        decide.tls_clienthello(clienthello(f.client_conn, "onion.org"))
        r = http_flow("https://127.0.0.1/x")
        r.client_conn = f.client_conn
        noted(r, policy=ps, app="x")
        decide.requestheaders(r)
    assert notes(r).decision.action.name == "tor"


def server_hook(client, address, sni):
    server = connection.Server(address=address)
    server.sni = sni
    return ServerConnectionHookData(server=server, client=client)


def test_the_sni_hush_sends_must_have_been_decided():
    decide = Decide(act=Revocations())
    with taddons.context(decide, Recorder()):
        f = inspected_connect(decide)
        undecided = server_hook(f.client_conn, ("127.0.0.1", 443), "elsewhere.org")
        decide.server_connect(undecided)
        assert undecided.server.error and "elsewhere.org" in undecided.server.error
        for sni in ("127.0.0.1", None):  # the address dialled, or no name at all
            ok = server_hook(f.client_conn, ("127.0.0.1", 443), sni)
            decide.server_connect(ok)
            assert ok.server.error is None
        decide.tls_clienthello(clienthello(f.client_conn, "paths.org"))  # checked: may be sent
        checked = server_hook(f.client_conn, ("127.0.0.1", 443), "PATHS.org")
        decide.server_connect(checked)
        assert checked.server.error is None


def test_socks5_a_block_on_either_the_destination_or_the_sni_closes_it():
    from mitmproxy.proxy.mode_specs import ProxyMode

    from hush.addons.identify import Identify
    from hush.daemon.policy.holder import PolicyHolder

    text = POLICY.replace("listen: 8101", "listen: {port: 1080, mode: socks5}")
    identify, recorder = Identify(PolicyHolder(policyset(text))), Recorder()
    decide = Decide(identify, Revocations())
    with taddons.context(identify, decide, recorder):
        client = tflow.tclient_conn()
        client.proxy_mode = ProxyMode.parse("socks5@127.0.0.1:1080")
        data = clienthello(client, "blocked.org", host="127.0.0.1")  # the address alone: inspected
        decide.tls_clienthello(data)
    assert data.ignore_connection is True
    [tunnel] = recorder.tunnels
    assert (tunnel.host, tunnel.decision.action.name) == ("blocked.org", "block")


class FakeNextLayer:
    def __init__(self, client, data: bytes, host="onion.org"):
        self.context = context.Context(client, None)
        self.context.server = connection.Server(address=(host, 443))
        self.layer = object()  # what mitmproxy's next_layer addon chose
        self._data = data

    def data_client(self):
        return self._data


def test_a_tor_routed_tunnel_waits_for_its_whole_clienthello_then_checks_it():
    act = Revocations()
    decide = Decide(act=act)
    with taddons.context(decide, Recorder()):
        f = connect_flow("onion.org")
        noted(f, policy=policyset(POLICY), app="x", listener="l")
        decide.http_connect(f)
        tunnel = conn_notes(f.client_conn).tunnel
        tunnel.route = object()  # what torroute sets when act applies the tor action
        hello = client_hello("blocked.org")
        for first in (b"", hello[:1], hello[:30]):  # asked before any byte (transparent mode asks at once), or early
            partial = FakeNextLayer(f.client_conn, first)
            decide.next_layer(partial)
            assert partial.layer is None and tunnel.error is None  # wait: nothing is relayed yet
        whole = FakeNextLayer(f.client_conn, hello)
        decide.next_layer(whole)
    assert tunnel.error.startswith("refused: the TLS names blocked.org") and act.revoked == [f.client_conn.id]


def test_a_tor_routed_tunnel_naming_its_own_host_goes_on():
    act = Revocations()
    decide = Decide(act=act)
    with taddons.context(decide, Recorder()):
        f = connect_flow("onion.org")
        noted(f, policy=policyset(POLICY), app="x", listener="l")
        decide.http_connect(f)
        tunnel = conn_notes(f.client_conn).tunnel
        tunnel.route = object()
        nl = FakeNextLayer(f.client_conn, client_hello("onion.org"))
        decide.next_layer(nl)
    assert nl.layer is not None and tunnel.error is None and act.revoked == []


def test_tcp_in_an_inspected_tunnel_is_closed_and_every_permit_withdrawn():
    from mitmproxy import tcp

    act, recorder = Revocations(), Recorder()
    decide = Decide(act=act)
    with taddons.context(decide, recorder):
        f = inspected_connect(decide)
        flow = tcp.TCPFlow(f.client_conn, connection.Server(address=("127.0.0.1", 443)), True)
        decide.tcp_start(flow)
    [tunnel] = recorder.tunnels
    assert tunnel.decision.note == "fail-closed: rules need HTTP but the connection is not HTTP"
    assert set(act.revoked) == {f.client_conn.id}


def test_a_protocol_switch_on_a_decided_connection_is_left_to_its_request():
    from mitmproxy import tcp

    act, recorder = Revocations(), Recorder()
    decide = Decide(act=act)
    with taddons.context(decide, recorder):
        f = inspected_connect(decide)
        server = connection.Server(address=("127.0.0.1", 443))
        server.timestamp_start = 1.0  # opened by a request decided on its own (a 101 upgrade)
        decide.tcp_start(tcp.TCPFlow(f.client_conn, server, True))
    assert recorder.tunnels == [] and act.revoked == []


def test_a_socks5_destination_the_policy_blocks_is_refused_before_it_is_granted():
    from mitmproxy.proxy.mode_specs import ProxyMode

    from hush.addons.decide import SOCKS5_GENERAL_FAILURE, SOCKS5_NOT_ALLOWED
    from hush.addons.identify import Identify
    from hush.daemon.policy.holder import PolicyHolder

    from .drive import FakeTor

    text = POLICY.replace("listen: 8101", "listen: {port: 1080, mode: socks5}")

    class Act(Revocations):
        def __init__(self, router):
            super().__init__()
            self.services = type("Services", (), {"router": router})()

    from hush.addons.torroute import TorRoute

    for tor, tor_code in ((FakeTor(), None), (FakeTor(ready=False, reason="bootstrapping"), SOCKS5_GENERAL_FAILURE)):
        identify, recorder = Identify(PolicyHolder(policyset(text))), Recorder()
        decide = Decide(identify, Act(TorRoute(tor)))
        with taddons.context(identify, decide, recorder):
            def ask(host, port=443, decide=decide):
                client = tflow.tclient_conn()
                client.proxy_mode = ProxyMode.parse("socks5@127.0.0.1:1080")
                return decide.socks_refusal(client, connection.Server(address=(host, port))), client

            code, client = ask("www.blocked.org")
            assert code == SOCKS5_NOT_ALLOWED and conn_notes(client).socks_seen
            assert ask("paths.org")[0] is None  # a rule needs the request: granted, decided per request
            assert ask("allowed.org")[0] is None  # allowed: granted, decided at its ClientHello as before
            assert ask("onion.org")[0] == tor_code  # tor: refused (0x01) only when tor cannot carry it
            client = tflow.tclient_conn()  # not a SOCKS5 connection: nothing to do with it
            assert decide.socks_refusal(client, connection.Server(address=("blocked.org", 443))) is None
        announced = [(t.host, t.decision.action.name) for t in recorder.tunnels]
        assert announced == [("www.blocked.org", "block")] + ([("onion.org", "tor")] if tor_code else [])


def test_a_socks5_connection_with_no_policy_fails_closed_with_0x01():
    from mitmproxy.proxy.mode_specs import ProxyMode

    from hush.addons.decide import SOCKS5_GENERAL_FAILURE
    from hush.addons.identify import Identify
    from hush.daemon.policy.holder import PolicyHolder

    identify = Identify(PolicyHolder(None))
    decide = Decide(identify, Revocations())
    with taddons.context(identify, decide, Recorder()):
        client = tflow.tclient_conn()
        client.proxy_mode = ProxyMode.parse("socks5@127.0.0.1:1080")
        assert decide.socks_refusal(client, connection.Server(address=("example.org", 443))) == SOCKS5_GENERAL_FAILURE


def test_a_tunnel_whose_first_record_is_not_a_hello_is_closed_once_its_header_is_in():
    # found: an empty change_cipher_spec record first (OpenSSL skips it, then serves the hello's name);
    # mitmproxy chose raw TCP for it and the decided tunnel was relayed, its name never checked
    from mitmproxy import tcp
    from mitmproxy.proxy.layers.tcp import TCPLayer

    act, recorder = Revocations(), Recorder()
    decide = Decide(act=act)
    with taddons.context(decide, recorder):
        f = connect_flow("127.0.0.1")
        hosts_only = "app: x\nlisten: 8101\ndefault: allow\nrules:\n  - {match: {host: blocked.org}, action: block}\n"
        noted(f, policy=policyset(hosts_only), app="x", listener="l")
        decide.http_connect(f)
        for data, waits in ((b"\x14", True), (b"\x14\x03", True), (b"\x17\x01", False)):
            nl = FakeNextLayer(f.client_conn, data, host="127.0.0.1")
            nl.layer = TCPLayer(nl.context)
            decide.next_layer(nl)
            assert (nl.layer is None) is waits and not conn_notes(f.client_conn).tls_unreadable, data
        nl = FakeNextLayer(f.client_conn, b"\x14\x03\x03\x00\x00" + client_hello("blocked.org"), host="127.0.0.1")
        nl.layer = TCPLayer(nl.context)
        decide.next_layer(nl)
        assert nl.layer is not None and conn_notes(f.client_conn).tls_unreadable
        flow = tcp.TCPFlow(f.client_conn, connection.Server(address=("127.0.0.1", 443)), True)
        decide.tcp_start(flow)
    [tunnel] = recorder.tunnels
    assert tunnel.decision.action.name == "allow" and flow.error is not None  # killed
    assert tunnel.error.startswith("refused: the tunnel's TLS record cannot be read")
    assert act.revoked == [f.client_conn.id]


def test_a_tor_routed_tunnel_whose_first_record_is_not_a_hello_is_refused():
    act = Revocations()
    decide = Decide(act=act)
    with taddons.context(decide, Recorder()):
        f = connect_flow("onion.org")
        noted(f, policy=policyset(POLICY), app="x", listener="l")
        decide.http_connect(f)
        tunnel = conn_notes(f.client_conn).tunnel
        tunnel.route = object()
        nl = FakeNextLayer(f.client_conn, b"\x14\x03\x03\x00\x00" + client_hello("blocked.org"))
        decide.next_layer(nl)
    assert tunnel.error == "refused: the tunnel's TLS ClientHello cannot be read" and act.revoked == [f.client_conn.id]
