"""The audit store: one SQLite row per decided flow, written off the event loop.

::

    writer = AuditWriter(state_dir / "audit.db")
    writer.submit(record)      # never blocks: a queue put
    writer.close()             # writes everything queued, then returns

The writer thread takes whatever is queued (up to ``batch`` records) and
writes it in one transaction, so a burst costs one commit per batch.  If the
disk refuses (full, read-only), the batch is kept and retried: enforcement
never waits for the audit.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import queue
import sqlite3
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

from hush.daemon.audit.redaction import DEFAULT_REDACTION, REDACTIONS

log = logging.getLogger("hush.audit")

__all__ = ["DEFAULT_REDACTION", "REDACTIONS", "AuditWriter", "redact"]

COLUMNS = (
    "ts", "app", "listener", "level", "method", "scheme", "host", "port", "site", "url", "kind",
    "decision", "rule", "policy_version", "note", "status", "ip_exposed", "carried", "sent",
    "bytes_up", "bytes_down", "duration_ms", "error", "tor_isolation", "tor_circuit", "tor_exit",
    "held_ms", "superseded_by", "truncated", "process",
    # added later (older databases get them by _migrate):
    "conn", "ended", "egress", "route", "exe", "dest",
)
_TYPES = {"ts": "REAL", "ended": "REAL", "port": "INTEGER", "status": "INTEGER", "ip_exposed": "INTEGER",
          "bytes_up": "INTEGER", "bytes_down": "INTEGER", "duration_ms": "REAL", "held_ms": "REAL",
          "truncated": "INTEGER"}
# What a decision lets leave, for rows an older hush wrote without ``egress``.
_EGRESS_OF_OLD_ROWS = """
UPDATE records SET egress = CASE
    WHEN decision IN ('block', 'superseded', 'overflow', 'shutdown', 'abandoned', 'tor-unavailable', 'revoked')
        THEN 'none'
    WHEN decision = 'tor' OR tor_isolation IS NOT NULL THEN 'tor'
    ELSE 'direct' END
WHERE egress IS NULL
"""
SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    app TEXT, listener TEXT, level TEXT,
    method TEXT, scheme TEXT, host TEXT, port INTEGER, site TEXT, url TEXT, kind TEXT,
    decision TEXT NOT NULL, rule TEXT, policy_version TEXT, note TEXT,
    status INTEGER, ip_exposed INTEGER NOT NULL,
    carried TEXT, sent TEXT,
    bytes_up INTEGER, bytes_down INTEGER, duration_ms REAL, error TEXT,
    tor_isolation TEXT, tor_circuit TEXT, tor_exit TEXT,
    held_ms REAL, superseded_by TEXT, truncated INTEGER, process TEXT,
    conn TEXT, ended REAL, egress TEXT, route TEXT, exe TEXT, dest TEXT
);
CREATE INDEX IF NOT EXISTS records_ts ON records (ts);
CREATE INDEX IF NOT EXISTS records_app_ts ON records (app, ts);
"""
# A connection-level row is written when the connection is decided and
# written again (same ``conn``) when it connects and when it closes: the
# later write completes the row in place, keeping its id.
_INSERT = (f"INSERT INTO records ({', '.join(COLUMNS)}) VALUES ({', '.join('?' for _ in COLUMNS)}) "
           f"ON CONFLICT (conn) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in COLUMNS if c != 'ts')}")
_STOP = object()


