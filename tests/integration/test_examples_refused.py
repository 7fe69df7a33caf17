"""A policy's own ``examples:`` are its tests: ``hush run`` and a reload refuse a
policy whose examples fail, as ``hush policy check`` does (issue 15)."""

import socket
import subprocess
import sys

import pytest

from .harness import curl, free_port, wait_for

pytestmark = pytest.mark.integration

GOOD = "app: a\nlisten: {port}\ndefault: allow\nexamples:\n  - {{url: 'http://127.0.0.1/', expect: allow}}\n"
# a rule that blocks the origin, and an example that says it allows it: the example fails
FAILING = ("app: a\nlisten: {port}\ndefault: allow\nrules:\n  - {{match: {{host: 127.0.0.1}}, action: block}}\n"
           "examples:\n  - {{url: 'http://127.0.0.1/', expect: allow}}\n")


def code(port, url):
    return curl("-o", "/dev/null", "-w", "%{http_code}", "-x", f"http://127.0.0.1:{port}", url).stdout


def test_hush_run_refuses_a_failing_example_with_exit_5(hush):
    port = free_port()
    h = hush({"a": FAILING.format(port=port)}, ready=False)
    assert h.wait_exit() == 5
    policy = h.policies / "a.yaml"
    assert (f"hush: not starting, 1 policy example failed (hush policy check shows them too):\n"
            f"{policy}:7:5: example expects allow but rule 1 ({policy}:5) decides block") in h.log
    assert "hush is running" not in h.log
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # nothing listens


def test_a_reload_refuses_a_failing_example_and_keeps_the_last_good_set(hush, origin):
    port = free_port()
    h = hush({"a": GOOD.format(port=port)})
    version = h.status()["policies"]["version"]
    assert code(port, origin.url("/before")) == b"200"

    (h.policies / "a.yaml").write_text(FAILING.format(port=port))
    res = subprocess.run([sys.executable, "-m", "hush.daemon.cli", "reload", "--state-dir", str(h.state)],
                         capture_output=True, text=True, timeout=120)
    policy = h.policies / "a.yaml"
    assert res.returncode == 5, res  # exit 5 as hush policy check: only the examples fail
    assert res.stderr == (f"reload refused, keeping policy set {version}; 1 error:\n"
                          f"{policy}:7:5: example expects allow but rule 1 ({policy}:5) decides block\n")
    # the file watcher's own reload of the change is refused too
    wait_for(lambda: "reload (policy files changed) refused" in h.log, message="the watcher's refused reload")
    st = h.status()
    assert st["policies"]["version"] == version and st["last_reload"]["ok"] is False
    assert code(port, origin.url("/after")) == b"200"  # the running set still allows it
    assert len(origin.accepts) == 2

    (h.policies / "a.yaml").write_text(FAILING.format(port=port).replace("expect: allow", "expect: block"))
    res = subprocess.run([sys.executable, "-m", "hush.daemon.cli", "reload", "--state-dir", str(h.state)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res  # examples that pass: taken
    assert code(port, origin.url("/blocked")) == b"403"
    assert len(origin.accepts) == 2
