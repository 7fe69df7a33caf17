import asyncio
import sqlite3
import time

from mitmproxy import http
from mitmproxy.flow import Error
from mitmproxy.test import taddons

from hush.addons.act import Act
from hush.addons.audit import Audit, Wire, flow_record, tunnel_record
from hush.addons.classify import Classify
from hush.addons.decide import Decide
from hush.addons.notes import conn_notes
from hush.addons.tunnel import Tally, Tunnel

from .helpers import connect_flow, http_flow, noted, policyset


def through_chain(url, **kw):
    f = http_flow(url, **kw)
    noted(f, policy=policyset(), app="x", listener="regular@127.0.0.1:8101")
    Classify().requestheaders(f)
    Decide().requestheaders(f)
    _run(Act().requestheaders(f))
    return f


def test_blocked_flow_record():
    f = through_chain("https://blocked.org/path?q=secret", headers={"Cookie": "a=1", "User-Agent": "WhatsApp/2"})
    f.server_conn.timestamp_tcp_setup = None
    r = flow_record(f, "no-query")
    assert r["decision"] == "block" and r["rule"] == "p.yaml:7" and r["status"] == 403
    assert r["url"] == "https://blocked.org/path"
    assert r["ip_exposed"] is False and r["sent"] is None
    assert r["carried"]["cookies"] == 1 and r["carried"]["user_agent"] == "WhatsApp/2"
    assert r["app"] == "x" and r["listener"] == "regular@127.0.0.1:8101" and r["site"] == "blocked.org"


def test_stripped_flow_record_shows_what_was_sent():
    f = through_chain("https://www.strip.org/a?b=c", headers={"Cookie": "a=1", "Referer": "https://chat.example.com/room?x=1"})
    f.server_conn.timestamp_tcp_setup = time.time()
    f.response = http.Response.make(200, b"hello")
    r = flow_record(f, "site")
    assert r["url"] == "https://strip.org/"
    assert r["carried"]["referer"] == "https://example.com/"  # redacted like URLs
    assert r["sent"]["cookies"] == 0 and r["sent"]["referer"] is None
    assert r["sent"]["user_agent"].startswith("Mozilla/5.0")
    assert r["ip_exposed"] is True and r["bytes_down"] == 5


def test_tunnel_records():
    ps = policyset()
    f = connect_flow("a.backend.net")
    t = Tunnel(f.client_conn.id, "x", "l", "a.backend.net", 443, ps, ps.decide_connect("x", "a.backend.net", 443), f,
               user_agent="Electron")
    t.ended = t.started + 2
    r = tunnel_record(t, "site", Wire(routes={"direct"}, tally=Tally(10, 20)))
    assert (r["method"], r["decision"], r["level"], r["ip_exposed"]) == ("CONNECT", "passthrough", "connect", True)
    assert r["duration_ms"] == 2000 and r["carried"]["user_agent"] == "Electron"
    assert (r["route"], r["egress"], r["bytes_up"], r["bytes_down"], r["conn"]) == ("direct", "direct", 10, 20, t.key)
    # what the wire saw, not what was decided: a tunnel that never connected exposed nothing
    r = tunnel_record(t, "site")
    assert (r["ip_exposed"], r["route"], r["decision"]) == (False, "none", "passthrough")


def test_done_writes_every_record(tmp_path):
    audit = Audit()
    with taddons.context(audit) as tctx:
        tctx.configure(audit, hush_state_dir=str(tmp_path))
        for i in range(50):
            f = through_chain(f"http://blocked.org/{i}")
            audit.response(f)
            audit.response(f)  # a second hook for the same flow adds nothing
        ps = policyset()
        g = connect_flow("a.backend.net")
        audit.hush_tunnel(Tunnel(g.client_conn.id, "x", "l", "a.backend.net", 443, ps,
                                 ps.decide_connect("x", "a.backend.net", 443), g))
        audit.done()
    db = sqlite3.connect(tmp_path / "audit.db")
    rows = db.execute("SELECT decision, COUNT(*) FROM records GROUP BY 1").fetchall()
    assert sorted(rows) == [("block", 50), ("passthrough", 1)]
    assert (tmp_path / "audit.db").stat().st_mode & 0o777 == 0o600


