"""``hush audit summary``: a leak counts as prevented only where the decision kept it from the site."""

from hush.daemon.audit.store import AuditWriter, connect
from hush.daemon.audit.queries import summary

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
