"""intake: request head bounds, and connections mitmproxy refuses or fails on (issue 11, 11 and 14)."""

import logging
import types

from mitmproxy.proxy import commands, context, events
from mitmproxy.proxy.layers import HttpLayer
from mitmproxy.proxy.layers.http import HTTPMode
from mitmproxy.test import taddons, tflow

from hush.addons.intake import HeadBound, Intake, Watch, limit_text, plain
from hush.addons.notes import conn_notes, notes

from .helpers import Recorder, http_flow


def test_limit_text():
    assert limit_text(100, 32768, 100, 32768) is None
    assert limit_text(101, 10, 100, 32768) == "101 header fields, more than limits.max_headers (100)"
    assert limit_text(3, 40000, 100, 32768).startswith("a request head of 40000 bytes")


def test_plain_keeps_no_client_bytes():
    assert plain("1.2.3.4:5: Bad HTTP request line: b'GET http://secret.example/'") == \
        "1.2.3.4:5: Bad HTTP request line (the bytes are not kept)"
    assert plain("Invalid SOCKS version. Expected 0x05, got 0x4") == "Invalid SOCKS version. Expected 0x05, got 0x4"
    assert len(plain("x" * 1000)) == 200


def http_layer(tctx):
    client = tflow.tclient_conn()
    ctx = context.Context(client, tctx.options)
    layer = HttpLayer(ctx, HTTPMode.regular)
    return layer, client


def feed(bound, client, chunks):
    out = []
    for chunk in chunks:
        out += list(bound.handle_event(events.DataReceived(client, chunk)))
    return out


def head(n_fields: int, value: bytes = b"v") -> bytes:
    lines = [b"GET http://example.org/x HTTP/1.1", b"Host: example.org"]
    lines += [b"X-H%d: %s" % (i, value) for i in range(n_fields - 1)]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def refused(commands_):
    sent = [c for c in commands_ if isinstance(c, commands.SendData)]
    return bool(sent) and sent[0].data.startswith(b"HTTP/1.1 431") and any(
        isinstance(c, commands.CloseConnection) for c in commands_)


def test_a_head_over_a_bound_is_refused_before_the_layer_sees_it():
    intake = Intake()
    with taddons.context(intake) as tctx:
        for data, chunk in ((head(101), 0), (head(101), 7), (head(2, b"a" * 40_000), 0), (head(2, b"a" * 40_000), 999)):
            layer, client = http_layer(tctx)
            bound = HeadBound(layer, intake)
            list(bound.handle_event(events.Start()))
            chunks = [data] if not chunk else [data[i:i + chunk] for i in range(0, len(data), chunk)]
            out = feed(bound, client, chunks)
            assert refused(out), (len(data), chunk)
            assert len(layer.connections[client].buf) <= intake.max_header_bytes  # never buffered more
            assert list(bound.handle_event(events.DataReceived(client, b"more"))) == []  # swallowed after


def test_a_head_at_the_bounds_passes():
    from mitmproxy.addons.proxyserver import Proxyserver

    intake = Intake()
    with taddons.context(Proxyserver(), intake) as tctx:
        for data, chunk in ((head(100), 0), (head(100), 5), (head(2, b"a" * 30_000), 1000)):
            layer, client = http_layer(tctx)
            bound = HeadBound(layer, intake)
            list(bound.handle_event(events.Start()))
            chunks = [data] if not chunk else [data[i:i + chunk] for i in range(0, len(data), chunk)]
            out = feed(bound, client, chunks)
            assert not refused(out) and not bound.refused


def test_the_bounds_follow_the_options():
    intake = Intake()
    with taddons.context(intake) as tctx:
        tctx.configure(intake, hush_max_headers=5, hush_max_header_bytes=2048)
        layer, client = http_layer(tctx)
        bound = HeadBound(layer, intake)
        list(bound.handle_event(events.Start()))
        assert refused(feed(bound, client, [head(6)]))


def test_a_parsed_request_over_a_bound_is_answered_431():
    intake = Intake()
    with taddons.context(intake):
        f = http_flow("https://example.org/", headers={f"X-H{i}": "v" for i in range(120)})
        notes(f).app = "x"
        intake.requestheaders(f)
        assert f.response.status_code == 431
        assert notes(f).decision.note.startswith("fail-closed: request headers over the limit: ")
        ok = http_flow("https://example.org/", headers={"X-A": "1"})
        intake.requestheaders(ok)
        assert ok.response is None and notes(ok).decision is None


class Handler:
    """Stands in for mitmproxy's connection handler."""

    def __init__(self, client, reading=True):
        self.client = client
        self.transports = {client: type("IO", (), {"handler": object() if reading else None,
                                                  "writer": type("W", (), {"close": lambda self: None})()})()}


class Raising:
    def handle_event(self, event):
        yield commands.Log("about to fail", logging.INFO)
        raise NotImplementedError("HTTP trailers are not implemented yet.")


class Refusing:
    def handle_event(self, event):
        yield commands.Log("Invalid SOCKS version. Expected 0x05, got 0x4", logging.INFO)
        yield commands.CloseConnection(self.client)


def test_a_layer_that_raises_is_closed_not_crashed(caplog):
    intake, recorder = Intake(), Recorder()
    with taddons.context(intake, recorder):
        client = tflow.tclient_conn()
        watch = Watch(Raising(), Handler(client), intake)
        conn_notes(client).watch = watch
        out = list(watch.handle_event(events.DataReceived(client, b"x")))
        assert any(isinstance(c, commands.CloseConnection) and c.connection is client for c in out)
        assert list(watch.handle_event(events.DataReceived(client, b"y"))) == []  # nothing more reaches it
        intake.client_disconnected(client)
    [tunnel] = recorder.tunnels
    assert tunnel.decision.note == "fail-closed: refused by mitmproxy: NotImplementedError: HTTP trailers are not " \
                                   "implemented yet."