def _run(coro):
    return asyncio.run(coro)


# -- issue 11, items 8 and 9: rows say what happened on the wire, tunnels are written when they open

def test_killed_and_guard_refused_flows_are_refused_not_allowed():
    from mitmproxy import flow as mflow

    for error in (mflow.Error.KILLED_MESSAGE,  # mitmproxy killing an h2c preface
                  "hush: no decision permits a direct connection to 127.0.0.1:80"):
        f = through_chain("http://a.org/x")
        f.server_conn.timestamp_tcp_setup = None
        f.error = mflow.Error(error)
        r = flow_record(f, "site")
        assert (r["decision"], r["egress"], r["route"], r["ip_exposed"]) == ("refused", "direct", "none", False)


def test_an_allow_whose_upstream_failed_stays_allow():
    from mitmproxy import flow as mflow

    f = through_chain("http://a.org/x")
    f.server_conn.timestamp_tcp_setup = None
    f.error = mflow.Error("Cannot connect to a.org:80: Name or service not known")
    r = flow_record(f, "site")
    assert (r["decision"], r["egress"], r["route"], r["ip_exposed"], r["sent"]) == ("allow", "direct", "none", False,
                                                                                    None)


def test_a_flow_through_tor_is_routed_tor():
    from mitmproxy.net.server_spec import ServerSpec

    f = through_chain("http://a.org/x")
    f.server_conn = type(f.server_conn)(address=("a.org", 80), via=ServerSpec(("http", ("127.0.0.1", 9))))
    f.server_conn.timestamp_start = time.time()
    r = flow_record(f, "site")
    assert (r["route"], r["ip_exposed"]) == ("tor", False)


def test_a_tunnel_row_is_written_open_then_connected_then_closed(tmp_path):
    from mitmproxy import connection
    from mitmproxy.proxy import server_hooks

    audit = Audit()
    ps = policyset()
    with taddons.context(audit) as tctx:
        tctx.configure(audit, hush_state_dir=str(tmp_path))
        g = connect_flow("a.backend.net")
        t = Tunnel(g.client_conn.id, "x", "l", "a.backend.net", 443, ps, ps.decide_connect("x", "a.backend.net", 443),
                   client=g.client_conn)
        audit.hush_tunnel(t)
        audit.writer.close()  # flush: the open row is on disk before the tunnel closes
        db = sqlite3.connect(tmp_path / "audit.db")
        assert db.execute("SELECT decision, route, ended, conn FROM records").fetchall() == [
            ("passthrough", "none", None, t.key)]
        tctx.configure(audit, hush_state_dir=str(tmp_path))  # a new writer
        audit.server_connected(server_hooks.ServerConnectionHookData(
            connection.Server(address=("a.backend.net", 443)), g.client_conn))
        conn_notes(g.client_conn).wire.tally = Tally(100, 2000)
        t.ended = t.started + 1
        audit.hush_tunnel_end(t)
        audit.done()
    assert db.execute("SELECT id, route, ip_exposed, bytes_up, bytes_down, duration_ms FROM records").fetchall() == [
        (1, "direct", 1, 100, 2000, 1000.0)]
    assert audit.counts == {"passthrough": 1}


def test_a_tunnel_the_guard_refused_is_audited_refused():
    from mitmproxy import connection
    from mitmproxy.proxy import server_hooks

    audit = Audit()
    ps = policyset()
    with taddons.context(audit):
        g = connect_flow("a.backend.net")
        t = Tunnel(g.client_conn.id, "x", "l", "a.backend.net", 443, ps, ps.decide_connect("x", "a.backend.net", 443),
                   client=g.client_conn)
        audit.hush_tunnel(t)
        server = connection.Server(address=("10.1.1.1", 443))
        server.error = "hush: no decision permits a direct connection to 10.1.1.1:443"
        audit.server_connect(server_hooks.ServerConnectionHookData(server, g.client_conn))
        r = tunnel_record(t, "site", conn_notes(g.client_conn).wire)
    assert (r["decision"], r["route"], r["ip_exposed"]) == ("refused", "none", False)
    assert r["error"].startswith("hush: no decision permits")


