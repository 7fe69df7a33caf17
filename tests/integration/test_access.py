"""Who may use hush, and what it leaves readable."""

import os
import shutil
import stat
import subprocess

import pytest

from .harness import curl, free_port

pytestmark = pytest.mark.integration


def listening_addresses(port: int) -> set[str]:
    """Local addresses in LISTEN state (0A) on ``port``, from /proc/net/tcp{,6}."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                parts = line.split()
                address, hex_port = parts[1].rsplit(":", 1)
                if int(hex_port, 16) == port and parts[3] == "0A":
                    out.add(address)
    return out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run curl as another user (CI runs as root)")
def test_another_local_user_cannot_use_the_proxy(hush, origin):
    port = free_port()
    h = hush({"a": f"app: a\nlisten: {port}\ndefault: allow\n"})
    setpriv = shutil.which("setpriv")
    res = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", shutil.which("curl"),
                          "-sS", "--max-time", "10", "-x", f"http://127.0.0.1:{port}", origin.url("/nobody")],
                         capture_output=True, timeout=20)
    assert res.returncode != 0
    assert origin.accepts == []
    assert curl("-x", f"http://127.0.0.1:{port}", origin.url("/me")).returncode == 0  # the owner's own: fine
    assert "from uid 65534: hush serves only uid 0" in h.log
    h.stop()


def test_listens_on_loopback_only_and_keeps_state_private(hush, origin):
    port = free_port()
    h = hush({"a": f"app: a\nlisten: {port}\ndefault: allow\n"})
    assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, nothing else
    assert curl("-x", f"http://127.0.0.1:{port}", origin.url("/x")).returncode == 0
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(h.state) == 0o700 and mode(h.state / "ca") == 0o700
    assert mode(h.state / "control.sock") == 0o600
    assert mode(h.state / "ca" / "mitmproxy-ca.pem") == 0o600
    h.stop()
    assert mode(h.state / "audit.db") == 0o600
