"""Reading the audit: tail, summary, show.  Read-only; safe while hush runs."""

from __future__ import annotations

import json
import re
import sqlite3
import time
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


def show(conn: sqlite3.Connection, record_id: int) -> dict | None:
    row = conn.execute("SELECT * FROM records WHERE id = ?", (record_id,)).fetchone()
    return as_dict(row) if row else None


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


# Time as a policy dimension (issue: delay, debounce, caps).
_TIMING = {
    "delayed": "decision IN ('delay', 'debounce')",  # held, then sent
    "superseded": "decision = 'superseded'",
    "overflow": "decision = 'overflow'",
    "abandoned": "decision = 'abandoned'",
    "truncated": "truncated = 1",
}


def summary(conn: sqlite3.Connection, since: float | None = None, app: str | None = None) -> dict:
    """Per app: requests, by decision, sites, and leaks prevented."""
    where, args = ["1=1"], []
    if since is not None:
        where.append("ts >= ?")
        args.append(since)
    if app is not None:
        where.append("app IS ?")
        args.append(app)
    cond = " AND ".join(where)
    apps: dict[str, dict] = {}
    prevented_cols = ", ".join(f"SUM(CASE WHEN {expr} THEN 1 ELSE 0 END) AS {name}" for name, expr in _PREVENTED.items())
    timing_cols = ", ".join(f"SUM(CASE WHEN {expr} THEN 1 ELSE 0 END) AS {name}" for name, expr in _TIMING.items())
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
