"""The daemon's side of ``hush launch``: the launch socket, each launch's
listeners and DNS stub, and the hand-off of its connections to mitmproxy.

``STATE_DIR/launch.sock`` (0600, the daemon's uid only, checked by
``SO_PEERCRED`` too) takes one message per launch: a JSON line naming the app,
with the launch's listening sockets attached (``SCM_RIGHTS``, the order of
:data:`hush.daemon.launch.namespace.SOCKETS`).  Every socket is checked for what it must
be (family, type, listening), then the daemon accepts on it.  The connection
stays open for the launch's life: when it closes (the command exited, or
``hush launch`` was killed), the launch's sockets are closed here, the last
copies, so its namespace has no way out left.

A connection accepted on a launch's socket carries its real destination in
``SO_ORIGINAL_DST`` (nftables redirected it).  A destination in the fake range
is mapped back to the name the stub gave it out for; one no name has is
refused.  Then the connection enters mitmproxy exactly like one whose
destination a SOCKS5 client named: identified by its launch (the mode's
``full_spec`` is ``launch:APP:ID``), decided, acted on and audited as today.
Building that connection uses mitmproxy's private proxy-server API
(``ProxyConnectionHandler``, ``TransparentProxy``), kept to :func:`serve_connection`
and pinned with mitmproxy's minor version.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import socket
import struct
import time
from pathlib import Path

from hush.daemon.launch import fakedns
from hush.daemon.launch.namespace import LAUNCH_SOCKET, SOCKETS
from hush.daemon.policy.hosts import normalize, this_machine

log = logging.getLogger("hush.launch")

LAUNCH_PREFIX = "launch:"
SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same number
SOL_IPV6 = 41
MAX_HELLO = 64 * 1024
MAX_DNS_TCP = 4  # concurrent DNS-over-TCP connections per launch
MAX_OPEN = 4096  # open connections per launch: beyond, new ones are closed (the daemon's fds are everyone's)
HELLO_TIMEOUT = 10.0


def launch_spec(app: str, launch_id: int) -> str:
    return f"{LAUNCH_PREFIX}{app}:{launch_id}"


def app_of_spec(spec: str) -> str | None:
    """The app a launch's connections belong to, from their mode's spec."""
    if not spec.startswith(LAUNCH_PREFIX):
        return None
    return spec[len(LAUNCH_PREFIX):].rpartition(":")[0] or None


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """Where the app meant to connect before nftables redirected it (OSError if
    it was not redirected: a connection straight to the listener)."""
    if sock.family == socket.AF_INET:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port, address = struct.unpack_from("!2xH4s", raw)
        return socket.inet_ntop(socket.AF_INET, address), port
    raw = sock.getsockopt(SOL_IPV6, SO_ORIGINAL_DST, 28)
    port, address = struct.unpack_from("!2xH4x16s", raw)
    return socket.inet_ntop(socket.AF_INET6, address), port


def _local(host: str) -> bool:
    """A loopback or unspecified address, however spelt (:func:`hosts.this_machine`).
    Dialled by the daemon it would reach the *host's* loopback."""
    return this_machine(host, link_local=False) is not None


