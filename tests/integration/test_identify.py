"""Two processes on one shared listener are told apart by /proc."""

import shutil

import pytest

from .harness import curl, free_port

pytestmark = pytest.mark.integration


def test_two_processes_one_listener(hush, origin, tmp_path):
    port = free_port()
    h = hush({
        "sig": f"app: sig\nlisten: {port}\nidentify: {{process: [fakesignal]}}\ndefault: allow\n",
        "web": f"app: web\nlisten: {port}\nidentify: {{process: [fakechrome]}}\n"
               "default: {action: block, status: 451}\n",
    })
    real = shutil.which("curl")
    for name in ("fakesignal", "fakechrome"):
        shutil.copy(real, tmp_path / name)  # identified by the executable's file name (/proc/PID/exe)

    def via(name, path):
        return curl("-o", "/dev/null", "-w", "%{http_code}", "-x", f"http://127.0.0.1:{port}", origin.url(path),
                    binary=str(tmp_path / name)).stdout

    assert via("fakesignal", "/sig") == b"200"
    assert via("fakechrome", "/web") == b"451"
    assert curl("-o", "/dev/null", "-w", "%{http_code}", "-x", f"http://127.0.0.1:{port}",
                origin.url("/nobody")).stdout == b"502"  # a process no policy names: fail closed
    assert [r.path for r in origin.requests] == ["/sig"]
    assert "shared: apps told apart by process" in h.log
    h.stop()
    apps = sorted((r["app"] or "?", r["decision"], r["process"]) for r in h.audit())
    assert apps == [("?", "block", "curl"), ("sig", "allow", "fakesignal"), ("web", "block", "fakechrome")]
