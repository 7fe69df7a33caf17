"""daemon/frontdoor.py: its hooks, which decisions it carries out itself, its budget per turn of
the event loop, the answer it drops from mitmproxy's after a hand-over; and the contract with
mitmproxy's private API and the bytes mitmproxy itself answers (a stock mitmdump)."""

import asyncio
import contextlib
import dataclasses
import inspect
import logging
import socket
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import pytest

from hush.daemon import frontdoor, handshake
from hush.daemon.policy import build
from tests.tls import client_hello

# -- Hooks -----------------------------------------------------------------------------------------


class First:
    def __init__(self, calls):
        self.calls = calls

    def client_connected(self, client):
        self.calls.append(("first", "client_connected", client))

    def server_connect(self, data):
        self.calls.append(("first", "server_connect", data))
        raise RuntimeError("boom")


class Second:
    def __init__(self, calls):
        self.calls = calls

    def client_connected(self, client):
        self.calls.append(("second", "client_connected", client))

    def server_connect(self, data):
        self.calls.append(("second", "server_connect", data))

    def request(self, flow):  # not a hook the front door calls
        self.calls.append(("second", "request", flow))


class Identify:  # the one asynchronous hook method the front door may skip (SKIPPED)
    async def client_connected(self, client):
        raise AssertionError("not called")


class Slow:
    async def server_connect(self, data):
        raise AssertionError("not called")


def test_hooks_call_the_sync_methods_in_order():
    calls = []
    hooks = frontdoor.Hooks([First(calls), SimpleNamespace(client_connected=None), Second(calls), Identify()])
    assert hooks.problem is None
    assert hooks("client_connected", "c") is True
    assert calls == [("first", "client_connected", "c"), ("second", "client_connected", "c")]
    assert set(hooks.methods) == set(frontdoor.HOOKS)
    assert hooks.methods["server_disconnected"] == []


def test_a_hook_that_returns_something_to_await_fails_the_call_and_is_not_left_pending(caplog):
    """act.server_connect returns a check to await for a launch's name: should one ever reach the
    front door, which cannot await it, the egress check fails (refused), it does not pass unchecked."""
    checks = []

    class Deferring:
        def server_connect(self, data):
            async def check():
                checks.append("ran")

            checks.append(coroutine := check())
            return coroutine

    hooks = frontdoor.Hooks([Deferring()])
    with caplog.at_level(logging.ERROR, logger="hush.frontdoor"):
        assert hooks("server_connect", "d") is False
    assert checks[0].cr_frame is None and "ran" not in checks  # closed, never left un-awaited
    assert "asked to be awaited" in caplog.text


def test_a_hook_that_raises_is_logged_and_the_next_still_runs(caplog):
    calls = []
    hooks = frontdoor.Hooks([First(calls), Second(calls)])
    with caplog.at_level(logging.ERROR, logger="hush.frontdoor"):
        assert hooks("server_connect", "d") is False
    assert calls == [("first", "server_connect", "d"), ("second", "server_connect", "d")]
    assert "server_connect" in caplog.text and "boom" in caplog.text


def test_an_asynchronous_hook_method_not_skipped_turns_the_front_door_off():
    hooks = frontdoor.Hooks([Second([]), Slow()])
    assert hooks.problem == "Slow.server_connect is asynchronous"
    assert frontdoor.Hooks([Identify()]).problem is None  # Identify.client_connected: SKIPPED

    master = SimpleNamespace(addons=SimpleNamespace(chain=[Second([]), Slow()]))
    hush = SimpleNamespace(decide=SimpleNamespace(announce=None))
    front = frontdoor.FrontDoor(master, hush)
    assert front.enabled is False and hush.decide.announce is None  # decide keeps mitmproxy's manager
    assert front.status() == {"open": 0, "spliced": 0, "fast": 0, "handed": 0, "enabled": False}


