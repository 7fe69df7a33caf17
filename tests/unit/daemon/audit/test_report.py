import csv
import io
import json
import re

from hush.daemon.audit.store import AuditWriter
from hush.daemon.cli.main import main


def fill(state, n_block=3, n_allow=2):
    w = AuditWriter(state / "audit.db")
    for i in range(n_block):
        w.submit({"ts": 1795000000.0 + i * 600, "app": "signal", "decision": "block", "rule": "p/signal.yaml:12",
                  "site": f"s{i % 2}.org", "ip_exposed": False, "carried": {"user_agent": "WhatsApp/2", "cookies": 0}})
    for i in range(n_allow):
        w.submit({"ts": 1795000000.0 + i * 900, "app": "element", "decision": "allow", "rule": "p/element.yaml:3",
                  "site": "matrix.org", "ip_exposed": True, "url": "https://matrix.org/",
                  "carried": {"user_agent": "Element", "cookies": 1}, "sent": {"user_agent": "Element", "cookies": 1}})
    w.close()


def test_export_jsonl_and_csv(tmp_path, capsys):
    fill(tmp_path)
    assert main(["audit", "export", "--state-dir", str(tmp_path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 5 and lines[0]["carried"]["user_agent"] == "WhatsApp/2"
    assert main(["audit", "export", "--format", "csv", "--state-dir", str(tmp_path)]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 5 and rows[-1]["app"] == "element" and rows[-1]["ip_exposed"] == "1"


def test_purge(tmp_path, capsys):
    fill(tmp_path)
    from datetime import datetime

    cutoff = datetime.fromtimestamp(1795000000.0 + 700).isoformat()  # after 2 block and 1 allow records
    assert main(["audit", "purge", "--before", cutoff, "--state-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "deleted 3 records\n"
    assert main(["audit", "purge", "--all", "--state-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "deleted 2 records\n"
    assert main(["audit", "purge", "--state-dir", str(tmp_path)]) == 2  # says what to delete
    capsys.readouterr()
    assert main(["audit", "purge", "--before", "yesterday", "--state-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err == ("hush: cannot read --before 'yesterday': "
                                       "use e.g. 30m, 24h, 7d or 2026-11-22T10:00\n")
    fill(tmp_path, n_block=1, n_allow=0)
    assert main(["audit", "purge", "--all", "--state-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out == "deleted 1 record\n"


def test_report_is_self_contained_and_escaped(tmp_path):
    w = AuditWriter(tmp_path / "audit.db")
    w.submit({"ts": 1795000000.0, "app": "<script>x</script>", "decision": "block", "site": "a.org",
              "ip_exposed": False})
    w.close()
    assert main(["audit", "report", "--html", str(tmp_path / "r.html"), "--state-dir", str(tmp_path)]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "http://" not in page and "https://" not in page and "src=" not in page
    assert "default-src 'none'" in page


def test_report_legend_has_every_decision(tmp_path):
    """Every decision docs/audit.md names has its colour, and the legend shows each (and "other" for a
    decision the page does not know)."""
    from pathlib import Path

    from hush.daemon.audit.report import COLORS

    doc = (Path(__file__).parents[4] / "docs" / "audit.md").read_text()
    documented = {"allow", "passthrough", "strip", "block", "tor", "delay", "debounce", "tor-unavailable",
                  "superseded", "overflow", "shutdown", "abandoned", "revoked", "refused"}
    assert all(f"`{d}`" in doc for d in documented - {"allow", "passthrough", "strip", "tor", "delay", "debounce"})
    assert set(COLORS) == documented
    w = AuditWriter(tmp_path / "audit.db")
    for decision in (*documented, "from-the-future"):
        w.submit({"ts": 1795000000.0, "app": "a", "decision": decision, "site": "a.org", "ip_exposed": False})
    w.close()
    assert main(["audit", "report", "--html", str(tmp_path / "r.html"), "--state-dir", str(tmp_path)]) == 0
    legend = (tmp_path / "r.html").read_text().split('<p class="legend">')[1].split("</p>")[0]
    for decision, colour in (*COLORS.items(), ("other", "#444")):
        assert f'<span class="key" style="background:{colour}"></span>{decision}' in legend


def test_report_without_a_file_goes_to_the_state_dir(tmp_path, capsys):
    w = AuditWriter(tmp_path / "audit.db")
    w.submit({"ts": 1795000000.0, "app": "a", "decision": "block", "site": "a.org", "ip_exposed": False})
    w.close()
    assert main(["audit", "report", "--html", "--state-dir", str(tmp_path)]) == 0
    written = sorted(tmp_path.glob("report-*.html"))
    assert len(written) == 1 and re.fullmatch(r"report-\d{4}-\d\d-\d\d-\d{6}\.html", written[0].name)
    assert capsys.readouterr().out == f"wrote {written[0]}\n"
    assert main(["audit", "report", "--state-dir", str(tmp_path)]) == 0  # --html is the only format
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path}/report-")


def test_report_that_cannot_be_written(tmp_path, capsys):
    fill(tmp_path)
    target = tmp_path / "no" / "such" / "dir.html"
    assert main(["audit", "report", "--html", str(target), "--state-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"hush: cannot write the report to {target}: No such file or directory\n"
