"""Audit: one record per decided flow, handed to the writer thread.

A record says what the request *carried* that identifies the user (as the app
sent it: ``hush.carried``) and what was actually *sent* to the site (after
the action, and only if a connection to the site was really made), whether
the user's IP reached the site, the decision and the rule, bytes and duration.
Tunnels decided at connection level are recorded from the ``hush_tunnel``
hooks: a refused one at once, a relayed one when it closes.

Under a stock ``mitmdump -s``, ``--set hush_state_dir=DIR`` names where
``audit.db`` goes.  On shutdown (``done``) every queued record is written.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Optional

from mitmproxy import ctx, exceptions, http

from hush.addons.flowinfo import fail_closed, identifiers
from hush.addons.tunnel import Tunnel
from hush.daemon.audit import DEFAULT_REDACTION, REDACTIONS, AuditWriter, redact
from hush.daemon.policy.hosts import normalize, site_of

log = logging.getLogger("hush.audit")


def _decision_fields(decision, outcome: str | None = None) -> dict:
    return {
        "decision": outcome or decision.action.name,
        "rule": decision.ref if decision.rule is not None or decision.note is None else None,
        "policy_version": decision.policy_version,
        "note": decision.note,
        "level": decision.level,
    }


def _tor_fields(route) -> dict:
    if route is None:
        return {}
    exit_ = f"{route.exit[0]}~{route.exit[1]}" if route.exit else None
    return {"tor_isolation": route.isolation, "tor_circuit": route.circuit, "tor_exit": exit_}


def _redacted_identifiers(values: dict | None, mode: str) -> dict | None:
    if values is None:
        return None
    out = dict(values)
    if out.get("referer"):
        out["referer"] = redact(out["referer"], mode)
    return out


def _outcome(flow: http.HTTPFlow) -> str | None:
    outcome = flow.metadata.get("hush.outcome")
    if outcome is None and flow.metadata.get("hush.tor") is not None and flow.error and not flow.response:
        outcome = "tor-unavailable"  # routed into tor, which failed (or died) while carrying it
    return outcome


def flow_record(flow: http.HTTPFlow, redaction: str) -> dict:
    req = flow.request
    decision = flow.metadata.get("hush.decision") or fail_closed(flow.metadata.get("hush.app"), "not decided")
    host = getattr(decision, "host", None) or normalize(req.host)  # a Host/target that decided more strictly
    site = site_of(host)
    server = flow.server_conn
    direct = server.timestamp_tcp_setup is not None  # a TCP connection from this machine to the site
    via_tor = server.via is not None and server.timestamp_start is not None
    sent = identifiers(req.headers) if direct or via_tor else None
    end = (flow.response.timestamp_end if flow.response and flow.response.timestamp_end else None) or time.time()
    return {
        "ts": req.timestamp_start,
        "app": flow.metadata.get("hush.app"),
        "listener": flow.metadata.get("hush.listener"),
        "method": req.method,
        "scheme": req.scheme,
        "host": host,
        "port": req.port,
        "site": site,
        "url": redact(req.pretty_url if req.method != "CONNECT" else None, redaction, site),
        "kind": flow.metadata.get("hush.kind"),
        **_decision_fields(decision, _outcome(flow)),
        "status": flow.response.status_code if flow.response else None,
        "ip_exposed": direct and server.via is None,
        "carried": _redacted_identifiers(flow.metadata.get("hush.carried"), redaction),
        "sent": _redacted_identifiers(sent, redaction),
        "bytes_up": len(req.raw_content or b""),
        "bytes_down": flow.metadata.get("hush.bytes_down",
                                        len(flow.response.raw_content or b"") if flow.response else 0),
        "duration_ms": round((end - req.timestamp_start) * 1000, 3),
        "error": flow.error.msg if flow.error else None,
        **_tor_fields(flow.metadata.get("hush.tor")),
        "held_ms": flow.metadata.get("hush.held_ms"),
        "superseded_by": redact(flow.metadata.get("hush.superseded_by"), redaction),
        "truncated": 1 if flow.metadata.get("hush.truncated") else None,
        "process": flow.metadata.get("hush.process"),
    }


def tunnel_record(tunnel: Tunnel, redaction: str) -> dict:
    decision = tunnel.decision
    direct = decision.action.egress == "direct" and tunnel.error is None and tunnel.outcome is None
    carried = identifiers({"user-agent": tunnel.user_agent} if tunnel.user_agent else {})
    end = tunnel.ended or time.time()
    return {
        "ts": tunnel.started,
        "app": tunnel.app,
        "listener": tunnel.listener,
        "method": "CONNECT",
        "scheme": None,
        "host": tunnel.host,
        "port": tunnel.port,
        "site": site_of(tunnel.host),
        "url": None,
        "kind": "other",
        **_decision_fields(decision, tunnel.outcome),
        "status": tunnel.flow.response.status_code if tunnel.flow and tunnel.flow.response else None,
        "ip_exposed": direct,
        "carried": _redacted_identifiers(carried, redaction),
        "sent": None,  # the tunnel's bytes are the app's own TLS: hush never saw inside
        "bytes_up": None,
        "bytes_down": None,
        "duration_ms": round((end - tunnel.started) * 1000, 3) if tunnel.ended else None,
        "error": tunnel.error,
        **_tor_fields(tunnel.route),
    }


class Audit:
    def __init__(self):
        self.writer: AuditWriter | None = None
        self.counts: collections.Counter[str] = collections.Counter()  # decisions since start
        self._open: dict[int, Tunnel] = {}

    def load(self, loader):
        loader.add_option(
            "hush_state_dir", Optional[str], None,
            "Where hush keeps audit.db. The daemon sets it; set it yourself under mitmdump -s.",
        )
        loader.add_option(
            "hush_audit_redaction", str, DEFAULT_REDACTION,
            "How much of each URL the audit keeps: full, no-query (drop the query string), "
            "or site (scheme and registrable domain only).",
            choices=REDACTIONS,
        )
        loader.add_option(
            "hush_audit_keep_days", int, 0,
            "Delete audit records older than this many days (0: keep them all).",
        )

    def configure(self, updated):
        if "hush_audit_keep_days" in updated and self.writer is not None:
            self.writer.keep_days = ctx.options.hush_audit_keep_days
        if "hush_state_dir" in updated and ctx.options.hush_state_dir:
            from pathlib import Path

            if self.writer is not None:
                self.writer.close()
            try:
                self.writer = AuditWriter(Path(ctx.options.hush_state_dir) / "audit.db",
                                          keep_days=ctx.options.hush_audit_keep_days)
            except Exception as e:
                raise exceptions.OptionsError(f"Cannot open the audit database in {ctx.options.hush_state_dir}: {e}")

    def _emit(self, record: dict) -> None:
        self.counts[record["decision"]] += 1
        if self.writer is not None:
            self.writer.submit(record)
        else:
            log.info("audit: %s", record)

    # flows
    def response(self, flow: http.HTTPFlow) -> None:
        self._flow(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._flow(flow)

    def record(self, flow: http.HTTPFlow) -> None:
        """Record ``flow`` now (once); for flows hush answers while stopping."""
        self._flow(flow)

    def _flow(self, flow: http.HTTPFlow) -> None:
        if flow.metadata.get("hush.audited") or flow.request.method == "CONNECT":
            return
        flow.metadata["hush.audited"] = True
        try:
            self._emit(flow_record(flow, ctx.options.hush_audit_redaction))
        except Exception:
            log.exception("audit: could not record %s", flow.request.pretty_url)

    # tunnels
    def hush_tunnel(self, tunnel: Tunnel) -> None:
        if tunnel.decision.action.egress != "none" and tunnel.error is None and tunnel.outcome is None:
            self._open[id(tunnel)] = tunnel  # recorded when it closes, with its duration
        else:
            self._emit(tunnel_record(tunnel, ctx.options.hush_audit_redaction))

    def hush_tunnel_end(self, tunnel: Tunnel) -> None:
        if self._open.pop(id(tunnel), None) is not None:
            self._emit(tunnel_record(tunnel, ctx.options.hush_audit_redaction))

    def done(self) -> None:
        for tunnel in list(self._open.values()):
            self._emit(tunnel_record(tunnel, ctx.options.hush_audit_redaction))
        self._open.clear()
        if self.writer is not None:
            self.writer.close()


addons = [Audit()]
