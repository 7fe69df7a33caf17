"""The shipped user unit."""

import re
import shutil
import subprocess
from pathlib import Path

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "hush.service"


def test_exposure_score_is_at_most_2():
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is not installed (.ci/run installs systemd)"
    out = subprocess.run([analyze, "security", "--offline=true", str(UNIT)],
                         capture_output=True, text=True, timeout=60).stdout
    score = float(re.search(r"Overall exposure level for hush.service: ([\d.]+)", out).group(1))
    assert score <= 2.0, out


def test_unit_is_what_the_daemon_expects():
    text = UNIT.read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure",
                 "StateDirectory=hush", "ConfigurationDirectory=hush", "UMask=0077"):
        assert line in text.splitlines(), line
    assert re.search(r"^ExecStartPre=\S+/hush policy check$", text, re.M)
    assert re.search(r"^ExecStart=\S+/hush run$", text, re.M)
