"""action: ask, answered from a desktop notification over a real session bus.

A private dbus-daemon (Debian's ``dbus``), and tests/integration/notifyd.py
as the notification service: it owns org.freedesktop.Notifications and, like
a user, presses a button (ActionInvoked).  What the origin accepted is the
proof, not what hush says."""

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.integration.harness import curl, wait_for

pytestmark = pytest.mark.integration

NOTIFYD = Path(__file__).with_name("notifyd.py")


def policy(port: int, timeout: str = "10s", fallback: str = "block") -> str:
    return f"""\
        app: asker
        listen: {port}
        default: {{action: ask, timeout: {timeout}, fallback: {fallback}}}
        """


@pytest.fixture
def session_bus(tmp_path):
    assert shutil.which("dbus-daemon"), "dbus-daemon is not installed (.ci/run installs dbus)"
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    address = f"unix:path={runtime}/bus"
    daemon = subprocess.Popen(["dbus-daemon", "--session", f"--address={address}", "--nofork", "--nopidfile"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: (runtime / "bus").exists(), 10, message="dbus-daemon's socket")
    yield {"DBUS_SESSION_BUS_ADDRESS": address}
    daemon.kill()
    daemon.wait()


@pytest.fixture
def notifyd(session_bus, tmp_path):
    started = []

    def start(answer: str | None = None, after: float = 0.3) -> Path:
        log = tmp_path / f"notifyd{len(started)}.jsonl"
        log.touch()
        cmd = [sys.executable, str(NOTIFYD), str(log)] + (["--answer", answer, "--after", str(after)] if answer else [])
        proc = subprocess.Popen(cmd, env={**os.environ, **session_bus}, stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        return log

    yield start
    for proc in started:
        proc.kill()
        proc.wait()


def notified(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if json.loads(line)["member"] == "Notify"]


def proxy(port):
    return ("-x", f"http://127.0.0.1:{port}")


def free_port():
    from tests.integration.harness import free_port as fp

    return fp()


def test_answered_once_allow_reaches_the_origin_exactly_once(hush, origin, session_bus, notifyd):
    log = notifyd(answer="allow:once")
    port = free_port()
    h = hush({"asker": policy(port)}, env=session_bus)
    r = curl(*proxy(port), origin.url("/a"), "-o", "/dev/null", "-w", "%{http_code}")
    assert r.stdout == b"200", r
    assert len(origin.accepts) == 1
    [shown] = notified(log)
    assert shown["app"] == "hush" and "asker wants to reach" in shown["summary"]
    assert "allow:once" in shown["actions"] and shown["timeout"] == 10000
    # once: the next request is asked again (a second notification), and answered again
    r = curl(*proxy(port), origin.url("/b"), "-o", "/dev/null", "-w", "%{http_code}")
    assert r.stdout == b"200" and len(notified(log)) == 2 and len(origin.accepts) == 2
    h.stop()
    rows = [r for r in h.audit() if r["app"] == "asker"]
    assert [r["decision"] for r in rows] == ["allow", "allow"]


def test_left_alone_gets_its_fallback_at_the_timeout(hush, origin, session_bus, notifyd):
    log = notifyd()  # shows it, never presses anything
    port = free_port()
    h = hush({"asker": policy(port, timeout="1500ms")}, env=session_bus)
    started = time.monotonic()
    r = curl(*proxy(port), origin.url("/a"), "-o", "/dev/null", "-w", "%{http_code}")
    took = time.monotonic() - started
    assert r.stdout == b"403" and 1.4 < took < 6, (r, took)
    assert origin.accepts == []
    assert len(notified(log)) == 1
    h.stop()
    [row] = [r for r in h.audit() if r["app"] == "asker"]
    assert row["decision"] == "ask-timeout" and row["egress"] == "none"


def test_two_flows_to_one_site_share_one_question(hush, origin, session_bus, notifyd):
    log = notifyd(answer="allow:once", after=1.5)
    port = free_port()
    h = hush({"asker": policy(port)}, env=session_bus)
    codes = []

    def fetch(path):
        codes.append(curl(*proxy(port), origin.url(path), "-o", "/dev/null", "-w", "%{http_code}").stdout)

    threads = [threading.Thread(target=fetch, args=(p,)) for p in ("/one", "/two")]
    for t in threads:
        t.start()
        time.sleep(0.3)
    for t in threads:
        t.join()
    assert codes == [b"200", b"200"]
    assert len(notified(log)) == 1  # one question, two flows answered
    assert sorted(s.path for s in origin.requests) == ["/one", "/two"]
    h.stop()


def test_no_notification_service_gets_the_fallback_at_once(hush, origin, session_bus):
    port = free_port()
    h = hush({"asker": policy(port, timeout="30s")}, env=session_bus)  # a bus, no one owning the name
    started = time.monotonic()
    r = curl(*proxy(port), origin.url("/a"), "-o", "/dev/null", "-w", "%{http_code}")
    assert r.stdout == b"403" and time.monotonic() - started < 5
    assert origin.accepts == []
    h.stop()
    [row] = [r for r in h.audit() if r["app"] == "asker"]
    assert row["decision"] == "ask-unavailable" and row["egress"] == "none"


def test_no_session_bus_and_fallback_allow_is_explicit(hush, origin):
    port = free_port()
    h = hush({"asker": policy(port, timeout="30s", fallback="allow")}, env={"DBUS_SESSION_BUS_ADDRESS": ""})
    started = time.monotonic()
    r = curl(*proxy(port), origin.url("/a"), "-o", "/dev/null", "-w", "%{http_code}")
    assert r.stdout == b"200" and time.monotonic() - started < 5
    assert len(origin.accepts) == 1
    h.stop()
    [row] = [r for r in h.audit() if r["app"] == "asker"]
    assert row["decision"] == "ask-unavailable" and row["egress"] == "direct"


def test_allow_for_an_hour_becomes_a_rule_that_expires(hush, origin, session_bus, notifyd):
    log = notifyd(answer="allow:1h")
    port = free_port()
    h = hush({"asker": policy(port)}, env=session_bus)
    for path in ("/a", "/b", "/c"):
        r = curl(*proxy(port), origin.url(path), "-o", "/dev/null", "-w", "%{http_code}")
        assert r.stdout == b"200"
    assert len(notified(log)) == 1  # asked once: the answer holds for the site
    assert len(origin.accepts) == 3
    h.stop()


def test_block_for_an_hour_answers_the_waiting_flow_and_blocks_the_next_without_asking(hush, origin, session_bus,
                                                                                      notifyd):
    log = notifyd(answer="block:1h")
    port = free_port()
    h = hush({"asker": policy(port, fallback="allow")}, env=session_bus)
    for path in ("/a", "/b"):
        r = curl(*proxy(port), origin.url(path), "-o", "/dev/null", "-w", "%{http_code}")
        assert r.stdout == b"403", r  # the answer, not a revocation's 503 and not the fallback
    assert origin.accepts == [] and len(notified(log)) == 1
    h.stop()
    rows = [r for r in h.audit() if r["app"] == "asker"]
    assert [r["decision"] for r in rows] == ["block", "block"]
    assert rows[1]["rule"].endswith("asker.yaml:3")  # the temporary rule names the ask rule it came from
