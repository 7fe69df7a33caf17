"""hush launch --dbus: what a launched app can still reach over D-Bus, seen from the bus.

A private session bus (dbus-daemon) with two services (dbus-test-tool echo):
a portal, which could open a URL outside the namespace, and the notification
service a messenger needs.  Whether a launched `dbus-send` reaches each is
what the bus says, not what hush says."""

import os
import shutil
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration

PORTAL = "org.freedesktop.portal.Desktop"
NOTIFY = "org.freedesktop.Notifications"


@pytest.fixture
def session_bus(tmp_path):
    for tool in ("dbus-daemon", "dbus-send", "dbus-test-tool", "xdg-dbus-proxy"):
        assert shutil.which(tool), f"{tool} is not installed (.ci/run installs dbus, dbus-tests, xdg-dbus-proxy)"
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    address = f"unix:path={runtime}/bus"
    daemon = subprocess.Popen(["dbus-daemon", "--session", f"--address={address}", "--nofork", "--nopidfile"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": address, "XDG_RUNTIME_DIR": str(runtime)}
    deadline = time.monotonic() + 10
    while not (runtime / "bus").exists():
        assert time.monotonic() < deadline, "dbus-daemon did not start"
        time.sleep(0.02)
    services = [subprocess.Popen(["dbus-test-tool", "echo", f"--name={name}"], env=env) for name in (PORTAL, NOTIFY)]
    for name in (PORTAL, NOTIFY):
        while not reaches(env, name):
            assert time.monotonic() < deadline, f"{name} did not appear on the bus"
            time.sleep(0.05)
    yield env
    for proc in (*services, daemon):
        proc.kill()
        proc.wait()


def ping(name: str) -> list[str]:
    return ["dbus-send", "--session", "--print-reply", "--reply-timeout=3000", f"--dest={name}", "/",
            "org.freedesktop.DBus.Peer.Ping"]


def reaches(env, name, prefix=()) -> bool:
    return subprocess.run([*prefix, *ping(name)], env=env, capture_output=True, timeout=60).returncode == 0


def test_dbus_open_filter_and_none(hush, session_bus, tmp_path):
    h = hush({"x": "app: x\ndefault: block\n"})
    launch = [sys.executable, "-m", "hush.daemon.cli", "launch", "--state-dir", str(h.state), "--app", "x"]
    seen = {mode: {name: reaches(session_bus, name, [*launch, "--dbus", mode, "--"]) for name in (PORTAL, NOTIFY)}
            for mode in ("open", "filter", "none")}
    assert seen == {
        "open": {PORTAL: True, NOTIFY: True},     # the residual channel docs/launch.md warns of
        "filter": {PORTAL: False, NOTIFY: True},  # notifications yes, the portal (OpenURI) no
        "none": {PORTAL: False, NOTIFY: False},
    }
    # the proxy is gone with the launch, and so is its directory
    assert not [p for p in (tmp_path / "runtime").iterdir() if p.name.startswith("hush-dbus-")]
    h.stop()
