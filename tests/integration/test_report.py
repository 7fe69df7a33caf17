"""The HTML audit report, opened in a real headless chromium."""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hush.daemon.cli.main import main

from .harness import curl, free_port

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM = shutil.which("chromium")


def chromium(*args, profile):
    assert CHROMIUM, "chromium is not installed (.ci/run installs it)"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=120)


def test_report_renders_and_agrees_with_summary(hush, origin, tmp_path, capsys):
    p1, p2 = free_port(), free_port()
    h = hush({
        "a": f"app: a\nlisten: {p1}\ndefault: allow\nrules:\n  - {{match: {{path: '/b*'}}, action: block}}\n"
             "  - {match: {path: '/s*'}, action: strip}\n",
        "b": f"app: b\nlisten: {p2}\ndefault: block\n",
    })
    for port, path in ((p1, "/ok"), (p1, "/blocked"), (p1, "/strip"), (p1, "/ok2"), (p2, "/x"), (p2, "/y")):
        curl("-H", "Cookie: c=1", "-x", f"http://127.0.0.1:{port}", origin.url(path))
    h.stop()

    report = tmp_path / "report.html"
    assert main(["audit", "report", "--html", str(report), "--state-dir", str(h.state)]) == 0
    assert main(["audit", "summary", "--state-dir", str(h.state), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.split("\n", 1)[1])  # after "wrote …"

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "audit-report.png"
    shot.unlink(missing_ok=True)
    res = chromium(f"--screenshot={shot}", "--window-size=1200,1400", report.as_uri(), profile=tmp_path / "p1")
    assert shot.exists() and shot.stat().st_size > 10_000, res.stderr[-2000:]

    dom = chromium("--dump-dom", report.as_uri(), profile=tmp_path / "p2").stdout
    cells = {(app, metric): int(value) for app, metric, value in
             re.findall(r'data-app="([^"]+)" data-metric="([^"]+)">(\d+)<', dom)}
    assert cells, dom[:2000]
    for app, s in summary["apps"].items():
        assert cells[(app, "requests")] == s["requests"]
        assert cells[(app, "sites")] == s["sites"]
        assert cells[(app, "ip_exposed")] == s["ip_exposed"]
        for k, v in s["prevented"].items():
            assert cells[(app, f"prevented.{k}")] == v
        for decision, n in s["by_decision"].items():
            assert cells[(app, f"decision.{decision}")] == n
    assert summary["apps"]["a"]["by_decision"] == {"allow": 2, "block": 1, "strip": 1}
    assert summary["apps"]["b"]["prevented"]["cookies"] == 2
    assert "<svg" in dom and "rect" in dom  # the timeline drew
