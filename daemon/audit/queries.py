"""The audit's queries: tail, summary, show, export and the report's read it (safe while hush runs);
purge deletes."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from hush.daemon.audit.store import COLUMNS, connect

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str, now: float | None = None) -> float:
    """``24h``, ``30m``, ``7d`` → a timestamp that long ago; or an ISO date/time.

    :raises ValueError: with the accepted forms.
    """
    now = time.time() if now is None else now
    m = _DURATION.match(text.strip())
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"cannot read --since {text!r}: use e.g. 30m, 24h, 7d or 2026-11-22T10:00") from None


def open_db(state_dir: Path) -> sqlite3.Connection:
    """:raises FileNotFoundError: if hush has not written an audit yet."""
    path = state_dir / "audit.db"
    if not path.exists():
        raise FileNotFoundError(f"no audit database at {path} (has hush run with --state-dir {state_dir}?)")
    conn = connect(path, readonly=True)
    have = {row[1] for row in conn.execute("PRAGMA table_info(records)")}
    if not set(COLUMNS) <= have:  # written by an older hush that has not run since: migrate it first
        conn.close()
        connect(path).close()
        conn = connect(path, readonly=True)
    return conn


def as_dict(row: sqlite3.Row) -> dict:
    out = dict(row)
    for key in ("carried", "sent"):
        if out.get(key):
            out[key] = json.loads(out[key])
    out["ip_exposed"] = bool(out["ip_exposed"])
    return out


def tail(conn: sqlite3.Connection, limit: int = 20, after_id: int = 0) -> list[dict]:
    """The newest ``limit`` records with id > after_id, oldest first."""
    rows = conn.execute(
        "SELECT * FROM records WHERE id > ? ORDER BY id DESC LIMIT ?", (after_id, limit)
    ).fetchall()
    return [as_dict(r) for r in reversed(rows)]


def ended(conn: sqlite3.Connection, ids: list[int]) -> list[dict]:
    """Of the connection-level records ``ids`` (written when their connection
    was decided), those completed since: their ``ended`` is set, with the byte
    counts and duration (the row is rewritten in place, keeping its id)."""
    rows: list[sqlite3.Row] = []
    for i in range(0, len(ids), 500):  # SQLite's limit on parameters
        chunk = ids[i:i + 500]
        rows += conn.execute(f"SELECT * FROM records WHERE ended IS NOT NULL AND id IN ({', '.join('?' * len(chunk))})",
                             chunk).fetchall()
    return sorted((as_dict(r) for r in rows), key=lambda r: r["id"])


def apps(conn: sqlite3.Connection) -> list[str]:
    """Every app the audit has records of, sorted."""
    return [row[0] for row in conn.execute("SELECT DISTINCT app FROM records WHERE app IS NOT NULL ORDER BY app")]


def show(conn: sqlite3.Connection, record_id: int) -> dict | None:
    row = conn.execute("SELECT * FROM records WHERE id = ?", (record_id,)).fetchone()
    return as_dict(row) if row else None


def records(conn: sqlite3.Connection, since: float = 0) -> Iterator[sqlite3.Row]:
    """Every record from ``since`` on, oldest first, as the database returns them (for an export)."""
    return conn.execute("SELECT * FROM records WHERE ts >= ? ORDER BY id", (since,))


def purge(path: Path, before: float | None) -> int:
    """Delete the records older than ``before`` (``inf``: every one) and give their space back.

    :returns: how many were deleted
    """
    conn = connect(path)
    with conn:
        deleted = conn.execute("DELETE FROM records WHERE ts < ?", (before,)).rowcount
    conn.execute("VACUUM")
    conn.close()
    return deleted


# A leak is *prevented* when the app's request carried it, the site did not get
# it, and it was the decision that kept it away: ``egress`` is what the decision
# lets leave (``direct``, ``tor``, ``none``).  An ``allow`` whose upstream failed
# (DNS error, refused, the app gone) sent nothing, but prevented nothing either.
_WITHHELD = "(egress = 'none' OR sent IS NOT NULL)"  # nothing was to be sent, or what was sent is known
_PREVENTED = {
    "ip": "ip_exposed = 0 AND egress IN ('none', 'tor')",
    "user_agent": f"{_WITHHELD} AND json_extract(carried, '$.user_agent') IS NOT NULL AND "
                  "json_extract(carried, '$.user_agent') IS NOT COALESCE(json_extract(sent, '$.user_agent'), '')",
    "cookies": f"{_WITHHELD} AND COALESCE(json_extract(carried, '$.cookies'), 0) > 0 AND "
               "COALESCE(json_extract(sent, '$.cookies'), 0) = 0",
    "referer": f"{_WITHHELD} AND json_extract(carried, '$.referer') IS NOT NULL AND "
               "json_extract(sent, '$.referer') IS NULL",
    "accept_language": f"{_WITHHELD} AND json_extract(carried, '$.accept_language') IS NOT NULL AND "
                       "json_extract(sent, '$.accept_language') IS NULL",
}


# What time does to flows: held and sent (delay, debounce), the outcomes of holding, and caps (max_bytes).
_TIMING = {
    "delayed": "decision IN ('delay', 'debounce')",  # held, then sent
    "superseded": "decision = 'superseded'",
    "overflow": "decision = 'overflow'",
    "abandoned": "decision = 'abandoned'",
    "truncated": "truncated = 1",
}


def summary(conn: sqlite3.Connection, since: float | None = None, app: str | None = None) -> dict:
    """Per app: requests, by decision, sites, and leaks prevented."""
    where: list[str] = ["1=1"]
    args: list[float | str] = []
    if since is not None:
        where.append("ts >= ?")
        args.append(since)
    if app is not None:
        where.append("app IS ?")
        args.append(app)
    cond = " AND ".join(where)
    apps: dict[str, dict] = {}
    prevented_cols = ", ".join(f"SUM(CASE WHEN {e} THEN 1 ELSE 0 END) AS {name}" for name, e in _PREVENTED.items())
    timing_cols = ", ".join(f"SUM(CASE WHEN {e} THEN 1 ELSE 0 END) AS {name}" for name, e in _TIMING.items())
    for row in conn.execute(
        f"SELECT COALESCE(app, '?') AS app, COUNT(*) AS requests, COUNT(DISTINCT site) AS sites, "
        f"SUM(ip_exposed) AS ip_exposed, {prevented_cols}, {timing_cols} FROM records WHERE {cond} "
        f"GROUP BY 1 ORDER BY 1",
        args,
    ):
        apps[row["app"]] = {
            "requests": row["requests"],
            "sites": row["sites"],
            "ip_exposed": row["ip_exposed"] or 0,
            "timing": {name: row[name] or 0 for name in _TIMING},
            "by_decision": {},
            "prevented": {name: row[name] or 0 for name in _PREVENTED},
            "top_sites": [],
        }
    for row in conn.execute(
        f"SELECT COALESCE(app, '?') AS app, decision, COUNT(*) AS n FROM records WHERE {cond} "
        f"GROUP BY 1, 2 ORDER BY 1, 3 DESC",
        args,
    ):
        apps[row["app"]]["by_decision"][row["decision"]] = row["n"]
    for row in conn.execute(
        f"SELECT app, site, n FROM (SELECT COALESCE(app, '?') AS app, site, COUNT(*) AS n, "
        f"ROW_NUMBER() OVER (PARTITION BY COALESCE(app, '?') ORDER BY COUNT(*) DESC, site) AS k "
        f"FROM records WHERE {cond} GROUP BY 1, 2) WHERE k <= 5 ORDER BY app, n DESC, site",
        args,
    ):
        apps[row["app"]]["top_sites"].append({"site": row["site"], "requests": row["n"]})
    return {"since": since, "apps": apps}


# -- for the HTML report ----------------------------------------------------------------


def timeline(conn: sqlite3.Connection, since: float | None) -> tuple[int, list[tuple[float, str, int]]]:
    """(bucket seconds, [(bucket start, decision, count)])."""
    first, last = conn.execute("SELECT MIN(ts), MAX(ts) FROM records WHERE ts >= ?", (since or 0,)).fetchone()
    if first is None:
        return 3600, []
    span = max(last - first, 1)
    bucket = next(b for b in (60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400) if span / b <= 60)
    rows = conn.execute(
        "SELECT CAST(ts / ? AS INTEGER) * ? AS t, decision, COUNT(*) FROM records WHERE ts >= ? "
        "GROUP BY 1, 2 ORDER BY 1", (bucket, bucket, since or 0)).fetchall()
    return bucket, [(t, d, n) for t, d, n in rows]


def by_rule(conn: sqlite3.Connection, since: float | None) -> list[tuple]:
    """The 50 commonest (app, rule or note, decision, count)."""
    return conn.execute(
        "SELECT COALESCE(app, '?'), COALESCE(rule, note, '-'), decision, COUNT(*) FROM records WHERE ts >= ? "
        "GROUP BY 1, 2, 3 ORDER BY 4 DESC LIMIT 50", (since or 0,)).fetchall()
