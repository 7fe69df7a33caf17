"""The front door: connection-level tunnels set up and relayed without mitmproxy.

mitmproxy spends ~2.5 ms of Python on every new connection before its first
byte reaches the site (the CONNECT flow, its layers, hooks and tasks;
docs/performance.md, "Connection-level tunnels"); Privoxy spends 0.4 ms.
Most of what an app opens through hush is decided at connection level and
then only relayed, so hush's HTTP and SOCKS5 listeners are served here
first.  Each new connection gets a :class:`Door`, an asyncio protocol that
reads the handshake itself (``daemon/handshake.py``: strict, the plain case
only) and takes the *boring case* end to end:

- a ``CONNECT host:port`` or a SOCKS5 ``CONNECT`` without authentication,
  from the user's own uid on loopback, on a listener one app owns;
- whose connection-level decision (the same ``connect_decision`` as
  mitmproxy's path) sends it direct with an action that does nothing more
  at connection level (``allow``, ``passthrough``);
- whose first bytes are a TLS ClientHello with no SNI or the target's own
  name.

Then it grants the handshake, announces the tunnel through hush's own hooks
(decide keeps it, act permits it and a reload re-decides it, audit writes its
row), asks the egress guard (``server_connect``: act's permits, mitmproxy's
self-connect check) before it dials, completes the row when the site answers
and when the connection closes, and relays: asyncio protocols first, then,
past ``SPLICE_AFTER`` bytes, the splice relay (``daemon/relay.py``).

Everything else — another user's connection (at once, as it is accepted),
another method, a Host naming another host, body framing on a CONNECT, a shared
listener, a decision that blocks, holds, asks, inspects or goes through tor,
an SNI naming another host, bytes that are not TLS, a handshake the parser
is not sure of, a client that waits — goes to mitmproxy **with every byte
the client sent** (:func:`hand_to_mitmproxy`), and whatever the front door
already answered (the ``200``, SOCKS5's replies) is dropped from what
mitmproxy answers, byte for byte: mitmproxy then parses, decides, refuses,
audits and relays exactly as before.  Should its answer differ from the one
the client already has (a reload in between made it stricter), the
connection is closed: nothing is sent.

Hand-overs and tunnel set-ups share one budget per turn of the event loop
(``SLICE``): a burst of hundreds of connections arriving at once is taken a
few milliseconds at a time instead of in one stall (bench/held_flows.py).

mitmproxy's private API (its server instances' ``listen`` and
``handle_stream``) and asyncio's (``StreamReaderProtocol`` swapped in under a
transport, ``_make_socket_transport``) are used here only, in the functions at
the end, pinned by tests/unit/daemon/test_frontdoor.py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import itertools
import logging
import os
import select
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mitmproxy import connection, ctx
from mitmproxy.addonmanager import traverse
from mitmproxy.addons.block import Block
from mitmproxy.connection import ConnectionState
from mitmproxy.proxy import mode_servers
from mitmproxy.proxy.server_hooks import ServerConnectionHookData

from hush.addons import tunnel as tunnels
from hush.addons.actions.base import Action, Holding
from hush.addons.audit import Wire
from hush.addons.decide import connect_decision
from hush.addons.notes import conn_notes
from hush.addons.tunnel import Tally, Tunnel
from hush.daemon import handshake
from hush.daemon.handshake import Target
from hush.daemon.policy import procnet
from hush.daemon.policy.hosts import address_of, is_loopback, normalize
from hush.daemon.relay import Relay, tell

if TYPE_CHECKING:
    from hush.addons import Chain
    from hush.daemon.policy.model import Decision, PolicySet

log = logging.getLogger("hush.frontdoor")

ENABLED = True  # False: every connection goes to mitmproxy (bench/tunnels.py measures both)
SLICE = 0.004  # seconds of hand-overs and set-ups per turn of the event loop; the rest waits a turn
WAIT = 10.0  # seconds a client may take over its handshake and ClientHello; then mitmproxy takes it
SWEEP = 5.0  # seconds between looks for connections that waited too long or idled past tcp_timeout
ACCEPT_BATCH = 16  # connections accepted per turn of the event loop
LISTEN_BACKLOG = 1024  # connections the kernel keeps waiting meanwhile (asyncio's default: 100)
MAX_HELLO = 64 * 1024  # a ClientHello not complete within this many bytes: mitmproxy's
MAX_BUFFER = 256 * 1024  # bytes read ahead of a hand-over before reading pauses
READ_LIMIT = 64 * 1024  # asyncio.start_server's StreamReader limit, as mitmproxy gets it

# hooks the front door calls (as mitmproxy would, in its addons' order)
HOOKS = ("client_connected", "hush_tunnel", "hush_tunnel_end", "server_connect", "server_connected",
         "server_disconnected", "client_disconnected")
# asynchronous hook methods the front door does not call, and why that is right: the uid check
# Identify.client_connected makes is made here before anything is decided (Door._decide)
SKIPPED = {"Identify.client_connected"}
# synchronous ones it does not call either: mitmproxy's Block.client_connected returns at once for a
# loopback client (only those are the front door's: Door._decide), after parsing its address
# (pinned by tests/unit/daemon/test_frontdoor.py)
NOOP_FOR_LOOPBACK = {(Block, "client_connected")}

# the actions whose tunnels the front door carries out itself (and only if they stay plain: eligible())
FAST_ACTIONS = frozenset({"allow", "passthrough"})

# states of a Door
HEAD, GREETING, REQUEST, HELLO, DIAL, RELAY, SPLICED, HANDED, DONE = range(9)
_WAITING = (HEAD, GREETING, REQUEST, HELLO)


class Hooks:
    """Call the addons' methods for a few of mitmproxy's hooks directly: the methods are looked
    up once, not on every call (mitmproxy's addon manager walks every addon, with a context manager
    and a coroutine per addon, on every event).  An exception in one is logged, as mitmproxy does,
    and the next still runs."""

    def __init__(self, addons: list[Any]):
        self.methods: dict[str, list[Callable[..., Any]]] = {}
        self.problem: str | None = None
        for name in HOOKS:
            found = []
            for addon in addons:
                method = getattr(addon, name, None)
                if method is None or not callable(method):
                    continue
                if asyncio.iscoroutinefunction(method):
                    where = f"{type(addon).__name__}.{name}"
                    if where not in SKIPPED:
                        self.problem = f"{where} is asynchronous"
                    continue
                if (type(addon), name) in NOOP_FOR_LOOPBACK:
                    continue
                found.append(method)
            self.methods[name] = found

    def __call__(self, name: str, *args: Any) -> bool:
        """True if every method returned; False if one raised (logged) or asked to be awaited (a
        check this caller cannot wait for — act's for a launch's name — counts as failed: the
        caller then refuses, it does not go on without it)."""
        ok = True
        for method in self.methods[name]:
            try:
                pending = method(*args)
            except Exception:
                ok = False
                log.exception("%s: %r failed", name, method)
                continue
            if pending is not None and inspect.isawaitable(pending):
                if inspect.iscoroutine(pending):
                    pending.close()
                ok = False
                log.error("%s: %r asked to be awaited; refused", name, method)
        return ok


def eligible(decision: Decision | None) -> bool:
    """A connection-level decision the front door carries out itself: it sends direct, and its
    action does nothing at connection level (no response to a CONNECT, no hold, no tor)."""
    if decision is None or decision.action.egress != "direct" or decision.action.name not in FAST_ACTIONS:
        return False

    action = type(decision.action)
    return (not issubclass(action, Holding) and action.on_tunnel is Action.on_tunnel
            and action.on_connect is Action.on_connect)


class FrontDoor:
    """The daemon's front door: its listeners' connections, the budget, and the wiring to hush's
    addons (``hush``: :func:`hush.addons.chain`'s)."""

    def __init__(self, master: Any, hush: Chain, enabled: bool = True):
        self.master = master
        self.hush = hush
        self.hooks = Hooks(list(traverse(master.addons.chain)))
        self.enabled = enabled and self.hooks.problem is None
        if self.hooks.problem is not None:
            log.warning("front door off: %s (every connection goes to mitmproxy)", self.hooks.problem)
        if self.enabled:  # decide announces tunnels (its own and mitmproxy's) the same quick way
            hush.decide.announce = self.announce
        self.doors: set[Door] = set()
        self.counts: collections.Counter[str] = collections.Counter()  # "fast", "handed"
        self._pending: collections.deque[Callable[[], None]] = collections.deque()
        self._spent = 0.0
        self._turn = False
        self._netlink: socket.socket | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task] = set()

    def announce(self, hook: Any) -> None:
        """decide's hush_tunnel / hush_tunnel_end, called as mitmproxy's addon manager would."""
        if hook.name in self.hooks.methods:
            self.hooks(hook.name, *hook.args())
        else:
            self.master.addons.trigger(hook)

    # -- the budget ----------------------------------------------------------------------------

    def admit(self, work: Callable[[], None]) -> None:
        """Run ``work`` now if this turn of the event loop has budget left, else in a later turn
        (in arrival order)."""
        if self._pending or self._spent >= SLICE:
            self._pending.append(work)
            self._mark_turn()
            return
        self._run(work)

    def _mark_turn(self) -> None:
        if not self._turn:
            self._turn = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _run(self, work: Callable[[], None]) -> None:
        self._mark_turn()
        start = time.perf_counter()
        try:
            work()
        except Exception:
            log.exception("front door: %r failed", work)
        self._spent += time.perf_counter() - start

    def _next_turn(self) -> None:
        self._turn = False
        self._spent = 0.0
        while self._pending and self._spent < SLICE:
            self._run(self._pending.popleft())
        if self._pending:
            self._mark_turn()

    # -- what a door asks --------------------------------------------------------------------

    def uid(self, peer: tuple, local: tuple) -> int | None:
        """The uid holding the client's end of a loopback connection, if the kernel says so at once
        (netlink ``sock_diag`` answers while the request is sent); None otherwise."""
        try:
            message = procnet.sock_diag_request(peer, local)
        except ValueError:
            return None
        if message is None:
            return None
        try:
            if self._netlink is None:
                self._netlink = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK,
                                              procnet.NETLINK_SOCK_DIAG)
            self._netlink.sendto(message, (0, 0))
            found = procnet.sock_diag_answer(self._netlink.recv(65536))
        except (OSError, ValueError):
            with contextlib.suppress(OSError):
                if self._netlink is not None:
                    self._netlink.close()
            self._netlink = None
            return None
        return found[0] if found else None

    # -- life ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP, self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        idle = getattr(self.master.options, "tcp_timeout", 600)
        for door in list(self.doors):
            if door.state in _WAITING and now - door.last > WAIT:
                door.hand("the client waited")
            elif door.state in (RELAY, SPLICED) and now - door.last > idle:
                door.close()
        self._sweeper = asyncio.get_running_loop().call_later(SWEEP, self._sweep)

    def close_all(self) -> None:
        """Stopping: every tunnel the front door relays is closed and ends (its row completed)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for door in list(self.doors):
            door.close()
        self._pending.clear()
        if self._netlink is not None:
            self._netlink.close()
            self._netlink = None

    def status(self) -> dict:
        return {"open": sum(1 for d in self.doors if d.state in (DIAL, RELAY, SPLICED)),
                "spliced": tunnels.relays(),  # by the splice relay, the front door's and mitmproxy's
                "fast": self.counts["fast"], "handed": self.counts["handed"], "enabled": self.enabled}


class Door(asyncio.Protocol):
    """One client connection on a listener, from its first byte until it is relayed here, or handed to
    mitmproxy."""

    def __init__(self, door: FrontDoor, instance: Any):
        self.door = door
        self.instance = instance
        self.socks = instance.mode.type_name == "socks5"
        self.state = GREETING if self.socks else HEAD
        self.buf = bytearray()
        # what the client was answered here, and up to where in buf each answer answered (a hand-over
        # replays each message only once mitmproxy has given the same answer, then drops that answer)
        self.answers: list[tuple[int, bytes]] = []
        self.start = 0  # where the next handshake message (then the ClientHello) starts in buf
        self.eof = False
        self.paused = False
        self.last = time.monotonic()
        self.transport: asyncio.Transport | None = None
        self.peer: tuple | None = None
        self.local: tuple | None = None
        self.uid: int | None = None  # the client socket's, asked at once (hush_same_user_only)
        self.target: Target | None = None
        self.decision: Decision | None = None
        self.app: str | None = None
        self.policyset: PolicySet | None = None
        self.decided_at = 0.0
        # once committed
        self.client: connection.Client | None = None
        self.tunnel: Tunnel | None = None
        self.tally: Tally | None = None
        self.server: connection.Server | None = None
        self.data: ServerConnectionHookData | None = None
        self.up: asyncio.Transport | None = None
        self.client_eof = False
        self.server_eof = False
        self.relay: Relay | None = None
        # the first ClientHello went: until the server's first record shows it is no HelloRetryRequest,
        # a second hello must name the same host (handshake.RetryWatch); None once that is known
        self.watch: handshake.RetryWatch | None = None

    # -- asyncio's callbacks ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        self.local = transport.get_extra_info("sockname")
        self.door.doors.add(self)
        if not self.door.enabled:
            self.hand("front door off")
            return

        if ctx.options.hush_same_user_only and _loopback(self.peer):
            # at once, while the client sends its handshake: another user's connection is answered
            # nothing and held by nothing here (mitmproxy's path refuses it at once, and audits it)
            assert self.peer is not None and self.local is not None
            self.uid = self.door.uid(self.peer, self.local)
            if self.uid != os.getuid():
                self.hand("another user's, or unknown")

    def data_received(self, data: bytes) -> None:
        self.last = time.monotonic()
        state = self.state
        if state == RELAY:
            assert self.up is not None and self.tally is not None
            if self.watch is not None:
                self._watched_up(data)
                return
            self.up.write(data)
            self.tally.up += len(data)
            self._splice()
            return
        self.buf += data
        if state in _WAITING:
            self._advance()
        elif len(self.buf) > MAX_BUFFER and not self.paused:
            self._pause()  # read ahead of a hand-over or a dial: bounded

    def eof_received(self) -> bool:
        self.eof = True
        if self.state in _WAITING:
            self.hand("the client closed its side")  # mitmproxy reads the end with the rest
        elif self.state == RELAY:
            self.client_eof = True
            if self.watch is not None and not self.watch.eof():
                self._watched(None)  # it ended its side with bytes held: refused
                return True
            if self.up is not None and self.up.can_write_eof():
                self.up.write_eof()
            if self.server_eof:
                self.finish()
        return True  # the other direction goes on

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state != HANDED:  # a handed connection's transport is mitmproxy's: this is not called
            self.finish()

    def pause_writing(self) -> None:  # the app reads slower than the site sends
        if self.up is not None:
            self.up.pause_reading()

    def resume_writing(self) -> None:
        if self.up is not None and self.state == RELAY:
            self.up.resume_reading()
            self._splice()

    # -- the handshake ---------------------------------------------------------------------------

    def _advance(self) -> None:
        try:
            if self.state == HEAD:
                self._head()
            if self.state == GREETING:
                self._greeting()
            if self.state == REQUEST:
                self._request()
            if self.state == HELLO:
                self._hello()
        except Exception:
            log.exception("front door: reading a handshake failed; mitmproxy takes it")
            self.hand("error")

    def _reply(self, data: bytes, end: int) -> None:
        """Answer the client's message that ends at ``end`` in buf."""
        assert self.transport is not None
        self.transport.write(data)
        self.answers.append((end, data))

    def _head(self) -> None:
        buf = self.buf
        if not (buf.startswith(b"CONNECT ") or b"CONNECT "[:len(buf)] == buf):
            self.hand("not a CONNECT")
            return
        end = handshake.connect_head_end(buf)
        intake = self.door.hush.intake
        if end < 0:
            if len(buf) > intake.max_header_bytes:
                self.hand("a long head")
            return
        if end != len(buf):
            self.hand("bytes after the CONNECT")
            return
        target = handshake.parse_connect(bytes(buf), intake.max_headers, intake.max_header_bytes)
        if target is None or not self._decide(target):
            self.hand("not the plain case")
            return
        self._reply(target.reply, end)
        self.start = end
        self.state = HELLO
        self._prepare()

    def _greeting(self) -> None:
        end = handshake.socks5_greeting(self.buf)
        options = self.door.master.options
        if end is None or (end and "proxyauth" in options and options.proxyauth):
            self.hand("not the plain greeting")
        elif end:
            self._reply(handshake.SOCKS5_GREETING_REPLY, end)
            self.start = end
            self.state = REQUEST

    def _request(self) -> None:
        length, target = handshake.socks5_request(memoryview(self.buf)[self.start:])
        if length < 0:
            self.hand("not the plain request")
        elif length:
            assert target is not None
            if not self._decide(target):
                self.hand("not decided direct")
                return
            self._reply(target.reply, self.start + length)
            self.start += length
            self.state = HELLO
            self._prepare()

    def _hello(self) -> None:
        found = handshake.tls_sni(bytes(self.buf[self.start:]))
        if found is None:
            if len(self.buf) - self.start > MAX_HELLO:
                self.hand("a long ClientHello")
            return
        assert self.target is not None
        if found == handshake.UNSURE:
            self.hand("not the plain ClientHello")
        elif found[0] is not None and normalize(found[0]) != self.target.host:
            self.hand("the TLS names another host")
        else:
            self.state = DIAL  # no more handshake: what arrives is kept until the dial
            self.door.admit(self._commit)

    def _decide(self, target: Target) -> bool:
        """The decision mitmproxy's path would make for this connection at connection level, if
        the front door may carry it out (no refusal here: mitmproxy's path makes those)."""

        door = self.door
        policyset = door.hush.identify.holder.current
        spec = self.instance.mode.full_spec
        if policyset is None or policyset.is_shared(spec) or not _loopback(self.peer):
            return False
        if self.uid != os.getuid() and ctx.options.hush_same_user_only:
            return False  # another user's (or unknown): mitmproxy's path refuses and audits it
        app = policyset.app_for_listener(spec)
        if app is None:
            return False
        decision = connect_decision(policyset, app, target.host, target.port)
        if not eligible(decision):
            return False
        self.target, self.decision, self.app, self.policyset = target, decision, app, policyset
        self.decided_at = time.time()
        return True

    # -- a hand-over -----------------------------------------------------------------------------

    def hand(self, why: str) -> None:
        """Give the connection to mitmproxy, with every byte read and minus every byte answered."""
        if self.state in (HANDED, DONE) or self.state not in _WAITING:
            return
        self.state = HANDED
        log.debug("front door: %s to mitmproxy: %s", self.peer, why)
        self.door.admit(lambda: self._hand(why))

    def _hand(self, why: str) -> None:
        door = self.door
        door.doors.discard(self)
        if self.client is not None:  # prepared, then not taken: its hooks see it end, mitmproxy's start anew
            self.client.state = ConnectionState.CLOSED
            self.client.timestamp_end = time.time()
            door.hooks("client_disconnected", self.client)
            self.client = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # the client left while this waited its turn: nothing was decided or sent
        door.counts["handed"] += 1
        if self.paused:
            self.paused = False
            transport.resume_reading()
        try:
            hand_to_mitmproxy(self.instance, transport, bytes(self.buf), self.answers, self.eof, door._tasks)
        except Exception:  # fail closed: nothing was sent anywhere; the connection must not linger
            log.exception("front door: handing a connection to mitmproxy failed; closed")
            transport.abort()

    # -- the boring case ---------------------------------------------------------------------------

    def _prepare(self) -> None:
        """While the client sends its ClientHello (the reply is on its way): the connection as
        mitmproxy's hooks know it.  Its ``client_connected`` is called now; a hand-over to mitmproxy
        later ends it first (``client_disconnected``: nothing was decided on it)."""

        target = self.target
        assert target is not None and self.peer is not None and self.local is not None
        client = connection.Client(peername=self.peer, sockname=self.local, timestamp_start=time.time(),
                                   proxy_mode=self.instance.mode, state=connection.ConnectionState.OPEN)
        self.client = client
        self.door.hooks("client_connected", client)
        self.tally = Tally()
        conn_notes(client).wire = Wire(tally=self.tally)
        self.server = connection.Server(address=(target.host, target.port))

    def _commit(self) -> None:
        """The tunnel is taken here: announced, guarded, dialled."""

        transport, target, door, client, server = self.transport, self.target, self.door, self.client, self.server
        assert transport is not None and target is not None and self.decision is not None
        assert client is not None and server is not None
        if transport.is_closing():
            self.finish()
            return
        if door.hush.identify.holder.current is not self.policyset:
            self.state = HELLO  # a reload since the decision: mitmproxy's path decides it under the new set
            self.hand("reloaded")
            return
        door.counts["fast"] += 1
        hooks = door.hooks
        tunnel = Tunnel(client.id, self.app, self.instance.mode.full_spec, target.host, target.port, self.policyset,
                        user_agent=target.user_agent, client=client, started=self.decided_at)
        tunnel.close = self.close
        self.tunnel = tunnel
        door.hush.decide.keep(tunnel)
        tunnel.decision = self.decision
        hooks("hush_tunnel", tunnel)
        if client.error or tunnel.error or tunnel.outcome:
            self.finish()
            return
        self.data = data = ServerConnectionHookData(server=server, client=client)
        if not hooks("server_connect", data) and not server.error:
            server.error = "hush: the egress check failed"
        if server.error:
            self.finish()
            return
        self._dial(server)

    def _dial(self, server: connection.Server) -> None:
        """Connect to the site.  An IP address is connected here: on loopback the kernel completes
        the connection within ``connect()``, and the transport is then made and the ClientHello
        sent in this same turn of the loop; otherwise (a name to resolve, a handshake under way)
        a task waits for it."""
        assert server.address is not None
        host, port = server.address
        server.timestamp_start = time.time()
        sock = None
        try:
            sock = _address_socket(host, server.sockname)
            if sock is not None and _connect_now(sock, (host, port)):
                up = _transport(sock, Upstream(self))
                if up is not None:
                    self._connected(up)
                    return
        except OSError as e:
            if sock is not None:
                sock.close()
            self._not_connected(server, e)
            return
        self._pause()  # what the app sends meanwhile waits in the kernel
        task = asyncio.ensure_future(self._dial_later(server, sock))
        self.door._tasks.add(task)
        task.add_done_callback(self.door._tasks.discard)

    async def _dial_later(self, server: connection.Server, sock: socket.socket | None) -> None:
        loop = asyncio.get_running_loop()
        assert server.address is not None
        host, port = server.address
        try:
            if sock is None:  # a name: resolved as mitmproxy's path resolves it (getaddrinfo, in a thread)
                up, _ = await loop.create_connection(lambda: Upstream(self), host, port,
                                                     local_addr=server.sockname or None)
            else:
                await _until_connected(loop, sock)
                up = _transport(sock, Upstream(self)) or (
                    await loop.create_connection(lambda: Upstream(self), sock=sock))[0]
        except (OSError, ValueError) as e:
            if sock is not None:
                sock.close()
            self._not_connected(server, e)
            return
        assert isinstance(up, asyncio.Transport)
        self._connected(up)

    def _not_connected(self, server: connection.Server, e: Exception) -> None:
        server.error = str(e) or repr(e)
        log.info("front door: cannot connect to %s: %s", server.address, server.error)
        self.finish()

    def _connected(self, up: asyncio.Transport) -> None:

        tunnel, client, server = self.tunnel, self.client, self.server
        assert tunnel is not None and client is not None and server is not None and self.tally is not None
        if self.state != DIAL or tunnel.outcome or tunnel.error \
                or tuple(server.address or ()) not in conn_notes(client).permits:
            up.abort()  # closed, or revoked by a reload while dialling: nothing is sent
            self.finish()
            return
        self.up = up
        server.timestamp_tcp_setup = time.time()
        server.peername = up.get_extra_info("peername")
        server.sockname = up.get_extra_info("sockname")
        server.state = ConnectionState.OPEN
        early = bytes(self.buf[self.start:])
        self.buf = bytearray()
        self.state = RELAY
        # reading resumes before the write: a site that takes less than what was read ahead pauses
        # it again (Upstream.pause_writing), and that pause must stand
        self._resume()
        # the ClientHello first (checked whole by _hello), and what the watch lets follow it now:
        # the hooks below run while the site answers
        self.watch = handshake.RetryWatch()
        self._watched(self.watch.up(early))
        if self.state != RELAY:
            return  # refused (it cannot be: _hello read the hello)
        if self.eof:
            self.client_eof = True
            if self.watch is not None and not self.watch.eof():
                self._watched(None)  # it ended its side with bytes held: refused
                return
            if up.can_write_eof():
                up.write_eof()
        self.door.hooks("server_connected", self.data)

    # -- relaying ----------------------------------------------------------------------------------

    def down(self, data: bytes) -> None:
        """From the site (Upstream)."""
        assert self.transport is not None and self.tally is not None
        self.last = time.monotonic()
        self.transport.write(data)
        self.tally.down += len(data)
        if self.watch is not None:
            self._watched(self.watch.down(data))
            return
        self._splice()

    def _watched_up(self, data: bytes) -> None:
        """The client's bytes while the watch is on: what it lets through goes on."""
        assert self.watch is not None
        self._watched(self.watch.up(data))

    def _watched(self, sent: bytes | None) -> None:
        """What the watch let through goes to the site; its refusal closes the tunnel (audited)."""
        watch, up, tally = self.watch, self.up, self.tally
        assert watch is not None and up is not None and tally is not None
        if sent is None:
            self.watch = None
            tunnel = self.tunnel
            if tunnel is not None and tunnel.error is None:
                tunnel.error = watch.why
            log.warning("front door: closed a tunnel to %s: %s", self.target, watch.why)
            self.finish(abort=True)
            return
        if sent:
            up.write(sent)
            tally.up += len(sent)
        if watch.done:
            self.watch = None
            self._splice()

    def server_closed(self) -> None:
        self.server_eof = True
        assert self.transport is not None
        if self.transport.can_write_eof():
            self.transport.write_eof()
        if self.client_eof:
            self.finish()

    def _splice(self) -> None:
        """Past SPLICE_AFTER bytes, with nothing left to write on either side, both sockets go to
        the splice relay."""
        tally, up, transport = self.tally, self.up, self.transport
        assert tally is not None and transport is not None
        if (not tunnels.SPLICE or self.state != RELAY or up is None or tally.up + tally.down < tunnels.SPLICE_AFTER
                or self.watch is not None or self.client_eof or self.server_eof or transport.get_write_buffer_size()
                or up.get_write_buffer_size()):
            return
        csock, ssock = transport.get_extra_info("socket"), up.get_extra_info("socket")
        where = up.get_extra_info("peername")
        if csock is None or ssock is None:
            return

        transport.pause_reading()
        up.pause_reading()
        loop = asyncio.get_running_loop()

        def ended(relay: Relay) -> None:  # in the relay's thread
            tell(loop, self._spliced_end, relay)

        def active() -> None:  # in the relay's thread: a float, read by the sweep
            self.last = time.monotonic()

        assert self.client is not None
        self.relay = Relay(csock.fileno(), ssock.fileno(), on_end=ended, on_activity=active, counts=tally)
        self.state = SPLICED
        tunnels.register_relay(self.client.id, self.relay)
        try:
            self.relay.start()
        except RuntimeError:  # no thread to be had: fail closed, the tunnel ends
            log.exception("front door: the splice relay could not start; the tunnel is closed")
            self.relay.discard()
            self.finish(abort=True)
            return
        log.debug("relaying %s ⇄ %s in the kernel (splice), from the front door", self.peer, where)

    def _spliced_end(self, relay: Relay) -> None:
        if relay.error:
            log.info("relay of %s ended: %s", self.target, relay.error)
        self.finish()

    def _pause(self) -> None:
        if self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def _resume(self) -> None:
        if self.transport is not None and self.paused:
            self.paused = False
            self.transport.resume_reading()

    # -- the end -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Close now (a reload revoked the tunnel, hush is stopping, it idled out): nothing more is
        relayed; the tunnel ends."""
        self.finish(abort=True)

    def finish(self, abort: bool = False) -> None:
        """Both directions ended (or one failed, or it was closed): close both sockets, then the hooks
        mitmproxy calls at a connection's end (decide ends the tunnel: the audit completes its row)."""
        if self.state == DONE:
            return
        granted_only = self.state in (HELLO, DIAL) and self.tunnel is None and not self.socks
        self.state = DONE
        self.door.doors.discard(self)
        if granted_only and self.client is not None and self.target is not None and self.decision is not None:
            # a CONNECT answered 200 whose ClientHello never came (the client left, hush is
            # stopping): mitmproxy's path wrote its row at the CONNECT, and so does this, ended now
            tunnel = Tunnel(self.client.id, self.app, self.instance.mode.full_spec, self.target.host,
                            self.target.port, self.policyset, user_agent=self.target.user_agent, client=self.client,
                            started=self.decided_at)
            self.tunnel = tunnel
            self.door.hush.decide.keep(tunnel)
            tunnel.decision = self.decision
            self.door.hooks("hush_tunnel", tunnel)
        if self.client is not None:
            tunnels.stop_relay(self.client.id)
        for transport in (self.up, self.transport):
            if transport is not None and not transport.is_closing():
                if abort:
                    transport.abort()
                else:
                    transport.close()
        now = time.time()
        hooks = self.door.hooks
        if self.data is not None and self.up is not None:
            self.data.server.timestamp_end = now
            self.data.server.state = ConnectionState.CLOSED
            hooks("server_disconnected", self.data)
        if self.client is not None:
            self.client.timestamp_end = now
            self.client.state = ConnectionState.CLOSED
            hooks("client_disconnected", self.client)