def _straight(host: str) -> bool:
    """The namespace's own loopback or unspecified address as the kernel gives it:
    nftables never redirects those, so such a destination means the app connected
    to hush's socket itself."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_unspecified


def _local_name(name: str) -> str | None:
    """Why a name a fake address maps back to must not be dialled by the daemon,
    or None: an address literal (decided on a name, ``127.1`` would reach the
    *host's* 127.0.0.1) or a name that is loopback by definition."""
    address = fakedns.literal(name)
    if address is not None:
        if _local(address):
            return f"{name!r} is the loopback address {address}, and the host's is not the launch's"
        return f"{name!r} is an address: it is decided as one, never given a fake address"
    if fakedns.is_local_name(name):
        return f"{name!r} names the loopback, and the host's is not the launch's"
    return None


def _expect(sock: socket.socket, family: socket.AddressFamily, kind: socket.SocketKind, listening: bool) -> None:
    if sock.family != family or sock.type != kind:
        raise ValueError(f"socket {sock.fileno()} is {sock.family.name}/{sock.type.name}, "
                         f"not {family.name}/{kind.name}")
    if listening and not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        raise ValueError(f"socket {sock.fileno()} is not listening")
    host = sock.getsockname()[0]
    if host not in ("127.0.0.1", "::1"):
        raise ValueError(f"socket {sock.fileno()} is bound to {host}, not the namespace's loopback")


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


EXPECTED = {
    "tcp4": (socket.AF_INET, socket.SOCK_STREAM, True),
    "tcp6": (socket.AF_INET6, socket.SOCK_STREAM, True),
    "dns_udp4": (socket.AF_INET, socket.SOCK_DGRAM, False),
    "dns_udp6": (socket.AF_INET6, socket.SOCK_DGRAM, False),
    "dns_tcp4": (socket.AF_INET, socket.SOCK_STREAM, True),
    "dns_tcp6": (socket.AF_INET6, socket.SOCK_STREAM, True),
}


@dataclasses.dataclass(eq=False)
class Launch:
    id: int
    app: str
    pid: int
    argv: list[str]
    uid: int
    since: float = dataclasses.field(default_factory=time.time)
    names: fakedns.FakeAddresses = dataclasses.field(default_factory=fakedns.FakeAddresses)
    connections: int = 0
    open: int = 0
    refused: int = 0
    dns_queries: int = 0
    servers: list = dataclasses.field(default_factory=list)
    transports: list = dataclasses.field(default_factory=list)
    mode: object = None
    _dns_tcp: int = 0

    @property
    def spec(self) -> str:
        return launch_spec(self.app, self.id)

    def status(self) -> dict:
        return {"id": self.id, "app": self.app, "pid": self.pid, "argv": self.argv, "since": self.since,
                "connections": self.connections, "open": self.open, "refused": self.refused,
                "dns_queries": self.dns_queries, "names": len(self.names), "listener": self.spec}

    def close(self) -> None:
        for server in self.servers:
            server.close()
        for transport in self.transports:
            transport.close()
        self.servers.clear()
        self.transports.clear()


def serve_connection(launch: Launch, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     destination: tuple[str, int]):
    """Hand one accepted connection to mitmproxy as the launch's (a coroutine).

    mitmproxy's private API: what its transparent mode does for a connection,
    with the destination hush already knows (a name for a fake address)."""
    from mitmproxy import ctx
    from mitmproxy.proxy.layers import modes
    from mitmproxy.proxy.mode_servers import ProxyConnectionHandler

    handler = ProxyConnectionHandler(ctx.master, reader, writer, ctx.options, launch.mode)
    handler.layer = modes.TransparentProxy(handler.layer.context)
    handler.layer.context.client.sockname = writer.get_extra_info("sockname")
    handler.layer.context.server.address = destination
    manager = ctx.master.addons.get("proxyserver")

    async def run():
        with manager.register_connection(handler.layer.context.client.id, handler):
            await handler.handle_client()

    return run()


def make_mode(spec: str):
    """The mitmproxy mode a launch's connections carry: transparent (the
    destination is known before any byte), named by the launch."""
    from mitmproxy.proxy.mode_specs import TransparentMode

    return TransparentMode(full_spec=spec, data="", custom_listen_host=None, custom_listen_port=None)


def refusal(launch: Launch, host: str, port: int, why: str):
    """The audit's tunnel for a connection refused before mitmproxy saw it."""
    from hush.addons.flowinfo import fail_closed
    from hush.addons.tunnel import Tunnel

    tunnel = Tunnel(client_id=f"{launch.spec}:refused", app=launch.app, listener=launch.spec, host=host, port=port,
                    policyset=None, decision=fail_closed(launch.app, why, "", "connect"))
    tunnel.error = f"hush: {why}"
    tunnel.ended = tunnel.started
    return tunnel


class LaunchServer:
    """``STATE_DIR/launch.sock`` and the running launches.  ``record(tunnel)``
    audits a connection refused here (the daemon hands in its audit's)."""

    def __init__(self, state_dir: Path, apps, serve=serve_connection, policies: Path | None = None,
                 record=lambda tunnel: None):
        self.record = record
        self.path = Path(state_dir) / LAUNCH_SOCKET
        # what a launched app must not reach: hush's state (this socket among it), and its policies
        self.guard = {"hide": [str(Path(state_dir).resolve())],
                      "readonly": [str(Path(policies).resolve())] if policies else []}
        self.apps = apps  # () -> the apps the current policy set knows
        self.serve = serve
        self.launches: dict[int, Launch] = {}
        self._next_id = 1
        self._sock: socket.socket | None = None
        self._task: asyncio.Task | None = None
        self._clients: set[asyncio.Task] = set()

    async def start(self) -> bool:
        if len(str(self.path)) > 107:
            log.warning("no launch socket: %s is too long; `hush launch` will not reach this daemon", self.path)
            return False
        self.path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(64)
        sock.setblocking(False)
        self._sock = sock
        self._task = asyncio.ensure_future(self._accept(sock))
        return True

    def stop_accepting(self) -> None:
        """Stopping: no new launch is taken (``launch.sock`` stops accepting) and no running launch
        takes a new connection (its listening sockets close); what is open goes on until ``stop``."""
        if self._task is not None:
            self._task.cancel()
        if self._sock is not None:
            self._sock.close()  # `hush launch` is refused now, as with no daemon (exit 7)
        for launch in self.launches.values():
            for server in launch.servers:
                try:
                    server.close()
                except Exception:
                    log.exception("stopping: launch %d's listener could not be closed", launch.id)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for task in list(self._clients):
            task.cancel()
        for launch in list(self.launches.values()):
            launch.close()
        self.launches.clear()
        if self._sock is not None:
            self._sock.close()
            self.path.unlink(missing_ok=True)

    def status(self) -> list[dict]:
        return [launch.status() for launch in self.launches.values()]

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as e:  # EMFILE and the like: keep serving launch.sock once it passes
                log.warning("launch socket: accept failed: %s", e.strerror or e)
                await asyncio.sleep(0.5)
                continue
            task = asyncio.ensure_future(self._session(conn))
            self._clients.add(task)
            task.add_done_callback(self._clients.discard)

    async def _hello(self, conn: socket.socket) -> tuple[dict, list[int]]:
        """The JSON line and the sockets that came with it, within HELLO_TIMEOUT
        in all; on any failure the sockets received so far are closed."""
        fds: list[int] = []
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                return await self._read_hello(conn, fds)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise

    async def _read_hello(self, conn: socket.socket, fds: list[int]) -> tuple[dict, list[int]]:
        loop = asyncio.get_running_loop()
        data = b""
        while not data.endswith(b"\n"):
            if len(data) > MAX_HELLO:
                raise ValueError("hello too long")
            try:
                chunk, more, _, _ = socket.recv_fds(conn, 4096, len(SOCKETS))
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_reader(conn.fileno(), _wake, ready)
                try:
                    await ready
                finally:
                    loop.remove_reader(conn.fileno())
                continue
            fds += more
            if not chunk:
                raise ConnectionError("closed before the hello")
            data += chunk
        return json.loads(data), fds

    async def _session(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        launch = None
        fds: list[int] = []
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, _ = struct.unpack("3i", creds)
            if uid != os.getuid():
                log.warning("refused a launch from uid %d (pid %d): hush serves only uid %d", uid, pid, os.getuid())
                return
            hello, fds = await self._hello(conn)
            try:
                launch = self._start(hello, fds, uid)
            except (ValueError, LookupError, TypeError, OSError) as e:
                await loop.sock_sendall(conn, json.dumps({"ok": False, "error": str(e)}).encode() + b"\n")
                return
            finally:
                for fd in fds:  # started servers hold their own duplicates
                    os.close(fd)
            reply = {"ok": True, "id": launch.id, "listener": launch.spec, "guard": self.guard}
            await loop.sock_sendall(conn, json.dumps(reply).encode() + b"\n")
            log.info("launch %d: app=%s pid=%d %s", launch.id, launch.app, launch.pid, " ".join(launch.argv)[:200])
            while await loop.sock_recv(conn, 4096):
                pass  # nothing more is said; the end of the connection is the end of the launch
        except (TimeoutError, ConnectionError, ValueError, RecursionError) as e:
            log.warning("launch connection dropped: %s", e or type(e).__name__)
        except asyncio.CancelledError:
            pass
        finally:
            conn.close()
            if launch is not None:
                launch.close()
                self.launches.pop(launch.id, None)
                log.info("launch %d ended: app=%s, %d connection(s), %d refused", launch.id, launch.app,
                         launch.connections, launch.refused)

    def _start(self, hello: dict, fds: list[int], uid: int) -> Launch:
        app = hello["app"]
        if not isinstance(app, str) or app not in self.apps():
            raise LookupError(f"no policy for app {app!r} (apps: {', '.join(sorted(self.apps()))})")
        if len(fds) != len(SOCKETS) or hello.get("sockets") != list(SOCKETS):
            raise ValueError(f"expected {len(SOCKETS)} sockets ({', '.join(SOCKETS)}), got {len(fds)}")
        socks = {}
        for name, fd in zip(SOCKETS, fds, strict=True):
            sock = socket.socket(fileno=os.dup(fd))
            socks[name] = sock
        try:
            for name, sock in socks.items():
                _expect(sock, *EXPECTED[name])
        except (ValueError, OSError):
            for sock in socks.values():
                sock.close()
            raise
        launch = Launch(self._next_id, app, int(hello.get("pid", 0)), [str(a) for a in hello.get("argv", [])][:64],
                        uid)
        self._next_id += 1
        launch.mode = make_mode(launch.spec)
        loop = asyncio.get_running_loop()
        for name in ("tcp4", "tcp6"):
            socks[name].setblocking(False)
            launch.servers.append(_Server(loop, socks[name], lambda r, w: self._connection(launch, r, w)))
        for name in ("dns_tcp4", "dns_tcp6"):
            socks[name].setblocking(False)
            launch.servers.append(_Server(loop, socks[name], lambda r, w: self._dns_tcp(launch, r, w)))
        for name in ("dns_udp4", "dns_udp6"):
            socks[name].setblocking(False)
            launch.transports.append(_DnsStub(loop, socks[name], launch))
        self.launches[launch.id] = launch
        return launch

    async def _connection(self, launch: Launch, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            host, port = original_destination(sock)
        except OSError:  # no conntrack entry at all
            host, port = writer.get_extra_info("sockname")[:2]
            self._refuse(launch, writer, host, port, "no original destination")
            return
        if _straight(host):  # never redirected there: a connection made straight to this socket
            self._refuse(launch, writer, host, port, "a connection made straight to hush's socket")
            return
        if _local(host):  # another spelling of a loopback address (NAT64's, IPv4-compatible)
            self._refuse(launch, writer, host, port, f"{host} stands for the loopback address {normalize(host)}, "
                                                     "and the host's is not the launch's")
            return
        if fakedns.is_fake(host):
            name = launch.names.name(host)
            if name is None:
                self._refuse(launch, writer, host, port, "a fake address no name was given out for")
                return
            why = _local_name(name)
            if why:  # the stub gives these no fake address: a table that holds one is refused all the same
                self._refuse(launch, writer, name, port, why)
                return
            host = name
        if launch.open >= MAX_OPEN:
            launch.refused += 1
            writer.close()  # not audited: a flood would fill the audit; counted in hush status
            return
        launch.connections += 1
        launch.open += 1
        try:
            await self.serve(launch, reader, writer, (host, port))
        finally:
            launch.open -= 1

    def _refuse(self, launch: Launch, writer: asyncio.StreamWriter, host: str, port: int, why: str) -> None:
        launch.refused += 1
        log.warning("launch %d (%s): refused %s:%d: %s", launch.id, launch.app, host, port, why)
        writer.close()
        try:
            self.record(refusal(launch, host, port, why))
        except Exception:
            log.exception("launch %d: could not audit a refused connection", launch.id)

    async def _dns_tcp(self, launch: Launch, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if launch._dns_tcp >= MAX_DNS_TCP:
            writer.close()
            return
        launch._dns_tcp += 1
        try:
            while True:
                size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 10), "big")
                query = await asyncio.wait_for(reader.readexactly(size), 10)
                reply, _ = fakedns.answer(query, launch.names)
                launch.dns_queries += 1
                if reply is None:
                    break
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            launch._dns_tcp -= 1
            writer.close()


class _Server:
    """asyncio's server on a socket someone else made (``start_server(sock=)``
    is a coroutine; this starts it as a task and closes it either way)."""

    def __init__(self, loop, sock: socket.socket, handler):
        self._server: asyncio.AbstractServer | None = None
        self._sock = sock
        self._closed = False
        self._task = loop.create_task(self._start(handler))

    async def _start(self, handler) -> None:
        self._server = await asyncio.start_server(handler, sock=self._sock, limit=2 ** 16)
        if self._closed:
            self._server.close()

    def close(self) -> None:
        self._closed = True
        if self._server is not None:
            self._server.close()
        else:
            self._task.cancel()
            self._sock.close()


class _DnsStub:
    """The DNS stub on one UDP socket: a reader callback on the socket is all
    it needs (create_datagram_endpoint(sock=) would be one more coroutine)."""

    def __init__(self, loop, sock: socket.socket, launch: Launch):
        self.loop, self.sock, self.launch = loop, sock, launch
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        for _ in range(64):  # a burst at most per wake-up; the loop serves others in between
            try:
                data, addr = self.sock.recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            reply, _ = fakedns.answer(data, self.launch.names)
            self.launch.dns_queries += 1
            if reply is not None:
                with contextlib.suppress(OSError):
                    self.sock.sendto(reply, addr)

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
