"""``hush audit summary``: a leak counts as prevented only where the decision kept it from the site."""

import sqlite3
from datetime import UTC, datetime

import pytest

from hush.daemon.audit.queries import by_rule, open_db, parse_since, purge, records, show, summary, tail, timeline
from hush.daemon.audit.store import AuditWriter, connect

CARRIED = {"user_agent": "WhatsApp/2", "cookies": 2, "referer": "https://a.org/", "accept_language": "de",
           "range": None, "authorization": False}
NONE_SENT = {"user_agent": None, "cookies": 0, "referer": None, "accept_language": None}


def rec(decision, *, ip_exposed=False, sent=None, egress=None, **kw):
    r = {"ts": 1.0, "app": "x", "site": "a.org", "decision": decision, "ip_exposed": ip_exposed,
         "carried": CARRIED, "sent": sent, **kw}
    if egress is not None:
        r["egress"] = egress
    return r


def prevented(tmp_path, *records):
    writer = AuditWriter(tmp_path / "audit.db")
    for r in records:
        writer.submit(r)
    writer.close()
    return summary(connect(tmp_path / "audit.db", readonly=True))["apps"]["x"]["prevented"]


ALL = {"ip": 1, "user_agent": 1, "cookies": 1, "referer": 1, "accept_language": 1}
NOTHING = {"ip": 0, "user_agent": 0, "cookies": 0, "referer": 0, "accept_language": 0}


def test_allow_whose_upstream_failed_prevented_nothing(tmp_path):
    # DNS error, connection refused, the app gone: nothing reached the site, but not because of hush
    assert prevented(tmp_path, rec("allow", error="Name or service not known"),
                     rec("allow", error="Connection refused"), rec("strip", error="client disconnected"),
                     rec("passthrough", level="connect")) == NOTHING


def test_refused_by_hush_but_decided_to_go_prevented_nothing(tmp_path):
    # the egress guard or mitmproxy stopped it; the decision would have sent it
    assert prevented(tmp_path, rec("refused", egress="direct", error="hush: no decision permits …")) == NOTHING


def test_what_the_decision_kept_back(tmp_path):
    assert prevented(tmp_path, rec("block")) == ALL
    assert prevented(tmp_path / "2", rec("superseded")) == ALL
    assert prevented(tmp_path / "3", rec("tor-unavailable")) == ALL
    assert prevented(tmp_path / "4", rec("revoked", egress="none")) == ALL


def test_tor_keeps_the_ip_not_what_it_sent(tmp_path):
    sent = {"user_agent": "WhatsApp/2", "cookies": 2, "referer": "https://a.org/", "accept_language": "de"}
    assert prevented(tmp_path, rec("tor", sent=sent, tor_isolation="hush/x")) == {**NOTHING, "ip": 1}


def test_strip_sent_without_identifiers(tmp_path):
    sent = {"user_agent": "Mozilla/5.0", "cookies": 0, "referer": None, "accept_language": None}
    assert prevented(tmp_path, rec("strip", ip_exposed=True, sent=sent)) == {**ALL, "ip": 0}
    # a strip that exposed nothing because its upstream failed: only what it would not have sent is unknown
    assert prevented(tmp_path / "2", rec("strip", sent=None)) == NOTHING


def test_allow_that_reached_the_site(tmp_path):
    sent = {"user_agent": "WhatsApp/2", "cookies": 2, "referer": "https://a.org/", "accept_language": "de"}
    assert prevented(tmp_path, rec("allow", ip_exposed=True, sent=sent)) == NOTHING
    assert prevented(tmp_path / "2", rec("block", sent=NONE_SENT)) == ALL


