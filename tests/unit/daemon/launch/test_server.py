"""daemon/launch/server.py: the launch socket, a launch's sockets, its DNS stub and
the mapping of fake addresses back to names (mitmproxy replaced by a recorder)."""

import asyncio
import json
import socket

import pytest
from dnslib import DNSRecord

from hush.daemon.launch import namespace as launch_cli
from hush.daemon.launch import server as launches
from hush.daemon.launch.server import LaunchServer, app_of_spec, launch_spec


def test_the_app_is_read_back_from_the_launch_spec():
    assert launch_spec("signal", 3) == "launch:signal:3"
    assert app_of_spec("launch:signal:3") == "signal"
    assert app_of_spec("launch:a:b:7") == "a:b"
    assert app_of_spec("regular@127.0.0.1:8101") is None
    assert app_of_spec("launch:") is None


class Client:
    """What `hush launch` does on the host, without the namespace: sockets on
    the host's loopback, handed over with SCM_RIGHTS."""

    def __init__(self, path, app="x", sockets=None):
        self.sockets = sockets or launch_cli.make_sockets()
        self.conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.conn.settimeout(10)
        self.conn.connect(str(path))
        hello = {"app": app, "pid": 4242, "argv": ["curl", "x"], "sockets": list(launch_cli.SOCKETS)}
        socket.send_fds(self.conn, [json.dumps(hello).encode() + b"\n"],
                        [self.sockets[name].fileno() for name in launch_cli.SOCKETS])
        self.ports = {name: s.getsockname()[1] for name, s in self.sockets.items()}
        for s in self.sockets.values():
            s.close()  # as hush launch does: the daemon holds the only copies
        data = b""
        while not data.endswith(b"\n"):
            chunk = self.conn.recv(4096)
            assert chunk, "the daemon closed the connection"
            data += chunk
        self.reply = json.loads(data)


async def started(tmp_path, served):
    async def serve(launch, reader, writer, destination):
        served.append((launch.app, destination))
        writer.close()

    server = LaunchServer(tmp_path, lambda: {"x": object()}, serve=serve, record=served.append)
    assert await server.start()
    return server


async def until(condition, timeout=5.0):
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def test_a_launch_lives_as_long_as_its_connection(tmp_path):
    async def main():
        served = []
        server = await started(tmp_path, served)
        client = await asyncio.to_thread(Client, server.path)
        assert client.reply["ok"] and client.reply["listener"] == "launch:x:1"
        assert client.reply["guard"]["hide"] == [str(tmp_path.resolve())]  # launch.sock, control.sock, CA key
        [status] = server.status()
        assert status["app"] == "x" and status["pid"] == 4242 and status["argv"] == ["curl", "x"]

        # the stub answers over UDP and TCP with a fake address
        def dns_udp():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.settimeout(5)
                u.sendto(DNSRecord.question("allowed.test").pack(), ("127.0.0.1", client.ports["dns_udp4"]))
                return DNSRecord.parse(u.recv(4096))

        def dns_tcp():
            with socket.create_connection(("127.0.0.1", client.ports["dns_tcp4"]), timeout=5) as t:
                q = DNSRecord.question("allowed.test").pack()
                t.sendall(len(q).to_bytes(2, "big") + q)
                size = int.from_bytes(t.recv(2), "big")
                return DNSRecord.parse(t.recv(size))

        udp, tcp = await asyncio.to_thread(dns_udp), await asyncio.to_thread(dns_tcp)
        assert str(udp.rr[0].rdata) == str(tcp.rr[0].rdata)
        assert server.launches[1].names.name(str(udp.rr[0].rdata)) == "allowed.test"

        # a connection straight to the listener (no nftables redirect): refused, never served
        def direct():
            with socket.create_connection(("127.0.0.1", client.ports["tcp4"]), timeout=5) as c:
                return c.recv(10)

        assert await asyncio.to_thread(direct) == b""
        await until(lambda: server.launches[1].refused == 1)
        [refused] = served  # audited, never served
        assert refused.error == "hush: no original destination"

        # the end of `hush launch` is the end of the launch: its sockets are gone
        client.conn.close()
        await until(lambda: not server.launches)
        await asyncio.sleep(0.05)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", client.ports["tcp4"]), timeout=5)
        await server.stop()

    asyncio.run(main())


def test_an_unknown_app_or_the_wrong_sockets_are_refused(tmp_path):
    async def main():
        server = await started(tmp_path, [])
        unknown = await asyncio.to_thread(Client, server.path, "nosuchapp")
        assert not unknown.reply["ok"] and unknown.reply["error"].startswith("no policy for app 'nosuchapp'")
        socks = launch_cli.make_sockets()
        socks["tcp4"], socks["dns_udp4"] = socks["dns_udp4"], socks["tcp4"]
        wrong = await asyncio.to_thread(Client, server.path, "x", socks)
        assert not wrong.reply["ok"] and "not" in wrong.reply["error"]
        assert server.launches == {}
        await server.stop()

    asyncio.run(main())


