from mitmproxy import tls
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.proxy import context
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow

from hush.addons.decide import Decide
from hush.addons.identify import Identify
from hush.addons.notes import conn_notes, notes
from hush.daemon.policy.holder import PolicyHolder

from .helpers import Recorder, connect_flow, http_flow, noted, policyset


def run(decide, f, ps=None, app="x"):
    notes(f).policy = ps if ps is not None else policyset()
    notes(f).app = app
    notes(f).listener = "regular@127.0.0.1:8101"
    decide.requestheaders(f)
    return notes(f).decision


def test_request_decision():
    decide = Decide()
    with taddons.context(decide):
        d = run(decide, http_flow("https://www.example.com/p/1"))
    assert (d.action.name, d.rule.index, d.level) == ("block", 4, "request")


def test_fail_closed_without_policy_app_or_on_error(monkeypatch):
    decide = Decide()
    with taddons.context(decide):
        f = http_flow("http://a.org/")
        notes(f).app = "x"
        decide.requestheaders(f)
        assert notes(f).decision.note == "fail-closed: no policy loaded"
        assert run(decide, http_flow("http://a.org/"), app=None).note == "fail-closed: no policy owns this listener"
        ps = policyset()
        monkeypatch.setattr(type(ps), "decide", lambda *a: 1 / 0)
        d = run(decide, http_flow("http://a.org/"), ps=ps)
    assert d.action.name == "block" and d.action.egress == "none"
    assert d.note.startswith("fail-closed: error while deciding: ZeroDivisionError")


def test_connect_decided_at_connection_level_announces_tunnel():
    decide, recorder = Decide(), Recorder()
    with taddons.context(decide, recorder):
        f = connect_flow("blocked.org")
        noted(f, policy=policyset(), app="x", listener="l")
        decide.http_connect(f)
    tunnel = conn_notes(f.client_conn).tunnel
    assert recorder.tunnels == [tunnel]
    assert tunnel.decision.level == "connect" and tunnel.decision.action.name == "block"
    assert notes(f).decision is tunnel.decision


def test_connect_that_needs_the_request_is_inspected():
    decide, recorder = Decide(), Recorder()
    with taddons.context(decide, recorder):
        f = connect_flow("www.example.com")  # the /p/* rule needs the path
        noted(f, policy=policyset(), app="x", listener="l")
        decide.http_connect(f)
    assert conn_notes(f.client_conn).tunnel.decision is None
    assert notes(f).decision is None and recorder.tunnels == []




class _Hello:
    def __init__(self, sni):
        self.sni = sni


def hello_data(client, host):
    c = context.Context(client, None)
    c.server = tflow.tserver_conn()
    c.server.address = (host, 443)
    return tls.ClientHelloData(c, _Hello(host))


def test_decided_tunnel_tls_is_not_intercepted():
    decide = Decide()
    with taddons.context(decide, Recorder()):
        allowed = connect_flow("a.backend.net")
        noted(allowed, policy=policyset(), app="x", listener="l")
        decide.http_connect(allowed)
        data = hello_data(allowed.client_conn, "a.backend.net")
        decide.tls_clienthello(data)
        assert data.ignore_connection is True
        inspected = connect_flow("www.example.com")
        noted(inspected, policy=policyset(), app="x", listener="l")
        decide.http_connect(inspected)
        data = hello_data(inspected.client_conn, "www.example.com")
        decide.tls_clienthello(data)
        assert data.ignore_connection is False


def test_socks_connection_is_decided_at_clienthello():
    identify = Identify(PolicyHolder(policyset("app: s\nlisten: {port: 1080, mode: socks5}\ndefault: block\n")))
    decide, recorder = Decide(identify), Recorder()
    with taddons.context(identify, decide, recorder):
        client = tflow.tclient_conn()
        client.proxy_mode = ProxyMode.parse("socks5@127.0.0.1:1080")
        data = hello_data(client, "anything.org")
        decide.tls_clienthello(data)
        decide.client_disconnected(client)
    assert data.ignore_connection is True
    [tunnel] = recorder.tunnels
    assert (tunnel.app, tunnel.host, tunnel.decision.action.name, tunnel.flow) == ("s", "anything.org", "block", None)
    assert recorder.ended == [tunnel] and tunnel.ended is not None


def test_lazy_strategy_is_forced():
    decide = Decide()
    with taddons.context(Proxyserver(), decide) as tctx:
        tctx.configure(decide, connection_strategy="eager")
        assert tctx.options.connection_strategy == "lazy"



PROXY_HEADERS = {"Proxy-Connection": "keep-alive", "Proxy-Authorization": "Basic dTpw", "Via": "1.1 app",
                 "Forwarded": "for=10.0.0.1", "X-Forwarded-For": "10.0.0.1", "X-Real-IP": "10.0.0.1"}


def test_no_proxy_header_is_sent_whatever_the_decision():
    # decided on what the app sent (a rule may look at Via), then removed before any action sends it
    ps = policyset(POLICY_WITH_VIA)
    decide = Decide()
    with taddons.context(decide):
        for url, action in (("http://a.org/", "allow"), ("http://strip.org/", "strip"), ("http://t.org/", "tor"),
                            ("http://d.org/", "delay"), ("http://x.backend.net/", "passthrough")):
            f = http_flow(url, headers={**PROXY_HEADERS, "X-Keep": "1"})
            assert run(decide, f, ps=ps).action.name == action
            left = [k.lower() for k in f.request.headers]
            assert "x-keep" in left and not set(left) & {k.lower() for k in PROXY_HEADERS}, (action, left)
        via = http_flow("http://a.org/", headers={"Via": "1.1 corp-proxy"})
        assert run(decide, via, ps=ps).action.name == "block"  # the rule saw the header before it went
        late = http_flow("http://a.org/")
        run(decide, late, ps=ps)
        late.request.headers["X-Forwarded-For"] = "10.0.0.1"  # added after the decision, by anything
        decide.request(late)
        assert "X-Forwarded-For" not in late.request.headers


POLICY_WITH_VIA = """\
app: x
listen: 8101
default: allow
rules:
  - {match: {header: {Via: "*corp-proxy*"}}, action: block}
  - {match: {host: "*.backend.net"}, action: passthrough}
  - {match: {host: strip.org}, action: strip}
  - {match: {host: t.org}, action: tor}
  - {match: {host: d.org}, action: delay, delay: 1s}
"""


def test_an_absolute_form_target_inside_a_tunnel_is_decided_too():
    decide = Decide()
    with taddons.context(decide):
        f = http_flow("http://a.org/x", headers={"Host": "a.org"})
        f.request.authority = "blocked.org"  # GET http://blocked.org/x inside CONNECT a.org:80
        d = run(decide, f)
        assert (d.action.name, d.rule.index, d.host) == ("block", 2, "blocked.org")
        f = http_flow("http://a.org/x")
        f.request.authority = "user@blocked.org"
        assert run(decide, f).action.status == 400
        f = http_flow("http://a.org/x")
        f.request.headers.fields = ((b"Host", b"a.org"), (b"Host", b"a.org"))
        assert run(decide, f).note.startswith("refused: the Host header 'a.org, a.org'")
