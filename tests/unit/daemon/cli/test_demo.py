"""daemon/cli/demo.py: the records it prints, and the temporary directory it removes."""

from pathlib import Path

import pytest

from hush.daemon.cli import demo


def test_records_are_listed_with_the_rule_file_and_a_tunnels_host():
    out: list[str] = []
    demo.print_records([
        {"app": "signal", "decision": "tor-unavailable", "method": "GET", "url": "http://127.0.0.1:1/og.png",
         "rule": "/tmp/hush-demo-x/policies/signal.yaml:13"},
        {"app": "simplex", "decision": "block", "method": "CONNECT", "url": None, "host": "127.0.0.1", "port": 1,
         "rule": None},
    ], out.append)
    assert out[1:] == [
        "  app      decision         method   url                        rule",
        "  signal   tor-unavailable  GET      http://127.0.0.1:1/og.png  signal.yaml:13",
        "  simplex  block            CONNECT  127.0.0.1:1                -",
    ]


def test_the_temporary_directory_is_removed_however_the_demo_ends(monkeypatch, tmp_path):
    made: list[Path] = []

    def failing(root: Path, say, lab) -> int:
        made.append(root)
        (root / "state").mkdir()
        raise RuntimeError("the daemon did not start")

    monkeypatch.setattr(demo, "_run", failing)
    monkeypatch.setattr(demo.tempfile, "tempdir", str(tmp_path))
    with pytest.raises(RuntimeError):
        demo.run(say=lambda *_: None)
    assert made and not made[0].exists() and list(tmp_path.iterdir()) == []