@pytest.mark.parametrize("peer", ["127.0.0.1", "127.8.9.10", "::1"])
def test_mitmproxys_block_does_nothing_to_a_loopback_client_so_the_front_door_skips_it(peer):
    from mitmproxy import connection
    from mitmproxy.addons.block import Block
    from mitmproxy.proxy.mode_specs import ProxyMode
    from mitmproxy.test import taddons

    def client(address):
        return connection.Client(peername=(address, 5000), sockname=("127.0.0.1", 8101), timestamp_start=0,
                                 proxy_mode=ProxyMode.parse("regular"))

    block = Block()
    with taddons.context(block) as tctx:
        tctx.configure(block, block_global=True, block_private=True)
        local, private = client(peer), client("10.1.2.3")
        block.client_connected(local)
        block.client_connected(private)
    assert private.error is not None  # the options are in force: a non-loopback client is refused
    assert local.error is None and frontdoor._loopback((peer, 5000))
    assert frontdoor.Hooks([block]).methods["client_connected"] == []

    class Block:  # an addon of the same name is not mitmproxy's: called
        def client_connected(self, client):
            pass

    assert len(frontdoor.Hooks([Block()]).methods["client_connected"]) == 1


# -- which decisions -------------------------------------------------------------------------------

POLICY = textwrap.dedent("""\
    app: x
    listen: 8101
    default: allow
    rules:
      - {match: {host: pass.org}, action: passthrough}
      - {match: {host: block.org}, action: block}
      - {match: {host: reset.org}, action: block, status: reset}
      - {match: {host: tor.org}, action: tor}
      - {match: {host: learn.org}, action: learn}
      - {match: {host: strip.org}, action: strip}
      - {match: {host: delay.org}, action: delay, delay: 1}
      - {match: {host: debounce.org}, action: debounce}
      - {match: {host: ask.org}, action: ask}
      - {match: {host: path.org, path: /x}, action: block}
""")


@pytest.fixture(scope="module")
def policyset():
    return build([("p.yaml", POLICY)])


def test_eligible_allow_and_passthrough(policyset):
    for host, action in (("a.org", "allow"), ("pass.org", "passthrough")):
        decision = policyset.decide_connect("x", host, 443)
        assert decision.action.name == action
        assert frontdoor.eligible(decision) is True, action


def test_not_eligible_block_tor_and_undecided(policyset):
    for host, action in (("block.org", "block"), ("reset.org", "block"), ("tor.org", "tor")):
        decision = policyset.decide_connect("x", host, 443)
        assert decision.action.name == action
        assert frontdoor.eligible(decision) is False, host
    for host in ("strip.org", "delay.org", "debounce.org", "ask.org", "path.org"):
        assert policyset.decide_connect("x", host, 443) is None  # inspected: mitmproxy's path
    assert frontdoor.eligible(None) is False


@pytest.mark.parametrize("index", [5, 6, 7, 8], ids=["strip", "delay", "debounce", "ask"])
def test_not_eligible_actions_that_need_the_request(policyset, index):
    # as a decision would carry them (a request-level decision): never the front door's
    rule = policyset.policies["x"].rules[index]
    decision = dataclasses.replace(policyset.decide_connect("x", "a.org", 443), action=rule.action, rule=rule)
    assert frontdoor.eligible(decision) is False, rule.action


def test_not_eligible_learn(policyset):
    # issue 16's brief: the front door carries out allow and passthrough only
    decision = policyset.decide_connect("x", "learn.org", 443)
    assert decision.action.name == "learn"
    assert frontdoor.eligible(decision) is False


# -- the budget ------------------------------------------------------------------------------------


def front_door():
    master = SimpleNamespace(addons=SimpleNamespace(chain=[]), options=SimpleNamespace(tcp_timeout=600))
    return frontdoor.FrontDoor(master, SimpleNamespace(decide=SimpleNamespace(announce=None)))


