"""expires: on a rule — in force until its time, then dropped by the running
daemon (no reload, no restart), proven at a counting origin."""

import time

import pytest

from hush.daemon.policy.expiry import format_time
from tests.integration.harness import curl, free_port, wait_for

pytestmark = pytest.mark.integration


def test_a_rule_is_dropped_at_its_expiry_without_a_restart(hush, origin):
    port = free_port()
    until = time.time() + 4
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
    wait_for(lambda: time.time() > round(until) + 0.2, 10)
    assert fetch() == b"403"  # dropped at its time: the default decides now
    assert len(origin.accepts) == 1  # nothing more reached the origin
    status = h.status()
    assert status["policies"]["version"].startswith(version + "+") and status["reloads"] == 0
    assert h.proc.poll() is None  # the same daemon, not restarted
    h.stop()
    assert "policy set" in h.log and "in force" in h.log
