import json
import sqlite3
import threading
import time

import pytest

from hush.daemon.audit.store import AuditWriter, redact


@pytest.mark.parametrize("mode, url, expected", [
    ("full", "https://a.b.example.com/p?q=1#f", "https://a.b.example.com/p?q=1#f"),
    ("no-query", "https://a.b.example.com/p?q=1#f", "https://a.b.example.com/p"),
    ("site", "https://a.b.example.com/p?q=1#f", "https://example.com/"),
    ("site", None, None),
])
def test_redact(mode, url, expected):
    assert redact(url, mode) == expected


def test_writer_batches_and_close_writes_everything(tmp_path):
    writer = AuditWriter(tmp_path / "a" / "audit.db", batch=100)
    threads = [threading.Thread(target=lambda k=k: [writer.submit({"ts": i, "decision": "allow", "app": str(k),
                                                                   "ip_exposed": True}) for i in range(1000)])
               for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    writer.close()
    conn = sqlite3.connect(tmp_path / "a" / "audit.db")
    assert conn.execute("SELECT COUNT(*) FROM records").fetchone() == (4000,)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert writer.written == 4000 and writer.pending == 0
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "a" / "audit.db").stat().st_mode & 0o777 == 0o600


class Refusing:
    """The writer's connection, whose writes fail ("disk full") while ``refuses()`` says so."""

    def __init__(self, real: sqlite3.Connection, refuses):
        self.real, self.refuses = real, refuses

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __enter__(self):
        return self.real.__enter__()

    def __exit__(self, *a):
        return self.real.__exit__(*a)

    def executemany(self, *a):
        if self.refuses():
            raise sqlite3.OperationalError("database or disk is full")
        return self.real.executemany(*a)


def test_writer_keeps_records_while_the_disk_refuses(tmp_path):
    writer = AuditWriter(tmp_path / "audit.db", retry_after=0.01)
    calls = iter(range(1, 1000))
    writer._conn = Refusing(writer._conn, lambda: next(calls) <= 3)
    for i in range(10):
        writer.submit({"ts": i, "decision": "block", "ip_exposed": False})
    writer.close()
    assert sqlite3.connect(tmp_path / "audit.db").execute("SELECT COUNT(*) FROM records").fetchone() == (10,)
    assert writer.failures == 3 and not writer.degraded


def test_the_queue_is_bounded_while_the_disk_refuses(tmp_path):
    """Past max_pending queued rows, new records are dropped and counted, not kept until memory runs out;
    once the disk writes again, what was queued is written and new records are queued again."""
    writer = AuditWriter(tmp_path / "audit.db", retry_after=0.01, max_pending=50)
    refusing = threading.Event()
    refusing.set()
    writer._conn = Refusing(writer._conn, refusing.is_set)
    writer.submit({"ts": 0, "decision": "block", "ip_exposed": False})  # the batch the writer retries
    deadline = time.monotonic() + 5
    while not writer.failures and time.monotonic() < deadline:
        time.sleep(0.01)
    for i in range(1, 201):
        writer.submit({"ts": i, "decision": "block", "ip_exposed": False})
    assert writer.pending == 50 and writer.dropped == 150
    refusing.clear()
    writer.close()
    writer.submit({"ts": 999, "decision": "block", "ip_exposed": False})  # after close: written at once
    rows = sqlite3.connect(tmp_path / "audit.db").execute("SELECT COUNT(*) FROM records").fetchone()
    assert rows == (1 + 50 + 1,) and writer.dropped == 150


def test_bad_path_fails_at_start(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError):
        AuditWriter(tmp_path / "file" / "audit.db")


def test_retention_removes_only_old_records(tmp_path):
    import time as _time

    now = _time.time()
    writer = AuditWriter(tmp_path / "audit.db", keep_days=7, purge_every=0.05)
    for age_days in (30, 8, 6, 0):
        writer.submit({"ts": now - age_days * 86400, "decision": "block", "ip_exposed": False})
    deadline = _time.monotonic() + 5
    while writer.purged < 2 and _time.monotonic() < deadline:
        _time.sleep(0.05)
        writer.submit({"ts": now, "decision": "allow", "ip_exposed": True})  # wake the thread
    writer.close()
    ages = sorted(round((now - ts) / 86400) for (ts,) in
                  sqlite3.connect(tmp_path / "audit.db").execute("SELECT ts FROM records"))
    assert writer.purged == 2
    assert all(age <= 6 for age in ages) and 6 in ages


def test_a_connection_row_is_completed_in_place(tmp_path):
    """A tunnel's row is written when it opens and rewritten (same conn, same
    id) when it connects and closes; other rows are untouched."""
    writer = AuditWriter(tmp_path / "audit.db")
    writer.submit({"ts": 1.0, "decision": "allow", "ip_exposed": False, "conn": "k1", "route": "none"})
    writer.submit({"ts": 2.0, "decision": "block", "ip_exposed": False})
    writer.submit({"ts": 1.0, "decision": "allow", "ip_exposed": True, "conn": "k1", "route": "direct"})
    writer.submit({"ts": 1.0, "decision": "allow", "ip_exposed": True, "conn": "k1", "route": "direct",
                   "ended": 5.5, "bytes_up": 10, "bytes_down": 20, "duration_ms": 4500.0})
    writer.close()
    rows = sqlite3.connect(tmp_path / "audit.db").execute(
        "SELECT id, decision, conn, route, ip_exposed, ended, bytes_up, bytes_down, typeof(ended) FROM records "
        "ORDER BY id").fetchall()
    assert rows == [(1, "allow", "k1", "direct", 1, 5.5, 10, 20, "real"),
                    (2, "block", None, None, 0, None, None, None, "null")]