def test_admit_defers_work_beyond_the_slice_to_later_turns_in_order():
    ran: list[tuple[int, int, float, float]] = []  # (item, turn, start, end)
    turn = [0]
    item_time = frontdoor.SLICE * 0.6

    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def tick():  # one call per turn of the loop
            turn[0] += 1
            if not done.done():
                loop.call_soon(tick)

        front = front_door()

        def work(i):
            def run():
                start = time.perf_counter()
                time.sleep(item_time)
                ran.append((i, turn[0], start, time.perf_counter()))
                if i == 11:
                    done.set_result(None)
            return run

        loop.call_soon(tick)
        await asyncio.sleep(0)
        first_turn = turn[0]
        for i in range(12):  # a burst, all in one turn
            front.admit(work(i))
        in_the_same_turn = [r for r in ran if r[1] == first_turn]
        assert ran and ran == in_the_same_turn and len(ran) < 12  # some at once, the rest later
        await asyncio.wait_for(done, 10)
        return front

    front = asyncio.run(main())
    assert [r[0] for r in ran] == list(range(12))  # arrival order
    turns = sorted({r[1] for r in ran})
    assert len(turns) >= 12 * item_time / (frontdoor.SLICE + item_time) - 1
    for t in turns:
        same = [r for r in ran if r[1] == t]
        for k in range(1, len(same)):  # a later item ran only while the turn had budget left
            assert sum(e - s for _, _, s, e in same[:k]) < frontdoor.SLICE + 0.002, (t, same)
    assert not front._pending


def test_admit_logs_a_failing_work_item_and_goes_on(caplog):
    order = []

    async def main():
        front = front_door()

        def bad():
            order.append("bad")
            raise ValueError("nope")

        front.admit(bad)
        front.admit(lambda: order.append("next"))
        await asyncio.sleep(0.01)

    with caplog.at_level(logging.ERROR, logger="hush.frontdoor"):
        asyncio.run(main())
    assert order == ["bad", "next"] and "nope" in caplog.text


def test_the_sweep_hands_a_client_that_waited_and_closes_an_idle_tunnel(monkeypatch):
    # a client that sends its CONNECT, gets the 200 and then nothing: after WAIT, mitmproxy's
    monkeypatch.setattr(frontdoor, "SWEEP", 3600)
    now = time.monotonic()
    events = []

    class Door:  # what the sweep looks at and calls
        def __init__(self, name, state, last):
            self.name, self.state, self.last = name, state, last

        def hand(self, why):
            events.append((self.name, "hand", why))

        def close(self):
            events.append((self.name, "close"))

    door = Door

    async def main():
        front = front_door()
        front.master.options.tcp_timeout = 30
        front.doors |= {
            door("waited", frontdoor.HELLO, now - frontdoor.WAIT - 1),
            door("fresh", frontdoor.HELLO, now),
            door("greeting", frontdoor.GREETING, now - frontdoor.WAIT - 1),
            door("relaying", frontdoor.RELAY, now - frontdoor.WAIT - 1),  # idle, not past tcp_timeout
            door("idle", frontdoor.SPLICED, now - 31),
            door("dialling", frontdoor.DIAL, now - 1000),
        }
        front._sweep()
        assert front._sweeper is not None
        swept = sorted(events)
        events.clear()
        front.close_all()
        assert front._sweeper is None
        return swept

    swept = asyncio.run(main())
    assert swept == [("greeting", "hand", "the client waited"), ("idle", "close"),
                     ("waited", "hand", "the client waited")]
    assert sorted(e[0] for e in events) == ["dialling", "fresh", "greeting", "idle", "relaying", "waited"]


# -- what mitmproxy answers after a hand-over ---------------------------------------------------


class Transport:
    def __init__(self):
        self.written = bytearray()
        self.aborted = False
        self.extra = "x"

    def write(self, data):
        assert not self.aborted
        self.written += data

    def abort(self):
        self.aborted = True

    def get_extra_info(self, name):
        return self.extra


OK = b"HTTP/1.1 200 Connection established\r\n\r\n"


