import sqlite3
import threading

import pytest

from hush.daemon.audit import AuditWriter, redact


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


def test_writer_keeps_records_while_the_disk_refuses(tmp_path, monkeypatch):
    writer = AuditWriter(tmp_path / "audit.db", retry_after=0.01)
    real = writer._conn
    calls = {"n": 0}

    class Flaky:
        def __getattr__(self, name):
            return getattr(real, name)

        def __enter__(self):
            return real.__enter__()

        def __exit__(self, *a):
            return real.__exit__(*a)

        def executemany(self, *a):
            calls["n"] += 1
            if calls["n"] <= 3:
                raise sqlite3.OperationalError("database or disk is full")
            return real.executemany(*a)

    writer._conn = Flaky()
    for i in range(10):
        writer.submit({"ts": i, "decision": "block", "ip_exposed": False})
    writer.close()
    assert sqlite3.connect(tmp_path / "audit.db").execute("SELECT COUNT(*) FROM records").fetchone() == (10,)
    assert writer.failures == 3 and not writer.degraded


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
