"""DesktopPrompt against a real session bus (dbus-daemon) and tests/integration/notifyd.py:
a notification shown, the button pressed comes back, a signal from anyone else is ignored,
no service or no bus is "not shown" at once."""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hush.daemon.notify_dbus import DesktopPrompt
from hush.daemon.ui.questions import Question

NOTIFYD = Path(__file__).parents[2] / "integration" / "notifyd.py"


@pytest.fixture
def bus(tmp_path):
    assert shutil.which("dbus-daemon"), "dbus-daemon is not installed (.ci/run installs dbus)"
    address = f"unix:path={tmp_path}/bus"
    proc = subprocess.Popen(["dbus-daemon", "--session", f"--address={address}", "--nofork", "--nopidfile"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not (tmp_path / "bus").exists():
        assert time.monotonic() < deadline, "dbus-daemon did not start"
        time.sleep(0.02)
    yield address
    proc.kill()
    proc.wait()


def service(address, log, *args):
    proc = subprocess.Popen([sys.executable, str(NOTIFYD), str(log), *args], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "DBUS_SESSION_BUS_ADDRESS": address})
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_the_button_pressed_comes_back_and_a_spoofed_signal_does_not(bus, tmp_path):
    log = tmp_path / "n.jsonl"
    proc = service(bus, log, "--answer", "block:once", "--after", "0.5")

    async def main():
        from jeepney import DBusAddress, new_signal
        from jeepney.io.asyncio import open_dbus_router

        answers = []
        prompt = DesktopPrompt(lambda qid, verdict, scope: answers.append((qid, verdict, scope)), address=bus)
        q = Question(app="signal", host="www.example.com", site="example.com", timeout=7)
        assert await prompt.show(q) is True
        # another client on the bus claims the user pressed "always allow": not the service that showed it
        async with open_dbus_router(bus) as router:
            emitter = DBusAddress("/org/freedesktop/Notifications", interface="org.freedesktop.Notifications")
            await router.send(new_signal(emitter, "ActionInvoked", "us", (1, "allow:always")))
        for _ in range(100):
            if answers:
                break
            await asyncio.sleep(0.02)
        assert answers == [(q.id, "block", "once")]
        await prompt.close(q)
        await prompt.aclose()
        return q

    q = asyncio.run(main())
    proc.kill()
    proc.wait()
    [shown] = [json.loads(line) for line in log.read_text().splitlines() if '"Notify"' in line]
    assert shown["summary"] == "signal wants to reach example.com" and shown["timeout"] == 7000
    assert shown["actions"][:4] == ["allow:once", "Allow once", "block:once", "Block once"]
    assert q.id


def test_no_service_and_no_bus_are_not_shown_at_once(bus):
    async def main():
        q = Question(app="a", host="h.example", site="h.example")
        for address in (bus, "", "unix:path=/nonexistent/bus"):
            prompt = DesktopPrompt(lambda *a: None, address=address)
            started = time.monotonic()
            assert await prompt.show(q) is False
            assert time.monotonic() - started < 1.5 and prompt.last_error
            await prompt.aclose()

    asyncio.run(main())


def test_a_restarted_session_bus_is_reached_anew(tmp_path):
    address = f"unix:path={tmp_path}/bus"

    def start_bus():
        proc = subprocess.Popen(["dbus-daemon", "--session", f"--address={address}", "--nofork", "--nopidfile"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not (tmp_path / "bus").exists():
            assert time.monotonic() < deadline, "dbus-daemon did not start"
            time.sleep(0.02)
        return proc

    procs = [start_bus()]
    procs.append(service(address, tmp_path / "a.jsonl"))

    async def main():
        prompt = DesktopPrompt(lambda *a: None, address=address)
        assert await prompt.show(Question(app="a", host="h.example", site="h.example")) is True
        for p in procs:
            p.kill()
            p.wait()
        (tmp_path / "bus").unlink(missing_ok=True)
        procs.append(await asyncio.to_thread(start_bus))
        procs.append(await asyncio.to_thread(service, address, tmp_path / "b.jsonl"))
        assert await prompt.show(Question(app="a", host="h.example", site="h.example")) is True
        await prompt.aclose()

    try:
        asyncio.run(main())
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert '"Notify"' in (tmp_path / "b.jsonl").read_text()