class Replay:
    """Counts the answers _Answered reports (the real one replays the next message)."""

    def __init__(self):
        self.answered_count = 0

    def answered(self):
        self.answered_count += 1


def answered(t, *answers):
    replay = Replay()
    return frontdoor._Answered(t, list(answers), replay), replay


def test_answered_drops_exactly_the_answer_across_split_writes():
    t = Transport()
    a, replay = answered(t, OK)
    a.write(OK[:3])
    a.write(memoryview(OK[3:10]))
    assert t.written == b"" and replay.answered_count == 0
    a.write(OK[10:] + b"\x16\x03\x03")  # the end of the answer, then the site's first bytes
    assert t.written == b"\x16\x03\x03" and replay.answered_count == 1
    a.write(OK)  # after the answer everything goes through, even the same bytes
    a.writelines([b"a", b"b"])
    assert t.written == b"\x16\x03\x03" + OK + b"ab" and not t.aborted and replay.answered_count == 1
    assert a.get_extra_info("peername") == "x"  # the rest is the transport's


def test_answered_socks5_replies_one_by_one():
    t = Transport()
    a, replay = answered(t, handshake.SOCKS5_GREETING_REPLY, handshake.SOCKS5_GRANTED)
    a.write(handshake.SOCKS5_GREETING_REPLY)
    assert replay.answered_count == 1  # the request is replayed only now
    a.write(handshake.SOCKS5_GRANTED + b"data")
    assert t.written == b"data" and not t.aborted and replay.answered_count == 2


@pytest.mark.parametrize("writes", [
    [b"HTTP/1.1 403 Forbidden\r\n\r\n"],
    [OK[:9], b"403 Forbidden\r\n"],
    [OK[:-1] + b"X"],
    [b"HTTP/1.0 200 Connection established\r\n\r\n"],
], ids=["403", "split-then-403", "last-byte", "version"])
def test_answered_a_different_answer_aborts(writes):
    t = Transport()
    a, replay = answered(t, OK)
    for data in writes:
        a.write(data)
    assert t.aborted and t.written == b"" and replay.answered_count == 0


def test_answered_socks5_refusal_after_a_grant_aborts():
    t = Transport()
    a, replay = answered(t, handshake.SOCKS5_GREETING_REPLY, handshake.SOCKS5_GRANTED)
    a.write(handshake.SOCKS5_GREETING_REPLY)
    a.write(b"\x05\x02\x00\x01\x00\x00\x00\x00\x00\x00")
    assert t.aborted and t.written == b"" and replay.answered_count == 1


class Paused(Transport):
    def __init__(self):
        super().__init__()
        self.paused = False

    def pause_reading(self):
        self.paused = True

    def resume_reading(self):
        self.paused = False

    def is_closing(self):
        return False


def test_replay_feeds_each_message_after_its_answer_and_holds_what_arrives_meanwhile():
    """mitmproxy reads the bytes after a CONNECT as tunnel bytes only if they come after its own
    200 (a leading CRLF fed with the head is skipped as part of it): the replay keeps that order,
    and what the client sends meanwhile (and its EOF) comes after everything replayed."""

    async def main():
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop)
        t = Paused()
        replay = frontdoor._Replay(reader, loop, t, [b"REQUEST"], b"\r\nrest", eof=False)
        replay.connection_made(t)
        reader.feed_data(b"GREETING")
        replay.data_received(b"+late")  # the client's next bytes, while mitmproxy has not answered
        replay.eof_received()
        assert await reader.read(100) == b"GREETING"
        replay.answered()
        assert await reader.read(100) == b"REQUEST"
        replay.answered()
        assert await reader.read(100) == b"\r\nrest+late"
        assert await asyncio.wait_for(reader.read(100), 1) == b""  # then the EOF

    asyncio.run(main())


# -- the contract with mitmproxy -------------------------------------------------------------------