class Upstream(asyncio.Protocol):
    """The site's side of a tunnel the front door relays."""

    def __init__(self, door: Door):
        self.door = door

    def data_received(self, data: bytes) -> None:
        self.door.down(data)

    def eof_received(self) -> bool:
        self.door.server_closed()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.door.state in (RELAY, SPLICED):
            self.door.finish()

    def pause_writing(self) -> None:  # the site reads slower than the app sends
        transport = self.door.transport
        if transport is not None:
            transport.pause_reading()

    def resume_writing(self) -> None:
        transport = self.door.transport
        if transport is not None and self.door.state == RELAY:
            transport.resume_reading()
            self.door._splice()


def _address_socket(host: str, local: tuple | None) -> socket.socket | None:
    """A non-blocking TCP socket for an IP address (None for a name)."""
    address = address_of(host)
    if address is None:
        return None
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    # IPPROTO_TCP named, as getaddrinfo names it: asyncio's transport then turns Nagle off (TCP_NODELAY)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setblocking(False)
        if local:
            sock.bind(local)
    except OSError:
        sock.close()
        raise
    return sock


def _connect_now(sock: socket.socket, address: tuple[str, int]) -> bool:
    """Start connecting; True if the connection is already made (loopback: the kernel completes the
    handshake within connect()), False while it is under way.  OSError if it failed."""
    try:
        sock.connect(address)
        return True
    except BlockingIOError:
        pass
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    if not poller.poll(0):
        return False
    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, os.strerror(error))
    return True


