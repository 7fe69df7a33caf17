"""default: learn — a new app's traffic allowed and audited learn (and shown in hush status);
then hush policy suggest over that audit proposes a policy that policy check accepts and that
decides the recorded requests as suggested, proven at the origin once it is in force."""

import subprocess
import sys

import pytest

from hush.daemon.cli.main import main
from hush.daemon.exitstatus import ExitStatus
from tests.integration.harness import curl, free_port

pytestmark = pytest.mark.integration


def test_learn_then_suggest(hush, origin, tmp_path, capsys):
    port = free_port()
    h = hush({"newapp": f"app: newapp\nlisten: {port}\ndefault: learn\n"})
    proxy = ("-x", f"http://127.0.0.1:{port}")
    assert curl(*proxy, origin.url("/a"), "-o", "/dev/null", "-w", "%{http_code}").stdout == b"200"
    for path in ("/f", "/fi", "/fil"):  # a link preview, typed
        assert curl(*proxy, "-A", "WhatsApp/2", origin.url(path), "-o", "/dev/null", "-w", "%{http_code}").stdout \
            == b"200"
    assert len(origin.accepts) == 4  # learn allows everything
    status = h.status()
    assert status["learning"] == ["newapp"] and status["decisions"]["learn"] == 4
    text = subprocess.run([sys.executable, "-m", "hush.daemon.cli", "status", "--table", "--state-dir", str(h.state)],
                          capture_output=True, text=True, timeout=30).stdout
    assert "learning (default: learn): newapp" in text
    h.stop()
    rows = [r for r in h.audit() if r["app"] == "newapp"]
    assert [r["decision"] for r in rows] == ["learn"] * 4

    assert main(["policy", "suggest", "--app", "newapp", "--state-dir", str(h.state), "--policies",
                 str(h.policies)]) == ExitStatus.OK
    suggested = capsys.readouterr().out
    assert "default: block" in suggested and "then: tor" in suggested and "learn" not in suggested.split("rules:")[1]
    (tmp_path / "check").mkdir()
    (tmp_path / "check" / "newapp.yaml").write_text(suggested)
    assert main(["policy", "check", str(tmp_path / "check")]) == ExitStatus.OK

    # in force: the plain request's site is blocked now (nothing reaches the origin), the preview is debounced
    h2 = hush({"newapp": suggested})
    before = len(origin.accepts)
    assert curl(*proxy, origin.url("/a"), "-o", "/dev/null", "-w", "%{http_code}").stdout == b"403"
    assert len(origin.accepts) == before
    h2.stop()
    rows = [r for r in h2.audit() if r["app"] == "newapp"]
    assert [r["decision"] for r in rows] == ["block"]