def test_a_fake_address_is_decided_on_its_name_and_an_unknown_one_is_refused(tmp_path, monkeypatch):
    async def main():
        served = []
        server = await started(tmp_path, served)
        client = await asyncio.to_thread(Client, server.path)
        launch = server.launches[1]
        fake = launch.names.address("viator.test")
        destinations = iter([(fake, 443), ("198.18.9.9", 443), ("203.0.113.10", 80), ("2001:db8::10", 443),
                             # never redirected, so straight to hush's socket: deciding on them would
                             # reach the host's loopback
                             ("127.0.0.1", 4321), ("::1", 4321), ("0.0.0.0", 80), ("::ffff:127.0.0.2", 80)])
        monkeypatch.setattr(launches, "original_destination", lambda sock: next(destinations))

        def connect():
            with socket.create_connection(("127.0.0.1", client.ports["tcp4"]), timeout=5) as c:
                c.recv(10)

        for _ in range(8):
            await asyncio.to_thread(connect)
        await until(lambda: len(served) == 8)
        tunnels = [t for t in served if not isinstance(t, tuple)]  # what the audit was handed
        assert [t for t in served if isinstance(t, tuple)] == [
            ("x", ("viator.test", 443)), ("x", ("203.0.113.10", 80)), ("x", ("2001:db8::10", 443))]
        assert launch.refused == 5 and launch.connections == 3
        assert [(t.host, t.port) for t in tunnels] == [("198.18.9.9", 443), ("127.0.0.1", 4321), ("::1", 4321),
                                                        ("0.0.0.0", 80), ("::ffff:127.0.0.2", 80)]
        for t in tunnels:
            assert t.app == "x" and t.listener == "launch:x:1" and t.decision.action.egress == "none"
            assert t.decision.note.startswith("fail-closed: ") and t.error.startswith("hush: ")
        client.conn.close()
        await server.stop()

    asyncio.run(main())


def test_the_mitmproxy_api_the_hand_off_relies_on():
    """serve_connection uses mitmproxy's private proxy-server API: fail loudly
    here, not silently in the field, when an upgrade changes it."""
    import inspect

    from mitmproxy.proxy import mode_specs
    from mitmproxy.proxy.layers import modes
    from mitmproxy.proxy.mode_servers import ProxyConnectionHandler, ServerManager

    assert list(inspect.signature(ProxyConnectionHandler.__init__).parameters) == [
        "self", "master", "r", "w", "options", "mode"]
    assert hasattr(modes, "TransparentProxy")
    assert hasattr(ServerManager, "register_connection")
    mode = launches.make_mode("launch:x:1")
    assert isinstance(mode, mode_specs.TransparentMode)
    assert mode.full_spec == "launch:x:1" and mode.type_name == "transparent"


def test_a_bad_hello_leaves_no_descriptor_behind(tmp_path):
    """Sockets that came with a hello the daemon cannot read are closed, not leaked."""
    import os

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    async def main():
        server = await started(tmp_path, [])
        before = open_fds()

        def bad_hello():
            socks = launch_cli.make_sockets()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(10)
                conn.connect(str(server.path))
                socket.send_fds(conn, [b"{not json\n"], [s.fileno() for s in socks.values()])
                assert conn.recv(100) == b""  # dropped
            for s in socks.values():
                s.close()

        for _ in range(5):
            await asyncio.to_thread(bad_hello)
        await until(lambda: open_fds() <= before)
        await server.stop()

    asyncio.run(main())


def test_a_fake_address_mapping_back_to_an_address_or_a_local_name_is_refused(tmp_path, monkeypatch):
    """The stub gives these no fake address; a table that holds one anyway must not hand the daemon
    a name that reaches the *host's* loopback (decided on a name, ``127.1`` is dialled as 127.0.0.1)."""
    async def main():
        served = []
        server = await started(tmp_path, served)
        client = await asyncio.to_thread(Client, server.path)
        launch = server.launches[1]
        names = ["127.1", "2130706433", "0", "203.0.113.11", "198.19.255.254", "localhost", "a.localhost",
                 "ip6-localhost", "localhost.localdomain", "allowed.test"]
        destinations = iter([*[(launch.names.address(n), 80) for n in names],
                             ("64:ff9b::7f00:1", 80), ("::7f00:1", 80), ("64:ff9b::cb00:710a", 80)])
        monkeypatch.setattr(launches, "original_destination", lambda sock: next(destinations))

        def connect():
            with socket.create_connection(("127.0.0.1", client.ports["tcp4"]), timeout=5) as c:
                c.recv(10)

        for _ in range(len(names) + 3):
            await asyncio.to_thread(connect)
        await until(lambda: len(served) == len(names) + 3)
        assert [t for t in served if isinstance(t, tuple)] == [
            ("x", ("allowed.test", 80)), ("x", ("64:ff9b::cb00:710a", 80))]  # decided as 203.0.113.10
        tunnels = [t for t in served if not isinstance(t, tuple)]
        assert [t.host for t in tunnels] == [*names[:-1], "64:ff9b::7f00:1", "::7f00:1"]
        notes = {t.host: t.decision.note for t in tunnels}
        for t in tunnels:
            assert t.app == "x" and t.listener == "launch:x:1" and t.decision.action.egress == "none"
            assert t.decision.note.startswith("fail-closed: ") and t.error.startswith("hush: ")
        assert "the loopback address 127.0.0.1" in notes["127.1"] and "is an address" in notes["203.0.113.11"]
        assert "names the loopback" in notes["ip6-localhost"]
        assert "stands for the loopback address 127.0.0.1" in notes["64:ff9b::7f00:1"]
        assert launch.refused == len(names) + 1
        client.conn.close()
        await server.stop()

    asyncio.run(main())


def test_stopping_takes_no_new_launch_and_no_new_connection(tmp_path):
    async def main():
        served = []
        server = await started(tmp_path, served)
        client = await asyncio.to_thread(Client, server.path)
        assert client.reply["ok"]
        server.stop_accepting()
        await asyncio.sleep(0.05)
        with pytest.raises(ConnectionRefusedError):  # the launch's listening socket is closed
            socket.create_connection(("127.0.0.1", client.ports["tcp4"]), timeout=5)
        with pytest.raises(ConnectionRefusedError):  # launch.sock takes no new launch
            await asyncio.to_thread(Client, server.path)
        assert list(server.launches) == [1]  # the running one is ended by stop(), as before
        await server.stop()
        client.conn.close()

    asyncio.run(main())
