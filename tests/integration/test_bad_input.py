"""Bad input gets a clear error and loses nothing."""

import socket
import time

import pytest

from .harness import curl, free_port

pytestmark = pytest.mark.integration


def test_invalid_policy_refuses_to_start_and_prints_every_error(hush):
    h = hush({
        "a": "app: a\nlisten: 8101\ndefault: drop\nrules:\n  - {match: {method: get}, action: block}\n",
        "b": "app: b\nlisten: 0.0.0.0:8102\ndefault: allow\ncolour: red\n",
    }, ready=False)
    assert h.wait_exit() == 3
    log = h.log
    a, b = h.policies / "a.yaml", h.policies / "b.yaml"
    assert "have 4 errors" in log
    actions = "allow, ask, block, debounce, delay, learn, passthrough, strip, tor"
    assert f"{a}:3:10: unknown action 'drop' (expected one of: {actions})" in log
    assert f"{a}:5:22: method 'get' must be an upper-case HTTP method such as GET" in log
    assert f"{b}:2:9: listen host 0.0.0.0 is not a loopback address: hush listens on loopback only" in log
    assert f"{b}:4:1: unknown key 'colour'" in log
    assert not (h.state / "audit.db").exists()


def test_port_in_use_is_a_clear_error(hush):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        h = hush({"a": f"app: a\nlisten: {port}\ndefault: allow\n"}, ready=False)
        assert h.wait_exit() == 4
    assert f"cannot listen for app a on 127.0.0.1:{port}" in h.log
    assert "is using this port" in h.log


@pytest.mark.parametrize("garbage", [
    b"\x16\x03\x01\x00\x05hello\r\n\r\n",  # not HTTP at all
    b"GET http://127.0.0.1/ HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"CONNECT :99999 HTTP/1.1\r\n\r\n",
    b"GET http://127.0.0.1/ HTTP/1.1\r\n" + b"X-Big: " + b"a" * 200_000 + b"\r\n\r\n",
])
@pytest.mark.parametrize("mode", ["http", "socks5"])
def test_malformed_requests_do_not_kill_the_daemon(hush, origin, garbage, mode):
    port = free_port()
    h = hush({"a": f"app: a\nlisten: {{port: {port}, mode: {mode}}}\ndefault: allow\n"})
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(garbage)
            s.recv(65536)
        except OSError:
            pass
    proxy = ["-x", f"http://127.0.0.1:{port}"] if mode == "http" else ["--socks5-hostname", f"127.0.0.1:{port}"]
    res = curl(*proxy, origin.url("/after"))
    assert res.returncode == 0, res.stderr
    assert [r.path for r in origin.requests] == ["/after"]
    assert h.proc.poll() is None and h.stop() == 0  # it served on, and stops cleanly


def test_slow_clients_do_not_hold_up_others(hush, origin):
    """Slowloris: many connections dribbling a request one byte at a time."""
    import threading

    port = free_port()
    h = hush({"a": f"app: a\nlisten: {port}\ndefault: allow\n"})
    stop = threading.Event()
    dribbling = threading.Semaphore(0)  # released once per connection that has sent its first byte
    request = f"GET {origin.url('/slow')} HTTP/1.1\r\nHost: x\r\n".encode() + b"X-Pad: " + b"a" * 1000

    def dribble():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                for i, byte in enumerate(request):
                    if stop.is_set():
                        return
                    s.send(bytes([byte]))
                    if i == 0:
                        dribbling.release()
                    stop.wait(0.05)  # one byte every 50 ms: the attack's pace
        except OSError:
            pass

    threads = [threading.Thread(target=dribble, daemon=True) for _ in range(100)]
    for t in threads:
        t.start()
    for _ in threads:  # every slow client is connected and dribbling
        assert dribbling.acquire(timeout=30), "a slow client could not connect"
    start = time.monotonic()
    res = curl("-x", f"http://127.0.0.1:{port}", origin.url("/fast"))
    elapsed = time.monotonic() - start
    stop.set()
    assert res.returncode == 0, res.stderr
    assert elapsed < 2.0, elapsed  # not queued behind the slow ones
    assert [r.path for r in origin.requests] == ["/fast"]
    assert h.proc.poll() is None
    h.stop()
