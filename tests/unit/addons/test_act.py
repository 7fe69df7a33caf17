import asyncio

import pytest
from mitmproxy.proxy import server_hooks
from mitmproxy.test import taddons, tflow

from hush.addons.act import Act
from hush.addons.classify import Classify
from hush.addons.decide import Decide
from hush.addons.identify import Identify
from hush.addons.notes import conn_notes, notes
from hush.addons.tunnel import Tunnel
from hush.daemon.policy.holder import PolicyHolder

from .helpers import connect_flow, http_flow, noted, policyset


def decided(url, **kw):
    f = http_flow(url, **kw)
    noted(f, policy=policyset(), app="x", listener="l")
    Classify().requestheaders(f)
    Decide().requestheaders(f)
    return f


def connect(act, f):
    data = server_hooks.ServerConnectionHookData(f.server_conn, f.client_conn)
    f.server_conn.address = (f.request.host, f.request.port)
    f.server_conn.error = None
    act.server_connect(data)
    return f.server_conn.error


def test_block_answers_locally_and_permits_nothing():
    act = Act()
    with taddons.context(act):
        f = decided("http://blocked.org/x")
        _run(act.requestheaders(f))
        assert f.response.status_code == 403
        assert f.response.headers["X-Hush-Decision"] == "block p.yaml:7"
        assert connect(act, f).startswith("hush: no decision permits a direct connection to blocked.org:80")


def test_block_status_and_reset():
    act = Act()
    with taddons.context(act):
        f = decided("https://www.example.com/p/1")
        _run(act.requestheaders(f))
        assert f.response.status_code == 204
        g = decided("http://reset.org/")
        _run(act.requestheaders(g))
        assert g.error and g.error.msg == "Connection killed." and g.response is None


def test_allow_permits_exactly_that_host_and_port():
    act = Act()
    with taddons.context(act):
        f = decided("http://a.org:8080/")
        _run(act.requestheaders(f))
        assert f.response is None
        assert connect(act, f) is None
        other = http_flow("http://b.org:8080/")
        other.client_conn = f.client_conn
        assert connect(act, other) is not None  # same client, undecided host
        f.server_conn.address = ("a.org", 8081)
        act.server_connect(server_hooks.ServerConnectionHookData(f.server_conn, f.client_conn))
        assert f.server_conn.error is not None
        act.client_disconnected(f.client_conn)
        assert connect(act, f) is not None  # permits end with the connection


def test_strip_removes_and_replaces():
    act = Act()
    with taddons.context(act):
        f = decided("http://www.strip.org/", headers={"Cookie": "a=1", "Referer": "https://x/",
                                                       "Accept-Language": "de", "User-Agent": "WhatsApp/2",
                                                       "Accept": "text/html"})
        _run(act.requestheaders(f))
    h = f.request.headers
    assert "cookie" not in h and "referer" not in h and "accept-language" not in h
    assert h["user-agent"].startswith("Mozilla/5.0") and h["accept"] == "text/html"


def test_an_action_that_raises_fails_closed(monkeypatch):
    from hush.addons.actions.strip import Strip

    monkeypatch.setattr(Strip, "on_request", lambda self, flow, d: 1 / 0)
    act = Act()
    with taddons.context(act):
        f = decided("http://www.strip.org/")
        _run(act.requestheaders(f))
        assert f.response.status_code == 502
        assert notes(f).decision.note.startswith("fail-closed: failed to apply strip")
        assert connect(act, f) is not None


def test_undecided_flow_fails_closed():
    act = Act()
    with taddons.context(act):
        f = http_flow("http://a.org/")
        _run(act.requestheaders(f))
        assert f.response.status_code == 502
        assert connect(act, f) is not None


def test_tunnel_decisions():
    ps = policyset()
    act = Act()
    with taddons.context(act):
        f = connect_flow("blocked.org")
        t = Tunnel(f.client_conn.id, "x", "l", "blocked.org", 443, ps, ps.decide_connect("x", "blocked.org", 443), f,
                   client=f.client_conn)
        act.hush_tunnel(t)
        assert f.response.status_code == 403
        assert connect(act, f) is not None
        g = connect_flow("a.backend.net")
        t = Tunnel(g.client_conn.id, "x", "l", "a.backend.net", 443, ps,
                   ps.decide_connect("x", "a.backend.net", 443), g, client=g.client_conn)
        act.hush_tunnel(t)
        assert g.response is None
        assert connect(act, g) is None


def test_connect_block_below_400_answers_403():
    ps = policyset()
    act = Act()
    with taddons.context(act):
        f = connect_flow("www.example.com")
        d = ps.decide("x", __import__("hush.daemon.policy", fromlist=["RequestInfo"]).RequestInfo.from_url(
            "https://www.example.com/p/x"))
        assert d.action.status == 204
        act.hush_tunnel(Tunnel(f.client_conn.id, "x", "l", "www.example.com", 443, ps, d, f, client=f.client_conn))
        assert f.response.status_code == 403  # a 2xx would open the tunnel


