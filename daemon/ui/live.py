"""What the live view reads and does through the running daemon (the
:class:`hush.daemon.ui.server.Backend` of ``hush run``).

Everything runs on the daemon's event loop; file work goes to a thread.
Held flows are timing's (``delay``/``debounce``): "send now" releases one
as its timer would (the rule's ``then`` applies), "drop" ends it as
``dropped`` (answered 503 by hush, never sent, audited).  "Make a rule"
writes the app's policy file (daemon/ui/rules.py) and reloads through the
daemon's own reload — the same as SIGHUP or ``hush reload``: the whole set
validated, its examples run, the running set kept if anything fails — and
a refused reload puts the file back as it was.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hush.daemon.ui import rules

if TYPE_CHECKING:
    from hush.daemon.run import Daemon

log = logging.getLogger("hush.ui")

DROPPED = "dropped"  # the outcome of a held flow dropped from the page
HISTORY_HOURS = 24
# what a record let reach the site: as the page's egressOf (app.js) counts a live record
_HISTORY = """
SELECT COALESCE(app, '?'), CAST(ts / 3600 AS INTEGER) * 3600,
       CASE WHEN route = 'direct' THEN 'direct' WHEN route = 'tor' OR egress = 'tor' THEN 'tor'
            WHEN egress = 'direct' THEN 'direct' ELSE 'none' END,
       COUNT(*)
FROM records WHERE ts >= ? GROUP BY 1, 2, 3 ORDER BY 2
"""


def history(state_dir: Path, now: float, hours: int = HISTORY_HOURS) -> dict[str, Any]:
    """Per app and hour of the last ``hours``: flows kept from the site, via Tor, direct — from
    audit.db (read-only; blocking: call in a thread)."""
    from hush.daemon.audit.store import connect

    path = Path(state_dir) / "audit.db"
    since = (int(now) // 3600 - hours + 1) * 3600
    out: dict[str, dict[str, dict[str, int]]] = {}
    if not path.exists():
        return {"since": since, "hours": hours, "apps": out}
    conn = connect(path, readonly=True)
    try:
        for app, hour, egress, count in conn.execute(_HISTORY, (since,)):
            out.setdefault(app, {}).setdefault(str(int(hour)), {})[egress] = count
    finally:
        conn.close()
    return {"since": since, "hours": hours, "apps": out}


class DaemonBackend:
    def __init__(self, daemon: Daemon):
        self.daemon = daemon
        self._writing = asyncio.Lock()  # one policy edit at a time

    def _redaction(self) -> str:
        return self.daemon.config.redaction

    def _relative(self, file: str) -> str:
        try:
            return str(Path(file).relative_to(self.daemon.policies))
        except ValueError:
            return Path(file).name

    def state(self) -> dict[str, Any]:
        from hush.addons.audit import tunnel_record
        from hush.addons.notes import conn_notes

        current = self.daemon.policyset
        audit = self.daemon.hush.audit
        tunnels = []
        for tunnel in list(audit._open.values()) if audit is not None else []:
            try:
                wire = conn_notes(tunnel.client).wire if tunnel.client is not None else None
                tunnels.append(tunnel_record(tunnel, self._redaction(), wire))
            except Exception:  # a tunnel ending as it is read: it is simply not listed
                continue
        last = self.daemon.reloads[-1] if self.daemon.reloads else None
        return {
            "policy": {"version": current.version, "loaded_at": current.loaded_at, "dir": str(self.daemon.policies),
                       "last_reload": None if last is None else {"ok": last.ok, "at": last.at, "errors": last.errors,
                                                                 "trigger": last.trigger}},
            "apps": {app: {"file": self._relative(p.file), "default": p.default.name,
                           "listeners": [x.address for x in p.listeners]}
                     for app, p in sorted(current.policies.items())},
            "held": self.held_flows(),
            "tunnels": tunnels,
            "tor": self.daemon.tor.status(),
            "decisions": dict(audit.counts) if audit is not None else {},
            "now": time.time(),
        }

    def _held(self) -> list[Any]:
        timing = self.daemon.hush.timing
        return [h for group in timing._held.values() for h in group] if timing is not None else []

    def held_flows(self) -> list[dict[str, Any]]:
        from hush.addons.notes import notes
        from hush.daemon.audit.store import redact
        from hush.daemon.policy.hosts import normalize, site_of

        out = []
        now = time.monotonic()
        for held in self._held():
            flow = held.flow
            decision = notes(flow).decision
            then = getattr(decision.action, "then", None) if decision is not None else None
            host = normalize(flow.request.host)
            out.append({"id": flow.id, "app": held.app, "kind": held.kind, "host": host, "site": site_of(host),
                        "url": redact(flow.request.pretty_url, self._redaction(), site_of(host)),
                        "held_s": round(now - held.since, 1),
                        "rule": f"{self._relative(decision.source.file)}:{decision.source.line}"
                        if decision is not None else None,
                        "then": then.name if then is not None else None})
        return out

    async def history(self) -> dict[str, Any]:
        """The last 24 hours from the audit, per app and hour (SQLite in a thread; what the
        writer has not written yet comes a batch later)."""
        return await asyncio.to_thread(history, self.daemon.state_dir, time.time())

    def held(self, flow_id: str, do: str) -> str | None:
        if do not in ("release", "drop"):
            return "do must be release or drop"
        timing = self.daemon.hush.timing
        for held in self._held():
            if held.flow.id == flow_id and not held.future.done():
                if do == "drop":
                    from hush.addons.notes import notes

                    notes(held.flow).outcome = DROPPED
                timing._release(held, None if do == "release" else DROPPED)
                log.info("ui: %s a held flow of %s to %s", "sent" if do == "release" else "dropped", held.app,
                         held.flow.request.pretty_host)
                return None
        return "no such held flow (sent, dropped or timed out already)"

    async def make_rule(self, app: str, match: str, value: str, action: str) -> dict[str, Any]:
        policy = self.daemon.policyset.policies.get(app)
        if policy is None or policy.file not in {p.file for p in self.daemon.policyset.policies.values()}:
            return {"ok": False, "error": f"no policy for app {app!r}"}
        if app in self.daemon.policyset.organisation and \
                policy.file == self.daemon.policyset.organisation[app].file:
            return {"ok": False, "error": f"{app}'s policy is the organisation's; it is not edited from here"}
        path = Path(policy.file)
        async with self._writing:
            try:
                old, new, line = await asyncio.to_thread(rules.write_rule, path, app, match, value, action)
            except rules.RuleError as e:
                return {"ok": False, "error": str(e)}
            log.info("ui: added a rule to %s:%d (%s %s %s); reloading", path, line, action, match, value)
            ok = await self.daemon.reload("hush ui: make a rule")
            where = f"{self._relative(str(path))}:{line}"
            if ok:
                return {"ok": True, "file": where, "version": self.daemon.policyset.version}
            errors = self.daemon.reloads[-1].errors
            undone = await asyncio.to_thread(rules.undo, path, old, new)
            if undone:
                log.warning("ui: the reload refused the new rule; %s is back as it was", path)
            return {"ok": False, "file": where, "errors": errors, "undone": undone,
                    "error": "the policy set refused the new rule (still running the last good one); "
                             + ("the file is back as it was" if undone else f"{path} changed meanwhile: fix it")}
