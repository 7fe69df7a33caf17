"""hush demo runs with no messenger and no internet."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo():
    res = subprocess.run([sys.executable, "-m", "hush.daemon.cli", "demo"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    for app in ("whatsapp", "signal", "simplex", "element", "telegram", "messenger", "slack", "discord"):
        assert re.search(rf"^{app}\s+\d+\s+\d+\s+\d+\s+\S", out, re.M), out
    root = Path(re.search(r"the demo's files are in (\S+);", out).group(1))
    summary = json.loads((root / "summary.json").read_text())["apps"]
    assert summary["whatsapp"]["by_decision"]["superseded"] >= 5  # per keystroke, superseded
    assert summary["element"]["by_decision"] == {"block": 1, "allow": 1}
    assert summary["signal"]["ip_exposed"] == 0 and summary["messenger"]["ip_exposed"] == 0
    assert summary["telegram"]["by_decision"] == {"tor-unavailable": 1}  # not Telegram's: Tor, which is down
    assert "The site saw 1 request(s): /_matrix/client/v3/sync" in out
