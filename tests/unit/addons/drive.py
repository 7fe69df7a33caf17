"""Drive hush's whole addon chain as mitmproxy would, for unit tests that use only
what mitmproxy and the chain expose (not the notes the addons leave each other).

    async with running(POLICY, tor=FakeTor()) as hush:
        f = connect_flow("onion.org")
        await hush.hook(HttpConnectHook(f))                        # every addon's http_connect, in order
        top = await hush.next_layer(f.client_conn, ("onion.org", 443), layers.TCPLayer)
        commands = await hush.events(top, events.Start())           # the hooks it raises go through the chain

Hooks are invoked on every addon mitmproxy knows (the chain, then the recorder
of ``hush_tunnel``), letting exceptions through, as a test wants them.
"""

from __future__ import annotations

import contextlib
import types

from mitmproxy import connection, hooks
from mitmproxy.proxy import commands, context, events, layer
from mitmproxy.test import taddons

from hush.addons import Pipeline, chain
from hush.daemon.policy import build
from hush.daemon.policy.holder import PolicyHolder

TOR = ("127.0.0.1", 9050)


class FakeTor:
    """What the addons need of the daemon's tor (hush.daemon.tor.TorManager)."""

    def __init__(self, address=TOR, ready=True, reason="bootstrapped"):
        self.tunnel_address = address
        self.ready = ready
        self.reason = reason
        self.stream_callbacks: list = []

    def stream(self, source_port: int, circuit_id: str, exit: tuple[str, str] | None = None) -> None:
        """tor's STREAM event: the connection from ``source_port`` was attached to ``circuit_id``."""
        circuit = types.SimpleNamespace(exit=exit) if exit else None
        for callback in self.stream_callbacks:
            callback(source_port, circuit_id, circuit)


class Tunnels:
    """An addon that records the tunnels hush announces."""

    def __init__(self):
        self.announced: list = []
        self.ended: list = []

    def hush_tunnel(self, tunnel):
        self.announced.append(tunnel)

    def hush_tunnel_end(self, tunnel):
        self.ended.append(tunnel)


class Running:
    def __init__(self, tctx, pipeline: Pipeline, tunnels: Tunnels):
        self.tctx = tctx
        self.pipeline = pipeline
        self.tunnels = tunnels

    async def hook(self, hook: hooks.Hook) -> None:
        for addon in (self.pipeline, self.tunnels):
            await self.tctx.master.addons.invoke_addon(addon, hook)

    def context(self, client: connection.Client, address: tuple[str, int]) -> context.Context:
        """A connection's context, as mitmproxy makes it, to ``address``."""
        ctx = context.Context(client, self.tctx.options)
        ctx.server = connection.Server(address=address)
        return ctx

    async def next_layer(self, ctx: context.Context, chosen=None, data: bytes = b"") -> layer.Layer | None:
        """What the chain makes of the layer mitmproxy chose (a layer class, or None: not chosen yet),
        with ``data`` the client's first bytes, as mitmproxy's NextLayer holds them when it asks (it
        replays them to the layer chosen: feed them to that layer too)."""
        nextlayer = layer.NextLayer(ctx)
        if data:
            nextlayer.events.append(events.DataReceived(ctx.client, data))
        nextlayer.layer = chosen(ctx) if chosen is not None else None
        await self.hook(layer.NextLayerHook(nextlayer))
        return nextlayer.layer

    async def events(self, top: layer.Layer, *incoming: events.Event) -> list[commands.Command]:
        """Feed ``incoming`` to the layer; the hooks it raises run through the chain and are
        answered; the commands it gave, in order."""
        given: list[commands.Command] = []
        queue = list(incoming)
        while queue:
            for command in top.handle_event(queue.pop(0)):
                given.append(command)
                if isinstance(command, commands.StartHook):
                    await self.hook(command)
                    queue.append(events.HookCompleted(command))
        return given


@contextlib.asynccontextmanager
async def running(policy: str, tor: FakeTor | None = None, **options):
    """The chain deciding with ``policy`` (one file's text), in a mitmproxy test context."""
    pipeline = Pipeline(chain(PolicyHolder(build([("p.yaml", policy)])), tor=tor))
    tunnels = Tunnels()
    with taddons.context(pipeline, tunnels) as tctx:
        if options:
            tctx.options.update(**options)
        yield Running(tctx, pipeline, tunnels)