def test_an_older_database_is_migrated_before_it_is_read(tmp_path):
    import sqlite3

    from hush.daemon.audit.queries import open_db

    from .test_store import OLD_SCHEMA

    old = sqlite3.connect(tmp_path / "audit.db")
    old.executescript(OLD_SCHEMA)
    old.execute("INSERT INTO records (ts, app, decision, ip_exposed, carried) VALUES (1, 'x', 'block', 0, ?)",
                ('{"user_agent": "WhatsApp/2", "cookies": 1}',))
    old.execute("INSERT INTO records (ts, app, decision, ip_exposed, carried, error) VALUES (1, 'x', 'allow', 0, ?, "
                "'Connection refused')", ('{"user_agent": "WhatsApp/2", "cookies": 1}',))
    old.commit()
    old.close()
    x = summary(open_db(tmp_path))["apps"]["x"]
    assert x["prevented"] == {"ip": 1, "user_agent": 1, "cookies": 1, "referer": 0, "accept_language": 0}


# -- reading the audit: tail, show, summary, and the report's and the CLI's queries ------


def written(tmp_path, *records):
    """An audit database holding ``records`` (through the writer, as hush writes them), opened read-only."""
    writer = AuditWriter(tmp_path / "audit.db")
    for r in records:
        writer.submit(r)
    writer.close()
    return open_db(tmp_path)


def row(ts, app="x", site="a.org", decision="allow", **kw):
    return {"ts": ts, "app": app, "site": site, "host": site, "decision": decision, "ip_exposed": False, **kw}


@pytest.mark.parametrize(("text", "ago"), [("30s", 30), ("30m", 1800), ("24h", 86400), ("7d", 7 * 86400),
                                           ("2w", 14 * 86400), ("1.5h", 5400), (" 10m ", 600)])
def test_since_as_a_duration(text, ago):
    assert parse_since(text, now=1_000_000.0) == 1_000_000.0 - ago


def test_since_as_an_iso_date_and_time():
    assert parse_since("2026-11-22T10:00+00:00") == datetime(2026, 11, 22, 10, tzinfo=UTC).timestamp()
    assert parse_since("2026-11-22") == datetime(2026, 11, 22).timestamp()  # local midnight


@pytest.mark.parametrize("text", ["yesterday", "10", "10y", "-5m", "", "2026-13-01"])
def test_since_that_cannot_be_read_names_the_accepted_forms(text):
    with pytest.raises(ValueError, match=r"cannot read --since .*use e\.g\. 30m, 24h, 7d or 2026-11-22T10:00"):
        parse_since(text)


def test_no_database_yet_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no audit database at .*has hush run with --state-dir"):
        open_db(tmp_path)


def test_the_reader_cannot_write(tmp_path):
    conn = written(tmp_path, row(1.0))
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        conn.execute("DELETE FROM records")


def test_tail_is_the_newest_oldest_first_and_follows_from_an_id(tmp_path):
    conn = written(tmp_path, *(row(float(i), site=f"s{i}.org") for i in range(1, 8)))
    last3 = tail(conn, limit=3)
    assert [r["site"] for r in last3] == ["s5.org", "s6.org", "s7.org"]
    assert [r["site"] for r in tail(conn, limit=2, after_id=last3[0]["id"])] == ["s6.org", "s7.org"]
    assert tail(conn, after_id=last3[-1]["id"]) == []  # nothing new


def test_show_decodes_what_the_writer_encoded(tmp_path):
    sent = {"user_agent": None, "cookies": 0, "referer": None, "accept_language": None}
    conn = written(tmp_path, row(1.0, decision="strip", ip_exposed=True, carried=CARRIED, sent=sent),
                   row(2.0, decision="block"))
    first, second = tail(conn)
    got = show(conn, first["id"])
    assert got == first
    assert got["carried"] == CARRIED and got["sent"] == sent and got["ip_exposed"] is True
    assert show(conn, second["id"])["ip_exposed"] is False and show(conn, second["id"])["carried"] is None
    assert show(conn, second["id"] + 100) is None


