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


def test_the_unit_lets_the_daemon_open_every_socket_family_its_code_opens():
    """RestrictAddressFamilies= makes socket() fail for any other family.  The daemon's uid check
    (netlink sock_diag: the front door, peeruid, procnet) once fell back to reading /proc in a
    thread under the unit, and the front door handed every connection to mitmproxy as 'unknown'."""
    allowed = set(re.search(r"^RestrictAddressFamilies=(.+)$", UNIT.read_text(), re.M).group(1).split())
    root = UNIT.parents[1]
    used = {family for part in ("daemon", "addons") for path in (root / part).rglob("*.py")
            for family in re.findall(r"\bsocket\.(AF_[A-Z0-9]+)", path.read_text())}
    assert {"AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK"} <= used  # what the scan must find, at least
    assert used <= allowed, f"the code opens {sorted(used - allowed)}, which the unit forbids"