def test_a_close_on_the_first_read_waits_for_the_reading_task():
    intake, recorder = Intake(), Recorder()
    with taddons.context(intake, recorder):
        client = tflow.tclient_conn()
        inner = Refusing()
        inner.client = client
        handler = Handler(client, reading=False)
        watch = Watch(inner, handler, intake)
        conn_notes(client).watch = watch
        out = list(watch.handle_event(events.DataReceived(client, b"\x04\x01")))
        [wakeup] = [c for c in out if isinstance(c, commands.RequestWakeup)]
        assert not any(isinstance(c, commands.CloseConnection) for c in out)  # deferred
        handler.transports[client].handler = object()  # mitmproxy stores the task
        later = list(watch.handle_event(events.Wakeup(wakeup)))
        assert [type(c) for c in later] == [commands.CloseConnection]
        intake.client_disconnected(client)
    [tunnel] = recorder.tunnels
    assert tunnel.error == "Invalid SOCKS version. Expected 0x05, got 0x4" and tunnel.host == ""


def test_a_connection_hush_decided_on_is_not_recorded_again():
    intake, recorder = Intake(), Recorder()
    with taddons.context(intake, recorder):
        client = tflow.tclient_conn()
        inner = Refusing()
        inner.client = client
        watch = Watch(inner, Handler(client), intake)
        conn_notes(client).watch = watch
        list(watch.handle_event(events.DataReceived(client, b"x")))
        f = http_flow("http://example.org/")
        f.client_conn = client
        intake.requestheaders(f)  # hush decided something on it
        intake.response(f)
        intake.client_disconnected(client)
    assert recorder.tunnels == []


class SocksDecide:
    """Stands in for decide: the reply code for each destination."""

    def __init__(self, codes):
        self.codes = codes
        self.asked = []

    def socks_refusal(self, client, server):
        self.asked.append(server.address)
        return self.codes.get(server.address[0])


def _socks5(intake, host: bytes):
    from mitmproxy.proxy.layers.modes import Socks5Proxy
    from mitmproxy.proxy.mode_specs import ProxyMode

    client = tflow.tclient_conn()
    client.proxy_mode = ProxyMode.parse("socks5@127.0.0.1:1080")
    class Options:  # what mitmproxy's SOCKS5 layer reads of the options
        connection_strategy = "lazy"

        def __contains__(self, name):
            return False  # no proxyauth

    ctx = context.Context(client, Options())  # type: ignore[arg-type]
    watch = Watch(Socks5Proxy(ctx), Handler(client), intake)
    out = list(watch.handle_event(events.Start()))
    out += list(watch.handle_event(events.DataReceived(client, b"\x05\x01\x00")))
    out += list(watch.handle_event(events.DataReceived(
        client, b"\x05\x01\x00\x03" + bytes([len(host)]) + host + b"\x01\xbb" + b"\x16\x03\x01")))
    return client, watch, out


def test_a_socks5_destination_decide_refuses_gets_its_reply_code_not_granted():
    decide = SocksDecide({"blocked.org": 0x02})
    intake = Intake(decide=decide)  # type: ignore[arg-type]
    with taddons.context(intake):
        client, watch, out = _socks5( intake, b"blocked.org")
        sent = [c.data for c in out if isinstance(c, commands.SendData)]
        assert sent == [b"\x05\x00", b"\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00"]  # never \x05\x00\x00\x01…
        assert isinstance(out[-1], commands.CloseConnection) and out[-1].connection is client
        assert not any(isinstance(c, commands.StartHook) for c in out)  # the data after it goes nowhere
        assert list(watch.handle_event(events.DataReceived(client, b"more"))) == []
        client, watch, out = _socks5(intake, b"allowed.org")
        sent = [c.data for c in out if isinstance(c, commands.SendData)]
        assert sent == [b"\x05\x00", b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"]  # granted, as mitmproxy does
    assert decide.asked == [("blocked.org", 443), ("allowed.org", 443)]


def test_a_socks5_decision_that_raises_refuses_with_0x01(caplog):
    class Broken:
        def socks_refusal(self, client, server):
            raise RuntimeError("boom")

    intake = Intake(decide=Broken())  # type: ignore[arg-type]
    with taddons.context(intake):
        _, _, out = _socks5(intake, b"example.org")
    assert [c.data for c in out if isinstance(c, commands.SendData)][-1][:2] == b"\x05\x01"


def test_a_connect_head_over_a_bound_is_recorded_by_its_authority_at_connection_level():
    intake, recorded = Intake(), []
    intake.audit = types.SimpleNamespace(record=recorded.append)
    with taddons.context(intake) as tctx:
        layer, client = http_layer(tctx)
        bound = HeadBound(layer, intake)
        list(bound.handle_event(events.Start()))
        data = head(101).replace(b"GET http://example.org/x ", b"CONNECT example.org:8443 ", 1)
        assert refused(feed(bound, client, [data]))
    (flow,) = recorded
    req = flow.request
    assert (req.method, req.host, req.port, req.scheme, req.path) == ("CONNECT", "example.org", 8443, "", "")
    assert notes(flow).decision.level == "connect" and flow.response.status_code == 431
    assert req.timestamp_start <= flow.response.timestamp_end  # not a negative duration