async def _until_connected(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Wait for a connection under way (``loop.sock_connect`` would call connect() again)."""
    done = loop.create_future()
    fd = sock.fileno()

    def writable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_writer(fd, writable)
    try:
        await done
    finally:
        loop.remove_writer(fd)
    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, os.strerror(error))


def _transport(sock: socket.socket, protocol: asyncio.Protocol) -> asyncio.Transport | None:
    """asyncio's transport for a connected socket, made now (its private ``_make_socket_transport``,
    which ``create_connection(sock=)`` calls after a turn of the loop; pinned by
    tests/unit/daemon/test_frontdoor.py).  None where the loop has none."""
    make = getattr(asyncio.get_running_loop(), "_make_socket_transport", None)
    if make is None:
        return None
    transport = make(sock, protocol)
    return transport if isinstance(transport, asyncio.Transport) else None


def _loopback(peer: tuple | None) -> bool:
    return peer is not None and len(peer) > 0 and is_loopback(str(peer[0]))


# -- mitmproxy's private API, here only -----------------------------------------------------------

_FRONT: FrontDoor | None = None
_ORIGINAL: dict[Any, Callable] = {}


def install(front: FrontDoor) -> None:
    """Serve the HTTP and SOCKS5 listeners mitmproxy starts from now on through ``front``."""
    global _FRONT

    _FRONT = front
    classes: tuple[Any, ...] = (mode_servers.RegularInstance, mode_servers.Socks5Instance)
    for cls in classes:
        if cls not in _ORIGINAL:
            _ORIGINAL[cls] = cls.listen
            cls.listen = _listen


def uninstall() -> None:
    global _FRONT
    _FRONT = None
    for cls, original in _ORIGINAL.items():
        cls.listen = original
    _ORIGINAL.clear()


async def _listen(self, host: str, port: int) -> list:
    """mitmproxy's ``AsyncioServerInstance.listen`` for a TCP listener: the same socket, a Door per
    connection instead of mitmproxy's stream handler."""
    front = _FRONT
    if front is None or not front.enabled or port == 0 or self.mode.transport_protocol != "tcp":
        return await _ORIGINAL[type(self)](self, host, port)
    loop = asyncio.get_running_loop()
    # asyncio accepts up to `backlog` connections per wake-up, all in one callback (a burst of 100 was
    # one 26 ms stall, bench/held_flows.py): ACCEPT_BATCH per turn, and the kernel's queue as long as
    # ever (listen() again, on a duplicate of the socket: the same socket)
    server = await loop.create_server(lambda: Door(front, self), host, port, backlog=ACCEPT_BATCH)
    for listening in server.sockets:
        with socket.socket(fileno=os.dup(listening.fileno())) as same:
            same.listen(LISTEN_BACKLOG)
    return [server]