OLD_SCHEMA = """
CREATE TABLE records (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, app TEXT, listener TEXT, level TEXT,
    method TEXT, scheme TEXT, host TEXT, port INTEGER, site TEXT, url TEXT, kind TEXT,
    decision TEXT NOT NULL, rule TEXT, policy_version TEXT, note TEXT,
    status INTEGER, ip_exposed INTEGER NOT NULL, carried TEXT, sent TEXT,
    bytes_up INTEGER, bytes_down INTEGER, duration_ms REAL, error TEXT,
    tor_isolation TEXT, tor_circuit TEXT, tor_exit TEXT,
    held_ms REAL, superseded_by TEXT, truncated INTEGER, process TEXT
);
"""


def test_an_older_database_is_migrated(tmp_path):
    path = tmp_path / "audit.db"
    old = sqlite3.connect(path)
    old.executescript(OLD_SCHEMA)
    for decision, tor in [("allow", None), ("block", None), ("tor", "hush/x"), ("delay", "hush/x"),
                          ("superseded", None), ("tor-unavailable", None), ("strip", None)]:
        old.execute("INSERT INTO records (ts, decision, ip_exposed, tor_isolation) VALUES (1, ?, 0, ?)",
                    (decision, tor))
    old.commit()
    old.close()
    writer = AuditWriter(path)
    writer.submit({"ts": 2.0, "decision": "allow", "ip_exposed": True, "conn": "c", "ended": 3.0, "exe": "/bin/x"})
    writer.submit({"ts": 2.0, "decision": "allow", "ip_exposed": True, "conn": "c", "ended": 4.0, "exe": "/bin/x"})
    writer.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT decision, egress FROM records WHERE id <= 7 ORDER BY id").fetchall() == [
        ("allow", "direct"), ("block", "none"), ("tor", "tor"), ("delay", "tor"), ("superseded", "none"),
        ("tor-unavailable", "none"), ("strip", "direct")]
    assert conn.execute("SELECT id, conn, ended, exe FROM records WHERE id > 7").fetchall() == [(8, "c", 4.0, "/bin/x")]
    types = {row[1]: row[2] for row in conn.execute("PRAGMA table_info(records)")}
    assert types["ended"] == "REAL" and types["conn"] == "TEXT"
    # opening it again changes nothing
    AuditWriter(path).close()
    assert conn.execute("SELECT COUNT(*) FROM records").fetchone() == (8,)


def test_a_batch_writes_one_row_per_connection_where_the_first_was(tmp_path):
    """A tunnel's row is submitted whole at open, at connect and at close (upserts on conn): in one
    batch only the last is written, at the first one's place — the database ends the same."""
    from hush.daemon.audit.store import COLUMNS, coalesce

    def row(conn, note):
        values = dict.fromkeys(COLUMNS)
        values.update(conn=conn, note=note, ts=1.0, decision="passthrough", ip_exposed=0)
        return tuple(values[c] for c in COLUMNS)

    rows = [row("a", "open"), row(None, "flow 1"), row("b", "open"), row("a", "connected"), row(None, "flow 2"),
            row("a", "closed")]
    note = COLUMNS.index("note")
    assert [r[note] for r in coalesce(rows)] == ["closed", "flow 1", "open", "flow 2"]
    writer = AuditWriter(tmp_path / "audit.db")
    for r in rows:
        writer.submit(dict(zip(COLUMNS, r, strict=True)))
    writer.close()
    conn = sqlite3.connect(tmp_path / "audit.db")
    assert conn.execute("SELECT conn, note FROM records ORDER BY id").fetchall() == [
        ("a", "closed"), (None, "flow 1"), ("b", "open"), (None, "flow 2")]


def test_carried_and_sent_are_stored_as_json_the_same_with_or_without_the_cache():
    from hush.daemon.audit.store import COLUMNS, _row

    at = COLUMNS.index("carried")
    for value in ({"cookies": 0}, {"cookies": False}, {"cookies": 0}, {"b": 1, "a": None}, {"list": [1, 2]},
                  {"nested": {"x": 1}}, {}, "already text", ["a"], {"r": (0,)}, {"r": (False,)}, {"x": -0.0},
                  {"x": 0.0}, {True: "a"}, {1: "a"}):
        row = _row({"decision": "allow", "carried": value, "ip_exposed": "yes"})
        expected = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        assert row[at] == expected  # 0 and False are not confused by the cache
        assert row[COLUMNS.index("ip_exposed")] == 1 and row[COLUMNS.index("egress")] == "direct"