def test_counted_layer_counts_what_the_layer_under_it_sends():
    from mitmproxy.proxy import commands, context, events, layer
    from mitmproxy.test import tflow

    from hush.addons.tunnel import Counted

    class Echo(layer.Layer):
        def _handle_event(self, event):
            if isinstance(event, events.DataReceived):
                to = self.context.server if event.connection is self.context.client else self.context.client
                yield commands.SendData(to, event.data * 2)

    with taddons.context() as tctx:
        ctx = context.Context(tflow.tclient_conn(), tctx.options)
        ctx.server = tflow.tserver_conn()
        inner = Echo(ctx)
        tally = Tally()
        counted = Counted(ctx, inner, tally)
        assert ctx.layers == [inner]  # not in the stack: layers under it find their parents as before
        out = list(counted.handle_event(events.DataReceived(ctx.client, b"abc")))
        out += list(counted.handle_event(events.DataReceived(ctx.server, b"hello")))
    assert [c.data for c in out] == [b"abcabc", b"hellohello"]
    assert (tally.up, tally.down) == (6, 10)


def _watched():
    """An audit whose live view collects the records it emits, and a policy set."""
    audit, seen = Audit(), []
    audit.live = seen.append
    return audit, seen, policyset()


def _tunnel(ps):
    """A CONNECT's connection and its tunnel, decided, not yet announced."""
    g = connect_flow("a.backend.net")
    return g, Tunnel(g.client_conn.id, "x", "l", "a.backend.net", 443, ps, ps.decide_connect("x", "a.backend.net", 443),
                     client=g.client_conn)


def test_a_relayed_tunnels_row_is_built_once_per_coalesce_window_and_a_stop_writes_what_is_due(tmp_path):
    from mitmproxy import connection
    from mitmproxy.proxy import server_hooks

    from hush.addons import audit as audit_module

    audit, seen, ps = _watched()

    async def go():
        # open, then connected, within the window: one row, built once, as it stands at the window's end
        g, t = _tunnel(ps)
        audit.hush_tunnel(t)
        audit.server_connected(server_hooks.ServerConnectionHookData(
            connection.Server(address=("a.backend.net", 443)), g.client_conn))
        assert seen == []  # kept, not lost: the tunnel is due
        await asyncio.sleep(audit_module.COALESCE * 4)
        assert [(r["conn"], r["route"], r["ended"]) for r in seen] == [(t.key, "direct", None)]
        # open, then closed, within the window: the complete row at once, and nothing more after it
        seen.clear()
        g, short = _tunnel(ps)
        audit.hush_tunnel(short)
        conn_notes(g.client_conn).wire.tally = Tally(5, 7)
        short.ended = short.started + 0.001
        audit.hush_tunnel_end(short)
        await asyncio.sleep(audit_module.COALESCE * 4)
        assert [(r["conn"], r["bytes_down"], r["ended"]) for r in seen] == [(short.key, 7, short.ended)]
        # a stop within the window writes the row that was due, once, complete (as every open tunnel's)
        seen.clear()
        _, last = _tunnel(ps)
        audit.hush_tunnel(last)
        audit.done()
        assert sorted((r["conn"], r["ended"] is not None) for r in seen) == sorted([(t.key, True), (last.key, True)])
        await asyncio.sleep(audit_module.COALESCE * 4)  # and the timer it cancelled writes nothing more
        assert len(seen) == 2

    with taddons.context(audit) as tctx:
        tctx.configure(audit, hush_state_dir=str(tmp_path))
        _run(go())
    db = sqlite3.connect(tmp_path / "audit.db")
    assert db.execute("SELECT COUNT(*), COUNT(DISTINCT conn) FROM records").fetchone() == (3, 3)


