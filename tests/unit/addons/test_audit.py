import asyncio
import sqlite3
import time

from mitmproxy import http
from mitmproxy.test import taddons

from hush.addons.act import Act
from hush.addons.audit import Audit, flow_record, tunnel_record
from hush.addons.classify import Classify
from hush.addons.decide import Decide
from hush.addons.tunnel import Tunnel

from .helpers import connect_flow, http_flow, policyset


def through_chain(url, **kw):
    f = http_flow(url, **kw)
    f.metadata.update({"hush.policy": policyset(), "hush.app": "x", "hush.listener": "regular@127.0.0.1:8101"})
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
    r = tunnel_record(t, "site")
    assert (r["method"], r["decision"], r["level"], r["ip_exposed"]) == ("CONNECT", "passthrough", "connect", True)
    assert r["duration_ms"] == 2000 and r["carried"]["user_agent"] == "Electron"


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
    rows = sqlite3.connect(tmp_path / "audit.db").execute("SELECT decision, COUNT(*) FROM records GROUP BY 1").fetchall()
    assert sorted(rows) == [("block", 50), ("passthrough", 1)]
    assert (tmp_path / "audit.db").stat().st_mode & 0o777 == 0o600


def _run(coro):
    return asyncio.run(coro)