def redact(url: str | None, mode: str, site: str | None = None) -> str | None:
    """``full`` keeps the URL; ``no-query`` drops query and fragment;
    ``site`` keeps only scheme and registrable domain."""
    if not url or mode == "full":
        return url
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return None
    if mode == "no-query":
        return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    from hush.daemon.policy.hosts import site_of

    return f"{parts.scheme}://{site or site_of(parts.hostname or '')}/"


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    else:
        conn = sqlite3.connect(path, timeout=5, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(SCHEMA)
        _migrate(conn)
    conn.row_factory = sqlite3.Row
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    """Add columns a newer hush records to a database an older one made (and
    what older rows can be given of them), then the index on ``conn``."""
    have = {row[1] for row in conn.execute("PRAGMA table_info(records)")}
    for column in COLUMNS:
        if column not in have:
            conn.execute(f"ALTER TABLE records ADD COLUMN {column} {_TYPES.get(column, 'TEXT')}")
    if "egress" not in have:
        conn.execute(_EGRESS_OF_OLD_ROWS)
    conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS records_conn ON records (conn)")
    conn.commit()


def create_private(path: Path) -> None:
    """Make ``path``'s directory 0700 and the file 0600, before SQLite opens it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    os.chmod(path, 0o600)


MAX_PENDING = 100_000  # queued rows (~0.5 KB each) while SQLite cannot write: beyond them, new ones are dropped


# Seconds the writer waits after a record arrives, so that those that follow join its batch: woken for
# every record, the writer thread took the GIL from the event loop several times per connection (a tunnel's
# row is written at open, at connect and at close), measured as +0.1–0.2 ms on every new connection
# (bench/tunnels.py).  With the 5 ms a tunnel's row waits to be built (addons/audit.py's COALESCE), a
# crash loses at most the last 20 ms of rows, as before; a stop loses nothing (close()).
LINGER = 0.015


class AuditWriter:
    """Writes audit records to SQLite in a thread of its own, in batches.

    While the disk refuses (full, read-only), records wait in the queue and
    are retried; the queue is bounded (``max_pending``): past it, new records
    are dropped and counted (``dropped``, in ``hush status``) rather than let
    memory grow until the daemon dies — enforcement goes on either way."""

    def __init__(self, path: Path, *, batch: int = 2000, retry_after: float = 1.0, keep_days: int = 0,
                 purge_every: float = 3600.0, max_pending: int = MAX_PENDING, linger: float = LINGER):
        self.path = Path(path)
        self.batch = batch
        self.linger = linger
        self.max_pending = max_pending
        self.dropped = 0
        self.keep_days = keep_days  # 0: keep forever
        self.purge_every = purge_every
        self.purged = 0
        self._last_purge = 0.0
        self.retry_after = retry_after
        self.written = 0
        self.failures = 0
        self.last_error: str | None = None
        create_private(self.path)
        self._conn = connect(self.path)  # here, so a bad path fails at start
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        self._late_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="hush-audit-writer", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    @property
    def degraded(self) -> bool:
        return self.last_error is not None

    def submit(self, record: dict[str, Any]) -> None:
        """Queue one record.  It becomes a flat tuple here: the writer thread
        then does little but SQLite work (which releases the GIL), and a
        backlog of tuples of plain values costs the garbage collector nothing
        (a backlog of nested dicts caused 100 ms loop stalls)."""
        row = _row(record)
        if self._closed:
            self._write_late(row)
        elif self._queue.qsize() >= self.max_pending:
            if not self.dropped:
                log.error("audit: %d records wait for the disk (%s); dropping new ones until it writes again",
                          self.max_pending, self.last_error or "writing too slowly")
            self.dropped += 1
        else:
            self._queue.put(row)

    def _write_late(self, row: tuple) -> None:
        """A record that arrives after close() (a flow mitmproxy finished while
        shutting down): written at once, in the caller's thread — it is
        shutdown, and no record may be lost."""
        with self._late_lock:
            try:
                conn = sqlite3.connect(self.path, timeout=5)
                with conn:
                    conn.execute(_INSERT, row)
                conn.close()
                self.written += 1
            except sqlite3.Error as e:
                log.error("audit: could not write a record during shutdown: %s", e)

    def close(self, timeout: float = 30.0) -> None:
        """Write every queued record, then stop the thread; later records are
        written synchronously."""
        self._closed = True
        if self._thread.is_alive():
            self._queue.put(_STOP)
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("audit writer did not finish within %.0fs; %d records pending", timeout, self.pending)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            records = []
            self._maybe_purge()
            try:
                item = self._queue.get(timeout=min(60.0, self.purge_every))
            except queue.Empty:
                continue
            if self.linger and item is not _STOP:
                time.sleep(self.linger)  # the records that follow join this batch (the GIL is the loop's meanwhile)
            while True:
                if item is _STOP:
                    stopping = True
                    break
                records.append(item)
                if len(records) >= self.batch:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            while records and not self._write(records):
                if stopping and self.failures > 3:
                    log.error("audit: giving up on %d records at shutdown: %s", len(records), self.last_error)
                    break
                time.sleep(self.retry_after)
        self._conn.close()

    def _maybe_purge(self) -> None:
        """Retention: drop records older than keep_days, at most every purge_every seconds."""
        if not self.keep_days or time.monotonic() - self._last_purge < self.purge_every:
            return
        self._last_purge = time.monotonic()
        try:
            with self._conn:
                cur = self._conn.execute("DELETE FROM records WHERE ts < ?", (time.time() - self.keep_days * 86400,))
            if cur.rowcount:
                self.purged += cur.rowcount
                log.info("audit: removed %d records older than %d days", cur.rowcount, self.keep_days)
        except sqlite3.Error as e:
            log.warning("audit: retention purge failed: %s", e)

    def _write(self, rows: list[tuple]) -> bool:
        try:
            with self._conn:
                self._conn.executemany(_INSERT, coalesce(rows))
        except sqlite3.Error as e:
            self.failures += 1
            if self.last_error is None:
                log.error("audit: cannot write %d records (%s); enforcement goes on, retrying", len(rows), e)
            self.last_error = str(e)
            return False
        if self.last_error is not None:
            log.warning("audit: writing again after: %s", self.last_error)
            self.last_error = None
        self.written += len(rows)
        return True


_KEPT_BACK = frozenset({"block", "superseded", "overflow", "shutdown", "abandoned", "tor-unavailable", "revoked",
                        "dropped", "ask-mismatch"})


_CONN = COLUMNS.index("conn")


def coalesce(rows: list[tuple]) -> list[tuple]:
    """One batch's rows with one row per connection: a tunnel's row is written whole at open, at
    connect and at close (an upsert on ``conn``), and when two of those are in one batch only the
    last needs writing — where the first was, so ids keep the order rows were submitted in.  The
    database ends the same; SQLite does a third of the work for a short tunnel (bench/tunnels.py)."""
    first: dict[str, int] = {}
    out: list[tuple] = []
    for row in rows:
        key = row[_CONN]
        if key is None:
            out.append(row)
            continue
        at = first.get(key)
        if at is None:
            first[key] = len(out)
            out.append(row)
        else:
            out[at] = row
    return out


def egress_of(record: dict[str, Any]) -> str:
    """What a record's decision let leave, for a record that does not say
    (the same rule that fills ``egress`` in rows of older databases)."""
    if record.get("decision") in _KEPT_BACK:
        return "none"
    if record.get("decision") == "tor" or record.get("tor_isolation") is not None:
        return "tor"
    return "direct"


_AS_JSON = tuple(COLUMNS.index(column) for column in ("carried", "sent"))
_AS_FLAG = COLUMNS.index("ip_exposed")
_PLAIN = (str, int, bool, type(None))  # the values of a dict whose JSON _json_of may keep


@functools.lru_cache(maxsize=256)
def _json_of(items: tuple) -> str:
    return json.dumps({key: value for key, _, value in items}, sort_keys=True)


def _row(record: dict[str, Any]) -> tuple:
    """A record as the INSERT's parameters: plain values in COLUMNS order."""
    if record.get("egress") is None:
        record = {**record, "egress": egress_of(record)}
    row = list(map(record.get, COLUMNS))
    for i in _AS_JSON:
        value = row[i]
        if value is not None and not isinstance(value, str):
            if type(value) is dict and all(type(k) is str and type(v) in _PLAIN for k, v in value.items()):
                # most rows carry one of a few such dicts (a tunnel's: nothing but defaults); typed, as 0 == False
                row[i] = _json_of(tuple((k, type(v), v) for k, v in value.items()))
            else:
                row[i] = json.dumps(value, sort_keys=True)
    row[_AS_FLAG] = int(bool(row[_AS_FLAG]))
    return tuple(row)