def test_a_refused_tunnels_row_is_written_at_once():
    audit, seen, ps = _watched()

    async def go():
        _, t = _tunnel(ps)
        t.outcome = "revoked"
        audit.hush_tunnel(t)
        assert [r["conn"] for r in seen] == [t.key]

    with taddons.context(audit):
        _run(go())


def test_rows_due_when_their_loop_stopped_are_written_before_the_next_and_a_burst_is_spread(monkeypatch):
    from hush.addons import audit as audit_module

    audit, seen, ps = _watched()

    first, second, third = (_tunnel(ps)[1] for _ in range(3))

    async def opens(t):
        audit.hush_tunnel(t)

    async def opens_and_waits(t):
        audit.hush_tunnel(t)
        await asyncio.sleep(audit_module.COALESCE * 4)

    with taddons.context(audit):
        _run(opens(first))  # its loop ends before the row is due
        assert seen == []
        _run(opens_and_waits(second))  # a new loop: the first is written at once, the second when due
        assert [r["conn"] for r in seen] == [first.key, second.key]
        audit.hush_tunnel(third)  # no loop at all: at once
        assert [r["conn"] for r in seen] == [first.key, second.key, third.key]

        monkeypatch.setattr(audit_module, "DUE_PER_TURN", 3)
        seen.clear()
        burst = [_tunnel(ps)[1] for _ in range(7)]
        turns = []
        write_due = audit._write_due

        def counted(everything=False):  # each call is one turn of the loop
            write_due(everything)
            turns.append(len(seen))

        audit._write_due = counted

        async def bursts():
            for t in burst:
                audit.hush_tunnel(t)
            await asyncio.sleep(audit_module.COALESCE * 4)

        _run(bursts())
    assert turns == [3, 6, 7]  # 3 per turn of the loop, all of them, in order
    assert [r["conn"] for r in seen] == [t.key for t in burst]


def test_a_tunnels_due_row_comes_before_the_rows_of_the_flows_inside_it():
    """A request refused inside a tunnel whose row is due: the tunnel's row first, as its own
    connection saw them (CI saw the PRI of an h2 preface recorded before its CONNECT)."""
    from hush.addons import audit as audit_module

    audit, seen, ps = _watched()

    async def go():
        g, t = _tunnel(ps)
        _, other = _tunnel(ps)
        audit.hush_tunnel(t)
        audit.hush_tunnel(other)
        inner = http_flow("http://a.backend.net/", method="PRI")
        inner.client_conn = g.client_conn
        inner.response, inner.error = None, Error("Connection killed.")
        audit.error(inner)
        assert [r.get("conn") or r["method"] for r in seen] == [t.key, "PRI"]  # the other connection's waits
        await asyncio.sleep(audit_module.COALESCE * 4)
        assert [r.get("conn") or r["method"] for r in seen] == [t.key, "PRI", other.key]

    with taddons.context(audit):
        _run(go())


def test_a_connect_mitmproxy_refused_before_any_decision_gets_its_row_and_a_tunnels_connect_none():
    """A CONNECT whose head mitmproxy refused (its framing: 400) reaches only the error hook: its
    request row is all that records it.  A CONNECT decide opened a tunnel for has the tunnel's row."""
    from mitmproxy import connection

    audit, seen, ps = _watched()
    refused = connect_flow("a.backend.net")
    refused.server_conn = connection.Server(address=("a.backend.net", 443))  # never dialled
    refused.error = Error("Received invalid content-length header")
    with taddons.context(audit):
        audit.error(refused)
        g, t = _tunnel(ps)
        t.flow = g
        conn_notes(g.client_conn).tunnel = t
        g.error = Error("Connection killed.")
        audit.error(g)  # the tunnel's own row says what became of it
    assert [(r["method"], r["host"], r["level"], r["decision"], r["ip_exposed"], r["error"]) for r in seen] == [
        ("CONNECT", "a.backend.net", "connect", "block", False, "Received invalid content-length header")]
    assert seen[0]["note"] == "fail-closed: refused by mitmproxy before any decision"