def test_mitmproxys_private_api_is_what_the_front_door_uses():
    from mitmproxy.proxy import mode_servers

    for cls in (mode_servers.RegularInstance, mode_servers.Socks5Instance):
        listen = frontdoor._ORIGINAL.get(cls, cls.listen)
        assert inspect.iscoroutinefunction(listen), cls
        assert list(inspect.signature(listen).parameters)[:3] == ["self", "host", "port"], cls
        assert inspect.iscoroutinefunction(frontdoor._listen)
    handle = mode_servers.ServerInstance.handle_stream
    assert inspect.iscoroutinefunction(handle)
    assert list(inspect.signature(handle).parameters)[:3] == ["self", "reader", "writer"]
    assert callable(asyncio.StreamReaderProtocol) and callable(asyncio.StreamWriter)
    assert callable(asyncio.Transport.set_protocol)
    assert "limit" in inspect.signature(asyncio.StreamReader).parameters
    assert inspect.signature(asyncio.start_server).parameters["limit"].default == frontdoor.READ_LIMIT


def test_install_and_uninstall_swap_only_the_listen_methods():
    from mitmproxy.proxy import mode_servers

    before = {cls: cls.listen for cls in (mode_servers.RegularInstance, mode_servers.Socks5Instance)}
    others = {cls: cls.listen for cls in (mode_servers.WireGuardServerInstance, mode_servers.TransparentInstance)
              if hasattr(cls, "listen")}
    frontdoor.install(front_door())
    try:
        for cls in before:
            assert cls.listen is frontdoor._listen
        for cls, method in others.items():
            assert cls.listen is method
    finally:
        frontdoor.uninstall()
    for cls, method in before.items():
        assert cls.listen is method
    assert frontdoor._FRONT is None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read_for(sock: socket.socket, n: int, timeout: float = 10) -> bytes:
    """Read until n bytes, the close, or ``timeout`` seconds of silence: what the proxy answered."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(TimeoutError):
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                break
            data += chunk
    return data


@pytest.fixture(scope="module")
def mitmdump():
    """A stock mitmdump of the installed mitmproxy: regular and socks5 on loopback, lazy."""
    regular, socks = _free_port(), _free_port()
    exe = [sys.executable, "-c", "import sys; from mitmproxy.tools.main import mitmdump; sys.exit(mitmdump())"]
    proc = subprocess.Popen([*exe, "-q", "--set", "connection_strategy=lazy", "--mode",
                             f"regular@127.0.0.1:{regular}", "--mode", f"socks5@127.0.0.1:{socks}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                for port in (regular, socks):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "mitmdump did not start"
                time.sleep(0.05)
        yield regular, socks
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()


@pytest.mark.integration
@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_mitmproxy_grants_a_connect_with_the_front_doors_reply(mitmdump, version):
    regular, _ = mitmdump
    data = f"CONNECT 127.0.0.1:9 {version}\r\nHost: 127.0.0.1:9\r\n\r\n".encode()
    expected = handshake.parse_connect(data, 100, 8192).reply
    with socket.create_connection(("127.0.0.1", regular), timeout=10) as s:
        s.sendall(data)
        assert _read_for(s, len(expected) + 1, timeout=0.3) == expected  # and nothing more


@pytest.mark.integration
@pytest.mark.parametrize("request_bytes", [
    b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x09",
    b"\x05\x01\x00\x03\x09localhost\x00\x09",
    b"\x05\x01\x00\x04" + bytes(15) + b"\x01\x00\x09",
], ids=["ipv4", "domain", "ipv6"])
def test_mitmproxy_answers_socks5_with_the_front_doors_replies(mitmdump, request_bytes):
    _, socks = mitmdump
    with socket.create_connection(("127.0.0.1", socks), timeout=10) as s:
        s.sendall(b"\x05\x01\x00")
        assert _read_for(s, 2) == handshake.SOCKS5_GREETING_REPLY
        length, target = handshake.socks5_request(request_bytes)
        assert length == len(request_bytes) and target.reply == handshake.SOCKS5_GRANTED
        s.sendall(request_bytes)
        got = _read_for(s, len(handshake.SOCKS5_GRANTED) + 1, timeout=0.3)
        assert got == handshake.SOCKS5_GRANTED



# -- dialling -------------------------------------------------------------------------------------


def test_an_address_is_connected_at_once_on_loopback_and_gets_asyncios_transport():
    """The front door dials an IP address itself: on loopback the kernel completes the connection
    within connect(), and the transport is made in the same turn by asyncio's private
    ``_make_socket_transport`` (pinned here: if it goes, the front door waits a turn instead)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    async def main():
        loop = asyncio.get_running_loop()
        assert callable(getattr(loop, "_make_socket_transport", None))
        sock = frontdoor._address_socket("127.0.0.1", None)
        assert sock is not None and frontdoor._address_socket("example.com", None) is None
        assert frontdoor._connect_now(sock, ("127.0.0.1", port)) is True
        received = []

        class Proto(asyncio.Protocol):
            def data_received(self, data):
                received.append(data)

        transport = frontdoor._transport(sock, Proto())
        assert isinstance(transport, asyncio.Transport)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        peer, _ = await asyncio.to_thread(server.accept)
        transport.write(b"hello")  # before connection_made has run: a transport takes it
        assert await asyncio.to_thread(peer.recv, 5) == b"hello"
        peer.sendall(b"back")
        for _ in range(100):
            if received:
                break
            await asyncio.sleep(0.01)
        assert received == [b"back"]
        transport.close()
        peer.close()

    try:
        asyncio.run(main())
    finally:
        server.close()