def test_guard_failing_itself_refuses():
    act = Act()
    with taddons.context(act):
        server = tflow.tserver_conn()
        server.address = ("a.org", 80)
        client = tflow.tclient_conn()
        conn_notes(client).permits = None  # break it
        act.server_connect(server_hooks.ServerConnectionHookData(server, client))
        assert server.error.startswith("hush: egress check failed")


def _run(coro):
    return asyncio.run(coro)


# -- issue 11, item 13: a reload closes the open tunnels it treats more strictly

RELOAD_OLD = """\
app: x
listen: 8101
default: allow
rules:
  - match: {host: "*.backend.net"}
    action: passthrough
  - match: {host: tor.org}
    action: tor
"""


def _tunnel(act, ps, host, address=None):
    f = connect_flow(host)
    t = Tunnel(f.client_conn.id, "x", "l", host, 443, ps, ps.decide_connect("x", host, 443), address=address,
               client=f.client_conn)
    act.hush_tunnel(t)
    return t, f


@pytest.mark.parametrize("new_rules, revoked", [
    ("  - match: {host: a.backend.net}\n    action: block\n", True),  # blocked now
    ("  - match: {host: a.backend.net}\n    action: tor\n", True),  # through tor now: stricter than direct
    ("  - match: {host: a.backend.net, path: /x}\n    action: block\n", True),  # decided only per request now
    ("  - match: {host: a.backend.net}\n    action: allow\n", False),  # another direct action: kept
    ("", False),  # the default allows it: kept
])
def test_a_reload_closes_tunnels_it_treats_more_strictly(new_rules, revoked):
    from hush.daemon.policy import build

    old = build([("p.yaml", RELOAD_OLD)])
    new = build([("p.yaml", "app: x\nlisten: 8101\ndefault: allow\nrules:\n" + new_rules)])
    act = Act()
    with taddons.context(act):
        t, f = _tunnel(act, old, "a.backend.net")
        assert connect(act, f) is None  # permitted before the reload
        assert act.policy_changed(old, new) == int(revoked)
        if revoked:
            assert t.outcome == "revoked" and t.error.startswith("revoked on reload: policy set")
            assert connect(act, f).startswith("hush: no decision permits")  # nothing new leaves
        else:
            assert t.outcome is None and connect(act, f) is None


def test_a_reload_checks_the_address_a_tunnel_was_permitted_to():
    from hush.daemon.policy import build

    old = build([("p.yaml", RELOAD_OLD)])
    # a SOCKS5 tunnel named a.backend.net in its SNI, permitted to an address the new set blocks: closed
    new = build([("p.yaml", "app: x\nlisten: 8101\ndefault: allow\nrules:\n  - match: {host: \"*.backend.net\"}\n"
                            "    action: passthrough\n  - match: {net: 10.0.0.0/8}\n    action: block\n")])
    act = Act()
    with taddons.context(act):
        t_name, _ = _tunnel(act, old, "a.backend.net")
        t_addr, _ = _tunnel(act, old, "a.backend.net", address=("10.1.2.3", 443))
        assert act.policy_changed(old, new) == 1
    assert t_name.outcome is None and t_addr.outcome == "revoked"
    assert "block" in t_addr.error


def test_a_reload_leaves_a_tunnel_already_refused_for_its_tls_name_alone():
    from hush.daemon.policy import build

    old = build([("p.yaml", RELOAD_OLD)])
    new = build([("p.yaml", "app: x\nlisten: 8101\ndefault: block\n")])
    act = Act()
    with taddons.context(act):
        t, _ = _tunnel(act, old, "a.backend.net")
        t.error = "refused: the TLS names blocked.org (block by rule …), not a.backend.net"  # as decide sets it
        assert act.policy_changed(old, new) == 0
    assert t.outcome is None and t.error.startswith("refused: the TLS names")  # its reason stays


# -- a launch's connection to a name that resolves to this machine --------------------

def _launched(host, port=80):
    from hush.daemon.launch.server import make_mode
    client = tflow.tclient_conn()
    client.proxy_mode = make_mode("launch:x:1")
    server = tflow.tserver_conn()
    server.address, server.error = (host, port), None
    conn_notes(client).permits.add((host, port))
    return server_hooks.ServerConnectionHookData(server, client)


