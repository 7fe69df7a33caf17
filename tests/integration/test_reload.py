"""Live reload under traffic, and readiness for systemd."""

import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from .harness import free_port, wait_for

pytestmark = pytest.mark.integration

V1 = "app: a\nlisten: {port}\ndefault: allow\nrules:\n  - {{match: {{path: '/old-block*'}}, action: block}}\n"
V2 = "app: a\nlisten: {port}\ndefault: allow\nrules:\n  - {{match: {{path: '/a*'}}, action: block, status: 451}}\n"
BAD = "app: a\nlisten: {port}\ndefault: drop\n"


def write_atomically(path, text):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Traffic(threading.Thread):
    """Requests through hush, one after another, recording each outcome."""

    def __init__(self, port, url):
        super().__init__(daemon=True)
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{port}"}))
        self.url = url
        self.results: list[tuple[float, int | str]] = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                with self.opener.open(self.url, timeout=10) as r:
                    self.results.append((time.monotonic(), r.status))
            except urllib.error.HTTPError as e:
                self.results.append((time.monotonic(), e.code))
            except Exception as e:  # a failure the reload caused
                self.results.append((time.monotonic(), repr(e)))
            self.stop.wait(0.01)  # a pace, not a synchronisation

    def wait_more(self, n: int, code: int | None = None) -> int:
        """Wait until ``n`` more requests (answered ``code``, if given) are done; how many are done then."""
        def outcomes():
            return [c for _, c in self.results if code is None or c == code]
        before = len(outcomes())
        wait_for(lambda: len(outcomes()) >= before + n, message=f"{n} more requests answered {code or ''}")
        return len(self.results)


def wait_log(h, text, after=0, timeout=15):
    wait_for(lambda: h.log.count(text) > after, timeout, message=f"{text!r} in the log")


def accepts(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_reload_under_traffic(hush, origin):
    port = free_port()
    h = hush({"a": V1.format(port=port)})
    policy = h.policies / "a.yaml"
    traffic = Traffic(port, origin.url("/a"))
    traffic.start()
    traffic.wait_more(10)

    write_atomically(policy, BAD.format(port=port))  # the watcher sees it
    wait_log(h, "refused, keeping policy set")
    n_after_bad = traffic.wait_more(10)  # requests decided after the refusal

    write_atomically(policy, V2.format(port=port))
    wait_log(h, "reloaded (policy files changed)")
    traffic.wait_more(10, code=451)  # the new set decides
    traffic.stop.set()
    traffic.join()

    codes = [code for _, code in traffic.results]
    assert set(codes) <= {200, 451}, codes  # nothing failed because of a reload
    first_block = codes.index(451)
    assert first_block >= n_after_bad  # the invalid policy changed nothing
    assert all(c == 200 for c in codes[:first_block]) and all(c == 451 for c in codes[first_block:])
    assert f"{policy}:3:10: unknown action 'drop'" in h.log

    h.stop()
    versions = {}
    for row in h.audit():
        versions.setdefault(row["decision"], set()).add(row["policy_version"])
    assert len(versions["allow"]) == 1 and len(versions["block"]) == 1
    assert versions["allow"] != versions["block"]  # each row names the set that decided it
    assert len(h.audit()) == len(codes)


def test_sighup_reload_and_new_listener(hush, origin):
    p1, p2 = free_port(), free_port()
    h = hush({"a": V1.format(port=p1)})
    (h.policies / "b.yaml").write_text(f"app: b\nlisten: {p2}\ndefault: block\n")
    wait_log(h, "reloaded")  # the watcher may get there first; SIGHUP must work too
    h.proc.send_signal(signal.SIGHUP)
    wait_log(h, "reloaded (SIGHUP)")
    wait_for(lambda: accepts(p2), message=f"listener {p2} up")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": f"http://127.0.0.1:{p2}"}))
    with pytest.raises(urllib.error.HTTPError) as e:
        opener.open(origin.url("/x"), timeout=10)
    assert e.value.code == 403
    (h.policies / "b.yaml").unlink()
    wait_log(h, "reloaded", after=h.log.count("reloaded"))
    wait_for(lambda: not accepts(p2), message=f"removed listener {p2} gone")
    assert h.stop() == 0


def test_systemd_notify(hush, tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    port = free_port()
    h = hush({"a": V1.format(port=port)}, env={"NOTIFY_SOCKET": path})
    messages = sock.recv(4096).decode().split("\n")
    assert "READY=1" in messages
    assert any(m.startswith("STATUS=1 listeners, policy set ") for m in messages)
    assert f"MAINPID={h.proc.pid}" in messages
    h.proc.send_signal(signal.SIGHUP)
    assert sock.recv(4096).decode().startswith("RELOADING=1")
    assert "READY=1" in sock.recv(4096).decode()
    h.stop()
    assert sock.recv(4096).decode() == "STOPPING=1"
    sock.close()