class _Replay(asyncio.StreamReaderProtocol):
    """mitmproxy's stream protocol for a handed-over connection, replaying what the client sent
    in the order it was sent: each handshake message only once mitmproxy has given the answer the
    front door gave it (so mitmproxy reads the bytes after a CONNECT as tunnel bytes, as it would
    have, not as more of the head), and what arrives from the client meanwhile held back after them."""

    def __init__(self, reader: asyncio.StreamReader, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport,
                 messages: list[bytes], rest: bytes, eof: bool):
        super().__init__(reader, loop=loop)
        self._reader_ = reader
        self._client = transport
        self._messages = messages  # the handshake messages still to replay, the first one already fed
        self._held = bytearray(rest)
        self._held_eof = eof
        self.replaying = True

    def data_received(self, data: bytes) -> None:
        if self.replaying:
            self._held += data
            if len(self._held) > MAX_BUFFER:
                self._client.pause_reading()  # resumed by the reader's flow control once fed
            return
        super().data_received(data)

    def eof_received(self) -> bool:
        if self.replaying:
            self._held_eof = True
            return True
        return bool(super().eof_received())

    def answered(self) -> None:
        """mitmproxy gave the answer to the message replayed last: the next one, or the rest."""
        if self._messages:
            self._reader_.feed_data(self._messages.pop(0))
            return
        self.replaying = False
        if self._held:
            super().data_received(bytes(self._held))
            self._held.clear()
        if self._held_eof:  # on a later turn, as a separate read would bring it
            asyncio.get_running_loop().call_soon(super().eof_received)


