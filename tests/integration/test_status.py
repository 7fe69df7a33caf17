"""hush status against a running daemon, over its control socket."""

import json
import stat

import pytest

from hush.daemon.cli.main import main
from hush.daemon.run import ExitStatus

from .harness import curl, free_port

pytestmark = pytest.mark.integration


def test_status_of_a_running_daemon(hush, origin, capsys):
    port = free_port()
    h = hush({"a": f"app: a\nlisten: {port}\ndefault: allow\nrules:\n  - {{match: {{path: '/b*'}}, action: block}}\n"})
    assert curl("-x", f"http://127.0.0.1:{port}", origin.url("/ok")).returncode == 0
    assert curl("-x", f"http://127.0.0.1:{port}", origin.url("/blocked")).returncode == 0
    sock = h.state / "control.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600

    assert main(["status", "--state-dir", str(h.state), "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["running"] is True and st["pid"] == h.proc.pid
    assert st["listeners"] == [{"app": "a", "address": f"127.0.0.1:{port}", "mode": "http", "bound": True}]
    assert st["decisions"] == {"allow": 1, "block": 1}
    assert st["tor"]["state"] == "off" and st["policies"]["apps"] == ["a"]
    assert st["audit"]["degraded"] is False
    assert st["held"] == 0 and st["loop"]["max_stall_ms"] < 1000 and st["loop"]["last_warning"] is None

    assert main(["status", "--state-dir", str(h.state), "--table"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"hush is running (pid {h.proc.pid}")
    assert "decisions since start: allow 1, block 1" in out
    assert "held now: 0; event loop: longest stall" in out
    h.stop()
    assert not sock.exists()
    assert main(["status", "--state-dir", str(h.state)]) == ExitStatus.DAEMON_UNREACHABLE
