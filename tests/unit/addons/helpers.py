"""Flows and policy sets for addon unit tests."""

import textwrap

from mitmproxy.proxy.mode_specs import ProxyMode
from mitmproxy.test import tflow

from hush.daemon.policy import build

LISTENER = "regular@127.0.0.1:8101"

POLICY = textwrap.dedent("""\
    app: x
    listen: 8101
    default: allow
    rules:
      - match: {host: "*.backend.net"}
        action: passthrough
      - match: {host: blocked.org}
        action: block
      - match: {host: reset.org}
        action: block
        status: reset
      - match: {site: example.com, path: "/p/*"}
        action: block
        status: 204
      - match: {site: strip.org}
        action: strip
""")


def policyset(text=POLICY):
    return build([("p.yaml", text)])


def http_flow(url, *, listener=LISTENER, headers=None, method="GET"):
    f = tflow.tflow()
    f.client_conn.proxy_mode = ProxyMode.parse(listener)
    f.request.method = method
    f.request.url = url
    for name, value in (headers or {}).items():
        f.request.headers[name] = value
    return f


def connect_flow(host, port=443, *, listener=LISTENER):
    f = tflow.tflow()
    f.client_conn.proxy_mode = ProxyMode.parse(listener)
    f.request.method = "CONNECT"
    f.request.host, f.request.port = host, port
    f.request.path = f"{host}:{port}"
    return f


class Recorder:
    """An addon that records the hush_tunnel hooks it sees."""

    def __init__(self):
        self.tunnels, self.ended = [], []

    def hush_tunnel(self, tunnel):
        self.tunnels.append(tunnel)

    def hush_tunnel_end(self, tunnel):
        self.ended.append(tunnel)


def noted(flow, **fields):
    """Set the flow's notes, as the addons before the one under test would have."""
    from hush.addons.notes import notes

    n = notes(flow)
    for name, value in fields.items():
        setattr(n, name, value)
    return flow
