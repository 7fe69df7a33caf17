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
    assert "The site saw 1 request: /_matrix/client/v3/sync (from hush)" in out
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


def test_demo_with_a_private_tor_network(tmp_path):
    """``hush demo --tor``: the flows the policies send through Tor reach the site from the private
    network's exit (the site names the process that connected), and only element's sync from hush."""
    res = subprocess.run([sys.executable, "-m", "hush.daemon.cli", "demo", "--tor"], capture_output=True,
                         text=True, timeout=240, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    assert "hush's tor has joined the private Tor network" in out
    assert "refused: no tor here" not in out and "tor-unavailable" not in out
    for app in ("whatsapp", "signal", "simplex", "telegram", "slack", "discord"):
        [line] = [x for x in out.splitlines() if x.startswith(f"{app} ") and not re.match(rf"{app}\s+\d", x)]
        assert "through Tor (the site sees the Tor exit)" in line, line
    for app, decision in (("signal", "tor 2"), ("simplex", "tor 2"), ("telegram", "tor 2"), ("slack", "tor 1")):
        assert re.search(rf"^{app}\s+\d+\s+0\s+\d+\s+{decision}$", out, re.M), (app, out)
    seen = re.search(r"^The site saw (\d+) requests: (.*)$", out, re.M)
    assert seen, out
    sources = re.findall(r"\(from ([^)]*)\)", seen.group(2))
    assert sources.count("hush") == 1 and set(sources) == {"hush", "the Tor exit"}, sources
    assert int(seen.group(1)) == 8  # whatsapp's last, signal's two, simplex, element's sync, telegram, slack, discord
    assert os.listdir(tmp_path) == []  # the network's keys and data directories are removed with the rest
