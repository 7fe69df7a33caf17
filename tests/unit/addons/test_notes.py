"""notes: the typed record a flow carries, and per-connection state that ends with its connection."""

import asyncio
import gc
import weakref

from mitmproxy import connection
from mitmproxy.proxy import server_hooks
from mitmproxy.proxy.layers.http import _hooks as http_hooks
from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import taddons, tflow

from hush.addons import chain
from hush.addons.notes import KEY, ConnNotes, Notes, conn_notes, notes
from hush.addons.torroute import _StaticTor
from hush.daemon.policy.holder import PolicyHolder

from .helpers import LISTENER, connect_flow, http_flow, policyset

TOR = ("127.0.0.1", 9050)
POLICY = """\
app: x
listen: 8101
default: allow
rules:
  - match: {host: "*.backend.net"}
    action: passthrough
  - match: {host: blocked.org}
    action: block
  - match: {host: tor.org}
    action: tor
  - match: {host: socks.org}
    action: block
"""


def test_notes_are_one_record_under_one_key():
    f = tflow.tflow()
    assert notes(f) is notes(f) and isinstance(notes(f), Notes)
    assert list(f.metadata) == [KEY]
    notes(f).app = "x"
    assert f.metadata[KEY].app == "x"


def test_conn_notes_live_on_the_client_object():
    client = tflow.tclient_conn()
    assert conn_notes(client) is conn_notes(client) and isinstance(conn_notes(client), ConnNotes)
    assert conn_notes(tflow.tclient_conn()) is not conn_notes(client)
    assert "hush_notes" not in client.get_state()  # not part of what mitmproxy saves of a connection


def _client(i: int, spec: str = LISTENER) -> connection.Client:
    client = connection.Client(peername=("127.0.0.1", 40000 + i), sockname=("127.0.0.1", 8101), timestamp_start=1.0)
    client.proxy_mode = ProxyMode.parse(spec)
    return client


async def _drive(master, client: connection.Client, i: int) -> list:
    """One connection through every hook hush has: a CONNECT relayed on a connection-level
    decision, a request sent through tor (with its CONNECT to tor), a blocked request."""
    trigger = master.addons.trigger_event
    await trigger(server_hooks.ClientConnectedHook(client))
    flows = []
    kind = i % 3
    if kind == 0:
        f = connect_flow("a.backend.net")
        f.client_conn = client
        await trigger(http_hooks.HttpConnectHook(f))
        data = server_hooks.ServerConnectionHookData(connection.Server(address=("a.backend.net", 443)), client)
        await trigger(server_hooks.ServerConnectHook(data))
        assert data.server.error is None  # permitted
        await trigger(server_hooks.ServerConnectedHook(data))
        flows.append(f)
    else:
        for url in ("http://tor.org/x", "http://blocked.org/y") if kind == 1 else ("http://a.org/z",):
            f = http_flow(url)
            f.client_conn = client
            await trigger(http_hooks.HttpRequestHeadersHook(f))
            await trigger(http_hooks.HttpRequestHook(f))
            if notes(f).tor is not None:
                up = http_flow("http://tor.org:80/")
                up.client_conn = client
                up.server_conn.sockname = ("127.0.0.1", 30000 + i)
                await trigger(http_hooks.HttpConnectUpstreamHook(up))
            await trigger(http_hooks.HttpResponseHook(f) if f.response else http_hooks.HttpErrorHook(f))
            flows.append(f)
    return flows


def _run_connections(n: int, disconnect: bool):
    hush = chain(PolicyHolder(policyset(POLICY)), _StaticTor(TOR))
    clients: list[weakref.ref] = []

    async def go(tctx):
        tctx.configure(hush.identify, hush_same_user_only=False)
        for i in range(n):
            client = _client(i)
            flows = await _drive(tctx.master, client, i)
            assert notes(flows[0]).decision is not None
            if disconnect:
                await tctx.master.addons.trigger_event(server_hooks.ClientDisconnectedHook(client))
            clients.append(weakref.ref(client))
        del client, flows

    with taddons.context(*hush) as tctx:
        asyncio.run(go(tctx))
    return hush, clients


def _left(hush) -> dict:
    """Everything hush keeps across connections."""
    return {"decide": len(hush.decide._tunnels), "act": len(hush.act._tunnels), "audit": len(hush.audit._open),
            "tor ports": len(hush.router._by_port), "held": hush.timing.total}


def test_many_connections_through_the_chain_leave_nothing_behind():
    hush, clients = _run_connections(90, disconnect=True)
    assert hush.audit.counts["passthrough"] == 30 and hush.audit.counts["tor"] == 30  # they did go through
    assert _left(hush) == {"decide": 0, "act": 0, "audit": 0, "tor ports": 0, "held": 0}
    gc.collect()
    assert [c for c in clients if c() is not None] == []  # nothing of hush holds a connection


def test_a_missed_cleanup_hook_leaks_nothing_either():
    gc.disable()  # the connections are freed below, not by chance during the run
    try:
        hush, clients = _run_connections(90, disconnect=False)
        assert _left(hush) == {"decide": 30, "act": 30, "audit": 30, "tor ports": 30, "held": 0}  # all still open
    finally:
        gc.enable()
    gc.collect()
    assert [c for c in clients if c() is not None] == []
    assert _left(hush) == {"decide": 0, "act": 0, "audit": 0, "tor ports": 0, "held": 0}
