"""hush policy suggest: a recorded audit → a policy that `policy check` accepts and that decides
the recorded requests as suggested (backends passthrough, previews debounce then tor, the rest block)."""

import time

import pytest

from hush.daemon.audit import queries
from hush.daemon.audit.store import AuditWriter
from hush.daemon.cli.main import main
from hush.daemon.exitstatus import ExitStatus
from hush.daemon.policy import RequestInfo, build
from hush.daemon.policy.suggest import gather, suggest

NOW = time.time()


def row(host, site, *, kind=None, level="request", duration_ms=None, ts=NOW - 3600, port=443, app="signal",
        scheme="https", conn=None, decision="learn"):
    return {"ts": ts, "app": app, "host": host, "site": site, "port": port, "kind": kind, "level": level,
            "duration_ms": duration_ms, "scheme": scheme, "decision": decision, "ip_exposed": True, "conn": conn,
            "ended": ts + (duration_ms or 0) / 1000 if duration_ms else None, "egress": "direct"}


RECORDED = [
    # the app's own servers: long-lived tunnels (10 min, 2 h) to one registrable domain, and one by address
    row("chat.signal.org", "signal.org", level="connect", duration_ms=600_000, conn="c1"),
    row("cdn.signal.org", "signal.org", level="connect", duration_ms=7_200_000, conn="c2"),
    row("cdn.signal.org", "signal.org", level="connect", duration_ms=1_000, conn="c3"),
    row("149.154.167.51", "149.154.167.51", level="connect", duration_ms=120_000, conn="c4"),
    # link previews of typed links
    *[row("example.com", "example.com", kind="preview", ts=NOW - 100 + i) for i in range(3)],
    row("www.news.example.org", "example.org", kind="preview"),
    # third parties
    *[row("www.googletagmanager.com", "googletagmanager.com", kind="other") for _ in range(5)],
    row("img.tracker.example.net", "example.net", kind="media", ts=NOW - 86400 * 2),
    row("img.tracker.example.net", "example.net", kind="media", level="connect", duration_ms=500, conn="c5"),
    # another app's, and one older than --since: not this app's policy
    row("other.example", "other.example", app="whatsapp"),
    row("old.example", "old.example", ts=NOW - 86400 * 30),
]
EXPECTED = {"signal.org": "passthrough", "149.154.167.51": "passthrough", "example.com": "debounce",
            "example.org": "debounce", "googletagmanager.com": "block", "example.net": "block"}


@pytest.fixture
def state(tmp_path):
    writer = AuditWriter(tmp_path / "audit.db")
    for r in RECORDED:
        writer.submit(dict(r))
    writer.close()
    return tmp_path


def test_the_suggestion_checks_and_decides_the_recorded_requests_as_suggested(state, tmp_path):
    conn = queries.open_db(state)
    sites = gather(conn, "signal", NOW - 7 * 86400, now=NOW)
    assert set(sites) == set(EXPECTED)
    assert sites["signal.org"].tunnels_long == 2 and sites["signal.org"].longest_s == 7200
    text = suggest("signal", sites, since="7d", now=NOW)
    policy_file = tmp_path / "signal.yaml"
    policy_file.write_text(text)
    assert main(["policy", "check", str(policy_file)]) == ExitStatus.OK  # its examples pass too
    ps = build([(str(policy_file), text)])
    assert ps.policies["signal"].default.name == "block"
    for r in RECORDED:
        if r["app"] != "signal" or r["ts"] < NOW - 7 * 86400:
            continue
        req = RequestInfo.from_url(f"{r['scheme']}://{r['host']}:{r['port']}/", kind=r["kind"] or "other")
        decision = ps.decide("signal", req)
        assert decision.action.name == EXPECTED[r["site"]], (r, decision.describe())
        if r["level"] == "connect" and EXPECTED[r["site"]] == "passthrough":  # decided before TLS, not intercepted
            assert ps.decide_connect("signal", r["host"], r["port"]).action.name == "passthrough"
    # the counts and first/last seen are comments above each rule
    assert "# googletagmanager.com: 5 request(s) (other 5); hosts www.googletagmanager.com; first " in text
    assert "# signal.org: 2 tunnel(s) open 60 s or more, longest 2.0 h; hosts cdn.signal.org, chat.signal.org" in text
    assert "then: tor" in text and "old.example" not in text and "other.example" not in text


def test_the_cli_prints_it_and_keeps_the_listener_of_the_current_policy(state, tmp_path, capsys):
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "signal.yaml").write_text("app: signal\nlisten: 8102\ndefault: learn\n")
    assert main(["policy", "suggest", "--app", "signal", "--since", "7d", "--state-dir", str(state),
                 "--policies", str(policies)]) == ExitStatus.OK
    out = capsys.readouterr().out
    assert out.startswith("# Suggested by `hush policy suggest --app signal --since 7d` on ")
    assert 'listen:\n  - {port: 8102, host: "127.0.0.1", mode: http}\n' in out
    (tmp_path / "s.yaml").write_text(out)
    assert main(["policy", "check", str(tmp_path / "s.yaml")]) == ExitStatus.OK


def test_no_records_of_the_app_is_not_found(state, capsys):
    assert main(["policy", "suggest", "--app", "nope", "--state-dir", str(state)]) == ExitStatus.NOT_FOUND
    assert "no records of app 'nope' since" in capsys.readouterr().err
    assert main(["policy", "suggest", "--app", "signal", "--since", "soon", "--state-dir", str(state)]) == \
        ExitStatus.USAGE