def test_summary_per_app_by_decision_sites_and_timing(tmp_path):
    conn = written(tmp_path,
                   *(row(10.0, site="a.org") for _ in range(3)), row(11.0, site="b.org", decision="block"),
                   row(12.0, site="c.org", decision="delay", ip_exposed=True), row(13.0, decision="superseded"),
                   row(14.0, decision="allow", truncated=True), row(15.0, app=None, decision="block"),
                   row(16.0, app="y", site="d.org", decision="overflow"))
    apps = summary(conn)["apps"]
    assert sorted(apps) == ["?", "x", "y"]  # no app: "?"
    x = apps["x"]
    assert (x["requests"], x["sites"], x["ip_exposed"]) == (7, 3, 1)
    assert x["by_decision"] == {"allow": 4, "block": 1, "delay": 1, "superseded": 1}
    assert next(iter(x["by_decision"])) == "allow"  # commonest first
    assert x["timing"] == {"delayed": 1, "superseded": 1, "overflow": 0, "abandoned": 0, "truncated": 1}
    assert x["top_sites"][0] == {"site": "a.org", "requests": 5}
    assert apps["y"]["timing"]["overflow"] == 1 and apps["?"]["by_decision"] == {"block": 1}


def test_summary_since_and_for_one_app(tmp_path):
    conn = written(tmp_path, row(10.0), row(20.0), row(30.0), row(30.0, app="y"))
    assert summary(conn, since=20.0)["apps"]["x"]["requests"] == 2
    assert summary(conn, since=20.0)["since"] == 20.0
    assert list(summary(conn, app="y")["apps"]) == ["y"]
    assert summary(conn, since=99.0)["apps"] == {}


def test_summary_top_sites_are_five_most_requested(tmp_path):
    counts = {"a.org": 6, "b.org": 5, "c.org": 4, "d.org": 3, "e.org": 2, "f.org": 1, "g.org": 1}
    conn = written(tmp_path, *(row(1.0, site=s) for s, n in counts.items() for _ in range(n)))
    top = summary(conn)["apps"]["x"]["top_sites"]
    assert top == [{"site": s, "requests": n} for s, n in list(counts.items())[:5]]


def test_records_from_a_time_on_oldest_first(tmp_path):
    conn = written(tmp_path, row(30.0, site="late.org"), row(10.0, site="early.org"), row(20.0, site="mid.org"))
    assert [r["site"] for r in records(conn, since=15.0)] == ["late.org", "mid.org"]  # in writing order
    assert len(list(records(conn))) == 3


def test_purge_deletes_what_is_older_and_says_how_many(tmp_path):
    written(tmp_path, row(10.0), row(20.0), row(30.0)).close()
    assert purge(tmp_path / "audit.db", 25.0) == 2
    assert [r["ts"] for r in tail(open_db(tmp_path))] == [30.0]
    assert purge(tmp_path / "audit.db", float("inf")) == 1
    assert tail(open_db(tmp_path)) == []


def test_timeline_buckets_fit_the_span(tmp_path):
    assert timeline(written(tmp_path / "empty"), None) == (3600, [])
    conn = written(tmp_path, row(0.0), row(59.0), row(61.0, decision="block"), row(3000.0))
    bucket, points = timeline(conn, None)
    assert bucket == 60  # 50 minutes: at most 60 buckets of one minute
    assert points == [(0, "allow", 2), (60, "block", 1), (3000, "allow", 1)]
    assert timeline(conn, 61.0) == (60, [(60, "block", 1), (3000, "allow", 1)])
    wide = written(tmp_path / "wide", row(0.0), row(30 * 86400.0))
    assert timeline(wide, None)[0] == 86400


def test_by_rule_commonest_first(tmp_path):
    conn = written(tmp_path, *(row(1.0, decision="block", rule="p.yaml:7") for _ in range(3)),
                   row(1.0, decision="block", note="fail-closed: no policy"), row(1.0), row(1.0, app=None))
    assert [tuple(r) for r in by_rule(conn, None)] == [
        ("x", "p.yaml:7", "block", 3), ("?", "-", "allow", 1), ("x", "-", "allow", 1),
        ("x", "fail-closed: no policy", "block", 1)]