def test_a_refused_connection_is_an_error_at_once_and_one_under_way_is_awaited():
    closed = socket.create_server(("127.0.0.1", 0))
    dead = closed.getsockname()[1]
    closed.close()
    sock = frontdoor._address_socket("127.0.0.1", None)
    assert sock is not None
    with pytest.raises(OSError):
        frontdoor._connect_now(sock, ("127.0.0.1", dead))
    sock.close()
    server = socket.create_server(("127.0.0.1", 0))

    async def main():
        s = frontdoor._address_socket("127.0.0.1", None)
        assert s is not None
        s.connect_ex(server.getsockname())
        await asyncio.wait_for(frontdoor._until_connected(asyncio.get_running_loop(), s), 5)
        s.close()

    try:
        asyncio.run(main())
    finally:
        server.close()


def test_a_site_slower_than_what_was_read_ahead_keeps_the_app_paused(monkeypatch):
    """Found in review: the dial wrote what the app sent meanwhile to the site, which paused the
    app's reading (the site's buffer over its mark), and then resumed it: what the app kept sending
    piled up in hush's memory.  Reading resumes before that write now, so the pause stands."""
    from types import SimpleNamespace

    from mitmproxy import connection

    from hush.addons import tunnel as tunnels
    from hush.addons.notes import conn_notes
    from hush.addons.tunnel import Tally

    monkeypatch.setattr(tunnels, "SPLICE", False)

    async def main():
        loop = asyncio.get_running_loop()
        site = socket.socket()
        site.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        site.bind(("127.0.0.1", 0))
        site.listen(8)  # accepts (in the kernel), never reads
        port = site.getsockname()[1]
        stub = SimpleNamespace(hooks=lambda *a: True, doors=set(), _tasks=set(), counts={})
        instance = SimpleNamespace(mode=SimpleNamespace(type_name="regular", full_spec="regular@1"))
        door = frontdoor.Door(stub, instance)
        app, ours = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, sock=ours)
        transport.set_protocol(door)
        door.transport = transport
        client = connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2), timestamp_start=0)
        door.client, door.tally = client, Tally()
        door.tunnel = SimpleNamespace(outcome=None, error=None)
        door.server = connection.Server(address=("127.0.0.1", port))
        door.data = SimpleNamespace(server=door.server, client=client)
        conn_notes(client).permits.add(("127.0.0.1", port))
        door.state = frontdoor.DIAL
        door.buf = bytearray(client_hello() + b"x" * 400_000)  # read ahead while the dial waited its turn
        door._pause()
        sock = frontdoor._address_socket("127.0.0.1", None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)  # as slow as a remote site's path
        assert frontdoor._connect_now(sock, ("127.0.0.1", port))
        up = frontdoor._transport(sock, frontdoor.Upstream(door))
        door._connected(up)
        assert not transport.is_reading()  # paused by the site's backlog, and it stays paused
        app.setblocking(False)
        for _ in range(200):  # the app keeps sending
            with contextlib.suppress(BlockingIOError):
                app.send(b"y" * 65536)
            await asyncio.sleep(0.002)
        assert up.get_write_buffer_size() < 1_000_000
        assert not transport.is_reading()
        up.abort()
        transport.abort()
        app.close()
        site.close()

    asyncio.run(main())


