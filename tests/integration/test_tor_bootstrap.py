"""A tor that cannot bootstrap: `hush doctor` asks the running daemon and names the phase it is at,
and a Tor-routed flow's 503 names tor's bootstrap percentage and phase."""

import json
import subprocess
import sys

import pytest

from .harness import NAME, curl, free_port, wait_for

pytestmark = pytest.mark.integration


def test_doctor_and_the_503_name_the_bootstrap_phase(hush, origin):
    port, dead = free_port(), free_port()
    config = ("tor:\n  torrc:\n    - TestingTorNetwork 1\n"  # its only authority never answers
              f"    - DirAuthority dead orport={dead} no-v2 v3ident={'A' * 40} 127.0.0.1:{dead} {'B' * 40}\n")
    h = hush({"a": f"app: a\nlisten: {port}\ndefault: block\nrules:\n"
                   "  - {match: {host: \"*.hushtest\"}, action: tor}\n"}, config=config)
    tor = wait_for(lambda: (t := h.status()["tor"])["bootstrap_tag"] and t, message="tor reports no phase")

    assert tor["ready"] is False and tor["bootstrap"] < 100

    res = curl("-i", "-x", f"http://127.0.0.1:{port}", origin.url("/t", host=NAME))
    head, _, body = res.stdout.decode().partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 503"), res.stdout
    assert f"bootstrapped {tor['bootstrap']}% ({tor['bootstrap_tag']}" in body, body
    assert origin.accepts == []

    out = subprocess.run([sys.executable, "-m", "hush.daemon.cli", "doctor", "--policies", str(h.policies),
                          "--state-dir", str(h.state), "--config", str(h.dir / "config.yaml"), "--json"],
                         capture_output=True, text=True, timeout=60)
    [finding] = [f for f in json.loads(out.stdout)["findings"] if f["check"] == "tor"]
    # a daemon started seconds ago: still bootstrapping (a fail once it has been stuck for minutes)
    assert finding["level"] == "warn", finding
    assert finding["message"].startswith("still bootstrapping, at ") and "% (" in finding["message"], finding
    h.stop()
