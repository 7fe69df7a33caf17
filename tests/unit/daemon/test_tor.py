"""The tor manager, fed canned control-port messages (stem's ControlMessage.from_str)."""

import asyncio

import pytest
from stem.response import ControlMessage

from hush.daemon.tor import Bootstrap, TorConfig, TorManager, parse_bootstrap, torrc_dict

G, M, X = "A" * 40, "B" * 40, "C" * 40  # relay fingerprints


def event(text: str):
    return ControlMessage.from_str(text + "\r\n", "EVENT")


@pytest.mark.parametrize("text, expected", [
    ('NOTICE BOOTSTRAP PROGRESS=50 TAG=loading_descriptors SUMMARY="Loading relay descriptors"',
     Bootstrap(50, "loading_descriptors", "Loading relay descriptors")),
    ('NOTICE BOOTSTRAP PROGRESS=100 TAG=done SUMMARY="Done"', Bootstrap(100, "done", "Done")),
    ("", Bootstrap(0, "", "")),
    ("NOTICE BOOTSTRAP PROGRESS=x", Bootstrap(0, "", "")),
])
def test_parse_bootstrap(text, expected):
    assert parse_bootstrap(text) == expected


def test_torrc_dict_repeats_become_lists():
    assert torrc_dict(["# c", "", "UseBridges 1", "Bridge a", "Bridge b", "DirAuthority x y"]) == {
        "UseBridges": "1", "Bridge": ["a", "b"], "DirAuthority": "x y"}


class FakeController:
    def close(self):
        pass


def run(coro):
    return asyncio.run(coro)


def manager_on_loop():
    m = TorManager(TorConfig(), "/nonexistent")
    m._loop = asyncio.get_running_loop()
    m._controller = FakeController()
    m.tunnel_address = ("127.0.0.1", 9080)
    m.state = "bootstrapping"
    return m


def test_bootstrap_events_make_it_ready_and_are_logged(caplog):
    async def go():
        m = manager_on_loop()
        m._on_status_client(event('650 STATUS_CLIENT NOTICE BOOTSTRAP PROGRESS=85 TAG=ap_conn_done '
                                  'SUMMARY="Connected to a relay to build circuits"'))
        await asyncio.sleep(0)
        assert (m.bootstrap.progress, m.ready) == (85, False)
        m._on_status_client(event('650 STATUS_CLIENT NOTICE BOOTSTRAP PROGRESS=100 TAG=done SUMMARY="Done"'))
        await asyncio.sleep(0)
        assert not m.ready  # no circuit yet
        m._on_status_client(event("650 STATUS_CLIENT NOTICE CIRCUIT_ESTABLISHED"))
        await asyncio.sleep(0)
        assert m.ready and m.status()["state"] == "ready"
        m._on_status_client(event("650 STATUS_CLIENT NOTICE CIRCUIT_NOT_ESTABLISHED REASON=CLOCK_JUMPED"))
        await asyncio.sleep(0)
        assert not m.ready and m.state == "bootstrapping"

    caplog.set_level("INFO", "hush.tor")
    run(go())
    assert "tor bootstrapped 85% (ap_conn_done): Connected to a relay to build circuits" in caplog.text
    assert "tor ready: bootstrapped, circuits established" in caplog.text


def test_stream_events_name_the_circuit_and_exit():
    seen = []

    async def go():
        m = manager_on_loop()
        m.stream_callbacks.append(lambda port, circ, circuit: seen.append((port, circ, circuit.exit)))
        m._on_circ(event(f"650 CIRC 3 BUILT ${G}~guard,${M}~middle,${X}~exit0 PURPOSE=GENERAL"))
        m._on_stream(event("650 STREAM 14 NEW 0 origin.hushtest:443 SOURCE_ADDR=127.0.0.1:38580 PURPOSE=USER"))
        m._on_stream(event("650 STREAM 14 SENTCONNECT 3 origin.hushtest:443"))
        m._on_stream(event("650 STREAM 14 SUCCEEDED 3 origin.hushtest:443"))
        m._on_stream(event("650 STREAM 15 SUCCEEDED 3 other:443"))  # not ours: no SOURCE_ADDR seen
        await asyncio.sleep(0)

    run(go())
    assert seen == [(38580, "3", (X, "exit0"))]


def test_closed_circuits_are_forgotten():
    async def go():
        m = manager_on_loop()
        m._on_circ(event(f"650 CIRC 3 BUILT ${G}~a,${X}~exit0 PURPOSE=GENERAL"))
        m._on_circ(event(f"650 CIRC 3 CLOSED ${G}~a,${X}~exit0 REASON=FINISHED"))
        await asyncio.sleep(0)
        return m.circuit("3")

    assert run(go()) is None


def test_losing_the_control_connection_marks_it_down():
    from stem.control import State

    async def go():
        m = manager_on_loop()
        m.state = "ready"
        m._lost = asyncio.Event()
        m._on_control_state(None, State.CLOSED, 0)
        await asyncio.sleep(0)
        return m

    m = run(go())
    assert m.state == "down" and not m.ready and m._lost.is_set()
    assert m.reason == "the control connection to tor closed"


def test_not_ready_without_a_controller_or_with_a_dead_process():
    m = TorManager(TorConfig(), "/x")
    assert not m.ready and m.status()["state"] == "off"

    class Dead:
        def poll(self):
            return 1

    m.state, m._controller, m.tunnel_address, m._process = "ready", FakeController(), ("127.0.0.1", 1), Dead()
    assert not m.ready


