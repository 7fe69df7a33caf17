"""hush demo runs with no messenger and no internet, says what each app's audit rows show, and
leaves nothing behind."""

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

APPS = ("whatsapp", "signal", "simplex", "element", "telegram", "messenger", "slack", "discord")
# the words an app's line uses for each decision its audit rows show
WORDS = {"tor-unavailable": "through Tor (refused: no tor here)", "block": "blocked", "allow": "allowed",
         "superseded": "superseded"}


def test_demo(tmp_path):
    res = subprocess.run([sys.executable, "-m", "hush.daemon.cli", "demo"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    table = {}
    for app in APPS:
        m = re.search(rf"^{app}\s+(\d+)\s+(\d+)\s+(\d+)\s+(\S.*)$", out, re.M)
        assert m, out
        decisions = dict((d.rsplit(" ", 1)[0], int(d.rsplit(" ", 1)[1])) for d in m.group(4).split(", "))
        table[app] = (int(m.group(1)), int(m.group(2)), decisions)
    assert table["whatsapp"][2]["superseded"] >= 5  # per keystroke, superseded
    assert table["element"][2] == {"block": 1, "allow": 1}
    assert table["signal"][1] == 0 and table["messenger"][1] == 0  # no IP reached the site
    assert table["telegram"][2] == {"tor-unavailable": 1}  # not Telegram's: Tor, which is down
    assert table["messenger"][2] == {"block": 1}
    assert "The site saw 1 request(s): /_matrix/client/v3/sync" in out
    # each app's line names what its rows show, and the rows are printed
    for app, (requests, _, decisions) in table.items():
        [line] = [x for x in out.splitlines() if x.startswith(f"{app} ") and not re.match(rf"{app}\s+\d", x)]
        for decision in decisions:
            assert WORDS[decision] in line, (app, decision, line)
        rows = re.findall(rf"^  {app}\s+(\S+)\s", out, re.M)
        assert len(rows) == requests and set(rows) == set(decisions), (app, rows)
    messenger = next(x for x in out.splitlines() if x.startswith("messenger "))
    assert "/og.png" in messenger and "tracker script" not in messenger  # its row is GET /og.png
    assert os.listdir(tmp_path) == []  # its temporary directory is removed