def test_a_second_hello_naming_another_host_after_a_retry_never_reaches_the_site(monkeypatch):
    """The Door relays once the first ClientHello's name was checked; the site's HelloRetryRequest
    would have the client's second hello read, naming any host: what follows the first hello is
    held until the site's first record is in, and after an HRR the second must name the same host.
    The splice relay does not start meanwhile."""
    from mitmproxy import connection

    from hush.addons import tunnel as tunnels
    from hush.addons.notes import conn_notes
    from hush.addons.tunnel import Tally
    from tests.unit.daemon.test_handshake import second_hello, server_answer

    monkeypatch.setattr(tunnels, "SPLICE_AFTER", 0)  # it would splice at once, were it not watching
    hello = client_hello(None)

    async def run(after: bytes) -> tuple[bytes, object, object]:
        loop = asyncio.get_running_loop()
        site = socket.create_server(("127.0.0.1", 0))
        port = site.getsockname()[1]
        stub = SimpleNamespace(hooks=lambda *a: True, doors=set(), _tasks=set(), counts={})
        instance = SimpleNamespace(mode=SimpleNamespace(type_name="regular", full_spec="regular@1"))
        door = frontdoor.Door(stub, instance)
        app, ours = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, sock=ours)
        transport.set_protocol(door)
        door.transport = transport
        client = connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2), timestamp_start=0)
        door.client, door.tally = client, Tally()
        door.tunnel = SimpleNamespace(outcome=None, error=None)
        door.server = connection.Server(address=("127.0.0.1", port))
        door.data = SimpleNamespace(server=door.server, client=client)
        conn_notes(client).permits.add(("127.0.0.1", port))
        door.state = frontdoor.DIAL
        door.buf = bytearray(hello + after)  # the hello, and what came while the dial waited its turn
        sock = frontdoor._address_socket("127.0.0.1", None)
        assert frontdoor._connect_now(sock, ("127.0.0.1", port))
        door._connected(frontdoor._transport(sock, frontdoor.Upstream(door)))
        door._splice()
        assert door.state == frontdoor.RELAY and door.watch is not None  # watching: no splice
        far, _ = await loop.sock_accept(site)
        got = b""
        while len(got) < len(hello):
            got += await loop.sock_recv(far, 65536)
        await loop.sock_sendall(far, server_answer(hello))  # its HRR
        await asyncio.sleep(0.1)
        far.setblocking(False)
        with contextlib.suppress(BlockingIOError, ConnectionResetError):
            got += far.recv(65536)
        state, error = door.state, door.tunnel.error
        door.close()
        for s in (far, site, app):
            s.close()
        return got, state, error

    from hush.daemon.handshake import CCS

    got, state, error = asyncio.run(run(CCS + second_hello("blocked.org")))
    assert got == hello and state == frontdoor.DONE and error.startswith("refused: its second TLS ClientHello")
    again = CCS + second_hello(None)
    got, state, error = asyncio.run(run(again))  # the same (no) name: it goes on, then may be spliced
    assert got == hello + again and state == frontdoor.SPLICED and error is None
