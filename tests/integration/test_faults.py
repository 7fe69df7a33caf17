"""Fault injection: the daemon killed, the audit disk full, a policy half-written."""

import datetime
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time

import pytest

from tests.tls import client_hello

from .harness import curl, free_port, wait_for
from .wire import EchoOrigin

pytestmark = pytest.mark.integration

POLICY = "app: a\nlisten: {port}\ndefault: allow\nrules:\n  - {{match: {{path: '/b*'}}, action: block}}\n"


def burst(port, origin, n, prefix="/b"):
    """n blocked requests in parallel through hush, as a background curl."""
    args = [a for i in range(n) for a in ("-o", "/dev/null", origin.url(f"{prefix}/{i}"))]
    return subprocess.Popen(["curl", "-sS", "--parallel", "--parallel-max", "16", "--max-time", "20",
                             "-w", "%{http_code}\n", "-x", f"http://127.0.0.1:{port}", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def count(state):
    conn = sqlite3.connect(state / "audit.db")
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    n = conn.execute("SELECT COUNT(*) FROM records").fetchone()[0]
    conn.close()
    return n


def test_sigterm_under_load_loses_no_record(hush, origin):
    port = free_port()
    h = hush({"a": POLICY.format(port=port)})
    load = burst(port, origin, 400)
    wait_for(lambda: h.status()["decisions"].get("block"), message="the load to reach hush")
    h.stop(signal.SIGTERM)  # while requests are in flight
    out, _ = load.communicate(timeout=30)
    answered = [c for c in out.decode().split() if c == "403"]
    assert answered, "the load did not start"
    assert count(h.state) >= len(answered)  # every answered flow was written
    assert origin.accepts == []


def test_sigkill_under_load_then_restart(hush, origin):
    port = free_port()
    h = hush({"a": POLICY.format(port=port)})
    load = burst(port, origin, 2000)
    # the writer commits what is queued in one transaction per batch: kill hush once it
    # has committed some of the load, while the rest is in flight (2000 requests: it is)
    committed = wait_for(lambda: h.status()["audit"]["written"], message="the first audit batch")
    h.proc.send_signal(signal.SIGKILL)
    out, _ = load.communicate(timeout=30)
    h.wait_exit()
    answered = len([c for c in out.decode().split() if c == "403"])
    written = count(h.state)  # the WAL database opens clean
    # every batch committed before the kill is there; lost are only records still queued or
    # in the open transaction (answered after the last commit hush reported), and none twice
    assert answered, "the load did not start"
    assert committed <= written <= 2000, (committed, written, answered)
    again = hush({"a": POLICY.format(port=port)}, state=h.state)
    assert curl("-x", f"http://127.0.0.1:{port}", origin.url("/b/after")).returncode == 0
    again.stop()
    assert count(h.state) == written + 1


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small tmpfs (CI runs as root)")
def test_audit_disk_full_enforcement_goes_on_and_catches_up(hush, origin, tmp_path):
    mount = tmp_path / "statefs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        port = free_port()
        h = hush({"a": POLICY.format(port=port)}, state=mount)
        assert curl("-x", f"http://127.0.0.1:{port}", origin.url("/ok")).returncode == 0
        wait_for(lambda: h.status()["audit"]["written"] == 1, message="its record written")
        filler = mount / "filler"
        with open(filler, "wb") as f:  # the disk is now full
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError:
                pass
        codes = [curl("-o", "/dev/null", "-w", "%{http_code}", "-x", f"http://127.0.0.1:{port}",
                      origin.url(f"/b/{i}")).stdout for i in range(60)]
        assert codes == [b"403"] * 60  # enforcement goes on
        assert [r.path for r in origin.requests] == ["/ok"]
        audit = wait_for(lambda: (a := h.status()["audit"])["degraded"] and a, message="the audit degraded")
        assert "full" in audit["last_error"] and audit["pending"] > 0
        assert "audit: cannot write" in h.log
        filler.unlink()  # space returns
        audit = wait_for(lambda: (a := h.status()["audit"])["pending"] == 0 and not a["degraded"] and a,
                         message="the audit caught up")
        assert not audit["degraded"] and audit["written"] == 61
        assert "audit: writing again" in h.log
        h.stop()
        assert count(mount) == 61
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_policy_truncated_mid_write_keeps_the_old_set(hush, origin):
    port = free_port()
    h = hush({"a": POLICY.format(port=port)})
    policy = h.policies / "a.yaml"
    full = POLICY.format(port=port).replace("/b*", "/x*")
    with open(policy, "w") as f:  # not atomic: the watcher may see a half-written file
        cut = full.index("action")  # inside a flow mapping: `{match: {path: '/x*'}, `
        f.write(full[:cut])
        f.flush()
        wait_for(lambda: "refused, keeping policy set" in h.log, message="the half-written file refused")
        code = curl("-o", "/dev/null", "-w", "%{http_code}", "-x", f"http://127.0.0.1:{port}", origin.url("/b/1"))
        assert code.stdout == b"403"  # the old set still decides
        f.write(full[cut:])
    wait_for(lambda: "reloaded (policy files changed)" in h.log, message="the completed file loaded")
    code = curl("-o", "/dev/null", "-w", "%{http_code}", "-x", f"http://127.0.0.1:{port}", origin.url("/b/2"))
    assert code.stdout == b"200"  # the completed file took effect
    h.stop()


def test_once_stopping_no_new_connection_is_taken_and_every_tunnel_row_is_complete(hush):
    """Apps keep opening tunnels while hush stops: from SIGTERM on, a new connection is refused by
    the kernel (the listening sockets are closed), not decided, dialled and relayed after the
    audit's last write with its row left open.  Every connection the origin accepted has a row,
    and every row is complete."""
    origin = EchoOrigin()
    port = free_port()
    h = hush({"a": f"app: a\nlisten: {port}\ndefault: allow\n"})
    stop = threading.Event()
    refused, granted_at = [], []

    def app():
        while not stop.is_set():
            began = time.time()  # a connection begun after hush stopped must never be granted
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                    s.sendall(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\n\r\n".encode())
                    if not s.recv(100).startswith(b"HTTP/1.1 200"):
                        continue
                    granted_at.append(began)
                    s.sendall(client_hello())
            except ConnectionRefusedError:
                refused.append(time.monotonic())
                return
            except OSError:
                continue

    apps = [threading.Thread(target=app) for _ in range(6)]
    for t in apps:
        t.start()
    wait_for(lambda: len(origin.accepts) >= 30, message="tunnels relayed")
    h.stop(signal.SIGTERM)
    stop.set()
    for t in apps:
        t.join(10)
    origin.close()
    rows = [r for r in h.audit() if r["method"] == "CONNECT"]
    assert refused, "no app saw the listener closed"
    assert [r for r in rows if r["ended"] is None] == []
    relayed = [r for r in rows if r["route"] == "direct"]  # the others were granted, closed before the dial
    assert len(relayed) == len(origin.accepts), (len(relayed), len(origin.accepts))
    line = next(line for line in h.log.splitlines() if " hush: stopping: " in line)  # logged once stopped
    stopped = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
    assert [t - stopped for t in granted_at if t > stopped] == [], "connections begun after hush stopped granted"
