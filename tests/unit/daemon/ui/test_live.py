"""What the page does through the daemon (daemon/ui/live.py), with a stand-in daemon: a rule
written and reloaded, a refused reload undone, held flows sent or dropped."""

from __future__ import annotations

import asyncio
import types
from pathlib import Path

from hush.daemon.policy.loader import load
from hush.daemon.ui.live import DROPPED, DaemonBackend

POLICY = "# mine\napp: web\nlisten: 18999\ndefault: allow\nrules:\n  - {match: {host: a.invalid}, action: block}\n"


class Daemon:
    def __init__(self, directory: Path, reload_ok: bool = True):
        self.policies = directory
        self.config = types.SimpleNamespace(redaction="full")
        self.policyset = load([directory])
        self.reloads: list = []
        self.reload_ok = reload_ok
        self.hush = types.SimpleNamespace(audit=None, timing=None)
        self.tor = types.SimpleNamespace(status=lambda: {"state": "off"})

    async def reload(self, trigger: str) -> bool:
        errors = [] if self.reload_ok else ["web.yaml:9:5: an example failed"]
        self.reloads.append(types.SimpleNamespace(ok=self.reload_ok, at=0.0, errors=errors, trigger=trigger))
        if self.reload_ok:
            self.policyset = load([self.policies])
        return self.reload_ok


def policy_dir(tmp_path: Path) -> Path:
    (tmp_path / "web.yaml").write_text(POLICY)
    return tmp_path


def test_make_a_rule_writes_and_reloads(tmp_path: Path) -> None:
    daemon = Daemon(policy_dir(tmp_path))
    result = asyncio.run(DaemonBackend(daemon).make_rule("web", "site", "example.com", "block"))
    assert result == {"ok": True, "file": "web.yaml:7", "version": daemon.policyset.version}
    assert daemon.reloads[0].trigger == "hush ui: make a rule"
    text = (tmp_path / "web.yaml").read_text()
    assert text.startswith("# mine\n") and 'match: {site: "example.com"}' in text
    assert daemon.policyset.policies["web"].rules[0].action.name == "block"


def test_a_refused_reload_puts_the_file_back(tmp_path: Path) -> None:
    daemon = Daemon(policy_dir(tmp_path), reload_ok=False)
    result = asyncio.run(DaemonBackend(daemon).make_rule("web", "host", "x.org", "tor"))
    assert not result["ok"] and result["undone"] is True
    assert result["errors"] == ["web.yaml:9:5: an example failed"]
    assert "the file is back as it was" in result["error"]
    assert (tmp_path / "web.yaml").read_text() == POLICY


def test_what_cannot_be_written(tmp_path: Path) -> None:
    daemon = Daemon(policy_dir(tmp_path))
    backend = DaemonBackend(daemon)
    assert asyncio.run(backend.make_rule("nope", "host", "x.org", "block")) == {
        "ok": False, "error": "no policy for app 'nope'"}
    assert asyncio.run(backend.make_rule("web", "path", "x.org", "block"))["error"] == \
        "match must be one of host, site, not 'path'"
    assert daemon.reloads == [] and (tmp_path / "web.yaml").read_text() == POLICY


def test_state_without_audit_or_timing(tmp_path: Path) -> None:
    state = DaemonBackend(Daemon(policy_dir(tmp_path))).state()
    assert state["apps"] == {"web": {"file": "web.yaml", "default": "allow", "listeners": ["127.0.0.1:18999"]}}
    assert state["held"] == [] and state["tunnels"] == [] and state["tor"] == {"state": "off"}


def test_held_flows_are_sent_or_dropped(tmp_path: Path) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        released: list = []

        def held(flow_id: str):
            flow = types.SimpleNamespace(id=flow_id, metadata={},
                                         request=types.SimpleNamespace(pretty_host="x.org"))
            return types.SimpleNamespace(flow=flow, app="web", future=loop.create_future())

        a, b = held("a"), held("b")
        timing = types.SimpleNamespace(_held={"web": [a, b]},
                                       _release=lambda h, outcome: (released.append((h.flow.id, outcome)),
                                                                    h.future.set_result(outcome)))
        daemon = Daemon(policy_dir(tmp_path))
        daemon.hush = types.SimpleNamespace(audit=None, timing=timing)
        backend = DaemonBackend(daemon)
        assert backend.held("a", "release") is None
        assert backend.held("b", "drop") is None
        assert released == [("a", None), ("b", DROPPED)]
        assert backend.held("a", "drop") == "no such held flow (sent, dropped or timed out already)"
        assert backend.held("a", "later") == "do must be release or drop"
    asyncio.run(main())


def test_history_counts_the_audit_per_app_and_hour(tmp_path: Path) -> None:
    from hush.daemon.audit.store import AuditWriter
    from hush.daemon.ui.live import history

    now = 1_800_000_000.0  # 2027-01-15 08:00 UTC
    hour = int(now) // 3600 * 3600
    writer = AuditWriter(tmp_path / "audit.db")
    for ts, app, decision, egress, route in [
        (now, "a", "block", "none", "none"), (now, "a", "block", "none", "none"),
        (now - 3600, "a", "tor", "tor", "tor"), (now, "a", "allow", "direct", "direct"),
        (now, "b", "tor-unavailable", "none", "none"),
        (now - 30 * 3600, "a", "allow", "direct", "direct"),  # older than 24 h: not counted
    ]:
        writer.submit({"ts": ts, "app": app, "decision": decision, "egress": egress, "route": route,
                       "host": "x.org", "port": 443, "ip_exposed": route == "direct"})
    writer.close()
    got = history(tmp_path, now)
    assert got["hours"] == 24 and got["since"] == hour - 23 * 3600
    assert got["apps"] == {"a": {str(hour): {"none": 2, "direct": 1}, str(hour - 3600): {"tor": 1}},
                           "b": {str(hour): {"none": 1}}}
    assert history(tmp_path / "nothing", now)["apps"] == {}  # no audit yet