class _Answered:
    """The transport mitmproxy writes to after a hand-over: what it answers to each replayed
    handshake message must be what the front door already answered, and is dropped (then the next
    message is replayed); anything else closes the connection (the client was told yes; mitmproxy
    now says otherwise)."""

    def __init__(self, transport: asyncio.Transport, answers: list[bytes], replay: _Replay):
        self._transport = transport
        self._answers = answers
        self._replay = replay

    def write(self, data: bytes) -> None:
        while self._answers and data:
            expected = self._answers[0]
            n = min(len(expected), len(data))
            if bytes(data[:n]) != expected[:n]:
                log.info("front door: mitmproxy's answer differs from the one given; closed")
                self._answers.clear()
                self._transport.abort()
                return
            data = data[n:]
            if n == len(expected):
                self._answers.pop(0)
                self._replay.answered()
            else:
                self._answers[0] = expected[n:]
        if data:
            self._transport.write(data)

    def writelines(self, lines) -> None:
        self.write(b"".join(lines))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def hand_to_mitmproxy(instance: Any, transport: asyncio.Transport, data: bytes, answers: list[tuple[int, bytes]],
                      eof: bool, tasks: set[asyncio.Task]) -> None:
    """What ``asyncio.start_server`` and mitmproxy's ``handle_stream`` would have done with the
    connection, as if its bytes were still unread: a StreamReader fed ``data`` (and the EOF, if the
    client sent it) — where the front door answered handshake messages (``answers``: where each
    message ends in ``data``, and the answer), message by message as mitmproxy answers each the
    same way, those answers dropped from what it writes."""
    from mitmproxy.proxy.mode_servers import ServerInstance

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_LIMIT, loop=loop)
    writer_transport: Any = transport
    if answers:
        ends = [0, *(end for end, _ in answers)]
        messages = [data[a:b] for a, b in itertools.pairwise(ends)]
        replay = _Replay(reader, loop, transport, messages[1:], data[ends[-1]:], eof)
        protocol: asyncio.StreamReaderProtocol = replay
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        reader.feed_data(messages[0])
        writer_transport = _Answered(transport, [answer for _, answer in answers], replay)
    else:
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if data:
            reader.feed_data(data)
        if eof:
            reader.feed_eof()
    writer = asyncio.StreamWriter(writer_transport, protocol, reader, loop)
    task = asyncio.ensure_future(ServerInstance.handle_stream(instance, reader, writer))
    tasks.add(task)
    task.add_done_callback(tasks.discard)
