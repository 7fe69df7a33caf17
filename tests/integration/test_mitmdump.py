"""The addons in a stock mitmdump (``-s addons/pipeline.py``), for users who
already run mitmproxy."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

from .harness import curl, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_pipeline_in_stock_mitmdump(tmp_path, origin):
    (tmp_path / "p.yaml").write_text(
        "app: mine\nlisten: 9\ndefault: allow\nrules:\n  - {match: {path: '/blocked*'}, action: block}\n")
    port = free_port()
    mitmdump = Path(sys.executable).parent / "mitmdump"
    with open(tmp_path / "mitmdump.log", "wb") as log:  # mitmdump writes to its own copy of the descriptor
        proc = subprocess.Popen(
            [str(mitmdump), "-q", "--listen-host", "127.0.0.1", "-p", str(port), "-s",
             str(ROOT / "addons/pipeline.py"), "--set", f"hush_policies={tmp_path / 'p.yaml'}",
             "--set", "hush_app=mine", "--set", f"hush_state_dir={tmp_path / 'state'}"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while curl("-x", f"http://127.0.0.1:{port}", origin.url("/ping")).returncode != 0:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "mitmdump.log").read_text()
            time.sleep(0.2)
        res = curl("-w", "%{http_code}", "-o", "/dev/null", "-x", f"http://127.0.0.1:{port}", origin.url("/blocked"))
        assert res.stdout == b"403"
        assert [r.path for r in origin.requests] == ["/ping"]
    finally:
        proc.terminate()
        proc.wait(10)
    import sqlite3

    rows = sqlite3.connect(tmp_path / "state" / "audit.db").execute(
        "SELECT app, decision FROM records ORDER BY id").fetchall()
    assert ("mine", "block") in rows and ("mine", "allow") in rows