class RecordingController:
    """Stands in for stem's Controller class: records how it was reached and authenticated."""

    def __init__(self, how, where):
        self.how, self.where, self.password = how, where, "not authenticated"

    @classmethod
    def from_port(cls, address, port):
        return cls("port", (address, port))

    @classmethod
    def from_socket_file(cls, path):
        return cls("socket", path)

    def authenticate(self, password=None):
        self.password = password


@pytest.mark.parametrize("target, password, how, where", [
    ("127.0.0.1:9051", None, "port", ("127.0.0.1", 9051)),
    (":9051", "secret", "port", ("127.0.0.1", 9051)),  # no host: the loopback address
    ("9051", None, "port", ("127.0.0.1", 9051)),
    ("/run/tor/control", "secret", "socket", "/run/tor/control"),
])
def test_open_controller_reaches_and_authenticates(monkeypatch, target, password, how, where):
    import stem.control

    import hush.daemon.tor
    from hush.daemon.tor import open_controller

    probed = []
    monkeypatch.setattr(hush.daemon.tor, "probe", probed.append)  # asked first, with a deadline
    monkeypatch.setattr(stem.control, "Controller", RecordingController)
    controller = open_controller(target, password)
    assert (controller.how, controller.where, controller.password) == (how, where, password)
    assert probed == [target]


def test_the_control_port_file_is_read_as_the_daemon_writes_it(tmp_path):
    from hush.daemon.tor import control_port_file, read_control_port

    port_file = control_port_file(tmp_path)
    assert port_file == tmp_path / "tor" / "control-port"
    port_file.parent.mkdir()
    port_file.write_text("PORT=127.0.0.1:41234\n")
    assert read_control_port(port_file) == "127.0.0.1:41234"
    assert TorConfig(mode="attach").attach_to == "127.0.0.1:9051"
    assert TorConfig(mode="attach", control="/run/tor/control").attach_to == "/run/tor/control"


def test_once_stopping_tor_going_away_is_no_news(caplog):
    """Ctrl-C, SIGTERM, `hush stop`: tor's control connection closing, a late bootstrap
    event or a late launch report are expected, and logged as nothing."""
    from stem.control import State

    async def go():
        m = manager_on_loop()
        m._lost = asyncio.Event()
        m.stopping()
        m._on_control_state(None, State.CLOSED, 0)
        m._on_status_client(event('650 STATUS_CLIENT NOTICE BOOTSTRAP PROGRESS=14 TAG=handshake SUMMARY="x"'))
        m._set("bootstrapping", "tor 4242 started")  # what a launch finishing in its thread reports
        await asyncio.sleep(0)
        return m

    caplog.set_level("INFO", "hush.tor")
    m = run(go())
    assert m.state == "bootstrapping" and m.bootstrap.progress == 0 and m._lost.is_set()
    assert caplog.records == []


def test_stop_says_tor_stopped_once_and_only_if_it_was_started(caplog):
    async def go():
        never = TorManager(TorConfig(), "/nonexistent")
        await never.stop()
        m = manager_on_loop()
        await m.stop()
        return never, m

    caplog.set_level("INFO", "hush.tor")
    never, m = run(go())
    assert (never.state, m.state, m.reason) == ("off", "off", "stopped")
    assert [r.getMessage() for r in caplog.records] == ["tor stopped"]


def test_stop_wakes_the_restart_backoff_and_restarts_nothing(monkeypatch):
    """tor failed and waits to be launched again: stopping ends the wait at once."""
    attempts = []

    def failing_connect(self):
        attempts.append(1)
        raise OSError("no tor binary")

    monkeypatch.setattr(TorManager, "_connect", failing_connect)

    async def go():
        m = TorManager(TorConfig(), "/nonexistent")
        await m.start()
        while m.restarts == 0:  # the first attempt failed; it now waits 1 s to retry
            await asyncio.sleep(0.01)
        await asyncio.wait_for(m.stop(), 0.5)  # well within the backoff
        return m

    m = run(go())
    assert attempts == [1] and m.state == "off" and m._task is None


def test_probe_refuses_what_does_not_answer_like_tor(tmp_path):
    """stem reads without a timeout: the probe stands between it and a silent peer."""
    import socket
    import threading

    import stem

    from hush.daemon.tor import probe

    def serve(reply: bytes | None):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        held = []

        def run():
            conn, _ = listener.accept()
            held.append(conn)  # kept open: a silent peer does not hang up either
            conn.recv(64)
            if reply is not None:
                conn.sendall(reply)

        threading.Thread(target=run, daemon=True).start()
        return f"127.0.0.1:{listener.getsockname()[1]}", (listener, held)

    silent, keep1 = serve(None)
    with pytest.raises(stem.SocketError, match="did not answer"):
        probe(silent, timeout=0.5)
    web, keep2 = serve(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    with pytest.raises(stem.SocketError, match="does not answer like tor"):
        probe(web, timeout=5)
    tor, keep3 = serve(b'250-PROTOCOLINFO 1\r\n250-AUTH METHODS=NULL\r\n250 OK\r\n')
    probe(tor, timeout=5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(stem.SocketError, match="cannot reach"):
        probe(dead, timeout=5)
    for listener, _ in (keep1, keep2, keep3):
        listener.close()
