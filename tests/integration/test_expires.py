"""expires: on a rule — in force until its time, then dropped by the running
daemon (no reload, no restart), proven at a counting origin."""

import time

import pytest

from hush.daemon.policy.expiry import format_time
from tests.integration.harness import curl, free_port, wait_for

pytestmark = pytest.mark.integration


def test_a_rule_is_dropped_at_its_expiry_without_a_restart(hush, origin):
    port = free_port()
    until = time.time() + 8  # the daemon's start (a few seconds on a busy machine) included
    h = hush({"exp": f"""\
        app: exp
        listen: {port}
        default: block
        rules:
          - name: expired long ago
            match: {{host: 127.0.0.1, path: /never}}
            action: block
            expires: 2000-01-01T00:00:00Z
          - name: for a few seconds
            match: {{host: 127.0.0.1}}
            action: allow
            expires: {format_time(until)}
        """})
    version = h.status()["policies"]["version"]

    def fetch(path="/a"):
        return curl("-x", f"http://127.0.0.1:{port}", origin.url(path), "-o", "/dev/null", "-w", "%{http_code}").stdout

    assert fetch("/never") == b"200"  # the expired block was dropped at load: the live allow decided
    assert len(origin.accepts) == 1
    assert time.time() < until - 0.5, "the daemon took too long to start for this test"
    wait_for(lambda: time.time() > round(until) + 0.2, 10)
    assert fetch() == b"403"  # dropped at its time: the default decides now
    assert len(origin.accepts) == 1  # nothing more reached the origin
    status = h.status()
    assert status["policies"]["version"].startswith(version + "+") and status["reloads"] == 0
    assert h.proc.poll() is None  # the same daemon, not restarted
    h.stop()
    assert "policy set" in h.log and "in force" in h.log


def test_a_tunnel_the_rule_let_through_is_closed_at_its_expiry(hush, origin):
    import socket

    port = free_port()
    until = time.time() + 8  # the daemon's start (a few seconds on a busy machine) included
    h = hush({"exp": f"""\
        app: exp
        listen: {port}
        default: block
        rules:
          - match: {{host: 127.0.0.1}}
            action: allow
            expires: {format_time(until)}
        """})
    s = socket.create_connection(("127.0.0.1", port), timeout=15)
    s.sendall(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n\r\n".encode())
    assert s.recv(1024).startswith(b"HTTP/1.1 200")
    s.sendall(f"GET /keep/1 HTTP/1.1\r\nHost: 127.0.0.1:{origin.port}\r\n\r\n".encode())
    got = b""
    while b"/keep/1\n" not in got:
        chunk = s.recv(4096)
        assert chunk, got
        got += chunk
    assert time.time() < until - 1, "the daemon took too long to start for this test"
    s.settimeout(15)
    try:
        closed = s.recv(1) == b""  # hush closes the tunnel once the rule that let it through is gone
    except ConnectionResetError:
        closed = True
    assert closed and time.time() >= round(until) - 0.5
    s.close()
    assert len(origin.accepts) == 1 and [r.path for r in origin.requests] == ["/keep/1"]
    h.stop()
    [row] = [r for r in h.audit() if r["app"] == "exp" and r["level"] == "connect"]
    assert row["decision"] == "revoked" and "block by default" in row["error"]