@pytest.mark.parametrize("resolved, why", [
    ("127.0.1.1", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"), ("0.0.0.0", "loopback"),
    ("169.254.169.254", "link-local"), ("fe80::1%2", "link-local")])
def test_a_launch_name_resolving_to_this_machine_is_refused_before_it_is_dialled(monkeypatch, resolved, why):
    act = Act()
    data = _launched("myhost.test")

    async def getaddrinfo(self, host, port, **kw):
        assert (host, port) == ("myhost.test", 80)
        family = 10 if ":" in resolved else 2
        return [(family, 1, 6, "", ("203.0.113.10", port)), (family, 1, 6, "", (resolved, port))]

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", getaddrinfo)
    pending = act.server_connect(data)
    assert pending is not None and data.server.error is None
    _run(pending)
    assert data.server.error.startswith(f"hush: myhost.test resolves to {resolved}, ") and why in data.server.error


def test_only_a_launch_connection_to_a_permitted_name_is_resolved(monkeypatch):
    async def getaddrinfo(self, host, port, **kw):
        return [(2, 1, 6, "", ("203.0.113.10", port))]

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", getaddrinfo)
    act = Act()
    name = _launched("site.test")
    _run(act.server_connect(name))
    assert name.server.error is None  # a public address: dialled
    assert act.server_connect(_launched("127.0.0.1", 9050)) is None  # an address (tor's port): as decided
    other = _launched("site.test")
    other.client.proxy_mode = tflow.tclient_conn().proxy_mode  # not a launch's
    assert act.server_connect(other) is None and other.server.error is None
    unpermitted = _launched("site.test")
    conn_notes(unpermitted.client).permits.clear()
    assert act.server_connect(unpermitted) is None and unpermitted.server.error.startswith("hush: no decision")


def test_a_launch_name_rebound_to_this_machine_when_dialled_is_closed_before_a_byte(monkeypatch):
    class Transport:
        aborted = False

        def abort(self):
            self.aborted = True

    class IO:
        writer = type("Writer", (), {"transport": Transport()})()

    act = Act()
    data = _launched("rebind.test")
    tunnel = Tunnel(data.client.id, "x", "launch:x:1", "rebind.test", 80, None, None, client=data.client)
    conn_notes(data.client).tunnel = tunnel
    handler = type("Handler", (), {"transports": {data.server: IO()}})()
    monkeypatch.setattr(Act, "_handler", staticmethod(lambda client_id: handler))
    data.server.peername = ("203.0.113.10", 80)
    act.server_connected(data)
    assert not IO.writer.transport.aborted and data.server.error is None
    data.server.peername = ("127.0.0.1", 80)
    act.server_connected(data)
    assert IO.writer.transport.aborted
    assert data.server.error == tunnel.error == ("hush: rebind.test resolved to 127.0.0.1, this machine's loopback, "
                                                 "when dialled")
    assert not conn_notes(data.client).permits  # nothing more leaves on this connection


def test_a_launch_name_resolving_to_this_machine_is_dialled_only_where_a_rule_allows_that_address(monkeypatch):
    """The default (allow) does not open this machine's own services to a launched app; a rule
    naming the address does (a homeserver run on this machine: `net: 127.0.0.0/8`)."""
    from hush.daemon.policy import build

    async def getaddrinfo(self, host, port, **kw):
        return [(2, 1, 6, "", ("127.0.0.7", port))]

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", getaddrinfo)
    rule = "rules:\n  - {match: {net: 127.0.0.0/8, port: 443}, action: allow}\n"
    for text, allowed in (("", False), (rule, True)):
        holder = PolicyHolder(build([("x.yaml", f"app: x\ndefault: allow\n{text}")]))
        identify = Identify(holder)
        act = Act(identify)
        with taddons.context(identify, act):
            data = _launched("hs.test", 443)
            _run(act.server_connect(data))
            assert (data.server.error is None) == allowed, data.server.error
            other_port = _launched("hs.test", 8448)  # the rule names port 443 only
            _run(act.server_connect(other_port))
            assert other_port.server.error is not None
            data.server.peername = ("127.0.0.7", 443)  # and when dialled
            act.server_connected(data)
            assert (data.server.error is None) == allowed


def test_a_launch_name_sent_through_tor_is_never_resolved_here_nor_closed_for_tor_s_loopback_port(monkeypatch):
    """Through tor the exit resolves the name: looking it up here would tell this machine's resolver
    the name the policy sends through tor, and tor's own port is on loopback."""
    async def getaddrinfo(self, host, port, **kw):
        raise AssertionError(f"{host} resolved on this machine")

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", getaddrinfo)
    act = Act()
    data = _launched("hidden.onion.test", 80)
    data.server.via = ("http", ("127.0.0.1", 9080))
    assert act.server_connect(data) is None and data.server.error is None
    data.server.peername = ("127.0.0.1", 9080)  # tor's HTTP tunnel port
    act.server_connected(data)
    assert data.server.error is None and conn_notes(data.client).permits  # not closed, not revoked
