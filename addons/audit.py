"""Audit: one record per decided flow, handed to the writer thread.

A record says what the request *carried* that identifies the user (as the app
sent it: classify's ``carried`` note) and what was actually *sent* to the site (after
the action, and only if a connection to the site was really made), whether
the user's IP reached the site, the decision and the rule, bytes and duration.
Two columns keep apart what was decided and what happened: ``egress`` is what
the decision lets leave (``direct``, ``tor``, ``none``), ``route`` what really
left (a connection from this machine to the site, one through tor, nothing).

Tunnels decided at connection level are recorded from the ``hush_tunnel``
hooks: a refused one at once; a relayed one when the decision is applied,
again (the same row, keyed by ``conn``) when its connection is made, and when
it closes, with its bytes and duration — so a crash loses at most the writer's
batch, and a tunnel open for hours is in the audit while it is open.

Under a stock ``mitmdump -s``, ``--set hush_state_dir=DIR`` names where
``audit.db`` goes.  On shutdown (``done``) every queued record is written.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mitmproxy import addonmanager, connection, ctx, exceptions, http
from mitmproxy import flow as mflow
from mitmproxy.proxy import server_hooks

from hush.addons.flowinfo import Identifiers, fail_closed, identifiers
from hush.addons.notes import conn_notes, notes
from hush.addons.tunnel import Counted, Tally, Tunnel
from hush.daemon.audit.store import DEFAULT_REDACTION, REDACTIONS, AuditWriter, redact
from hush.daemon.policy.hosts import normalize, site_of
from hush.daemon.policy.model import Decision

if TYPE_CHECKING:
    from mitmproxy.proxy.layer import NextLayer

    from hush.addons.torroute import Route, TorRoute
    from hush.daemon.audit.ship import Shipper

Record = dict[str, Any]  # one row of the audit table

log = logging.getLogger("hush.audit")


# Outcomes that are hush's own doing, by policy: the flow was kept from the site.
# ``refused`` is not one of them: the decision would have sent it, and hush
# stopped it for another reason (the egress guard, a protocol it does not carry).
KEPT_BACK = frozenset({"tor-unavailable", "superseded", "overflow", "shutdown", "abandoned", "revoked",
                       "dropped"})  # dropped: a held flow the user dropped in the live view (daemon/ui)
REFUSED = "refused"
# Seconds a relayed tunnel's row waits, once its decision is applied, before it is built and handed
# to the writer: what changes meanwhile (its connection to the site made, then closed) joins that one
# row.  A tunnel shorter than this gets one row, complete, instead of three builds of it on the event
# loop (open, connected, closed: 0.13 ms of CPU per new connection, docs/performance.md "Stop 23").
# The row is kept meanwhile, so a stop writes it; a crash loses at most these milliseconds and the
# writer's (daemon/audit/store.py's LINGER).
COALESCE = 0.005
DUE_PER_TURN = 100  # rows built per turn of the event loop once due (~4 ms)


def _egress(decision: Decision, outcome: str | None) -> str:
    """What the decision lets leave: ``direct``, ``tor`` or ``none``."""
    return "none" if outcome in KEPT_BACK else decision.action.egress


NO_OWNER = "fail-closed: no policy owns this listener"
_DETAIL = {"hash": 0, "site": 1, "no-query": 2, "full": 3}  # how much of a URL a redaction keeps


def _rule(decision: Decision) -> str | None:
    """Where the deciding rule (or default) is, ``FILE:LINE``; `` (organisation)``
    after it when the organisation's floor decided (docs/policy.md)."""
    if decision.rule is None and decision.note is not None:
        return None
    return decision.ref + (" (organisation)" if decision.layer == "organisation" else "")


def _decision_fields(decision: Decision, outcome: str | None = None, unidentified: str | None = None) -> Record:
    """``unidentified``: on a shared listener, why no app was identified
    (decide only knows that there is none)."""
    return {
        "decision": outcome or decision.action.name,
        "rule": _rule(decision),
        "policy_version": decision.policy_version,
        "note": f"fail-closed: {unidentified}" if unidentified and decision.note == NO_OWNER else decision.note,
        "level": decision.level,
        "egress": _egress(decision, outcome),
    }


def _refused_by_hush(error: str | None) -> bool:
    """The flow's connection was refused by hush itself, not by the network:
    the egress guard (``hush: …``), or mitmproxy killing what it does not
    carry (an h2c preface)."""
    return error is not None and (error.startswith("hush:") or "hush: no decision permits" in error
                            or "hush: egress check failed" in error or error == mflow.Error.KILLED_MESSAGE)


def _tor_fields(route: Route | None) -> Record:
    if route is None:
        return {}
    exit_ = f"{route.exit[0]}~{route.exit[1]}" if route.exit else None
    return {"tor_isolation": route.isolation, "tor_circuit": route.circuit, "tor_exit": exit_}


def _redacted_identifiers(values: Identifiers | None, mode: str) -> Identifiers | None:
    if values is None:
        return None
    out = values.copy()
    if out["referer"]:
        out["referer"] = redact(out["referer"], mode)
    return out


def _dest(address: tuple[str, int] | None) -> str | None:
    """``host:port`` (``[v6]:port``) of where a connection goes (or was asked to go)."""
    if not address:
        return None
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _route(server: connection.Server) -> str:
    """What really left for a flow: ``direct`` (a TCP connection from this
    machine to the site), ``tor`` (a connection through tor), ``none``."""
    if server.via is not None:
        return "tor" if server.timestamp_start is not None else "none"
    return "direct" if server.timestamp_tcp_setup is not None else "none"


def _outcome(flow: http.HTTPFlow, route: str) -> str | None:
    n = notes(flow)
    outcome = n.outcome
    if outcome is None and n.tor is not None and flow.error and not flow.response:
        outcome = "tor-unavailable"  # routed into tor, which failed (or died) while carrying it
    decision = n.decision
    if (outcome is None and route == "none" and flow.error and not flow.response and decision is not None
            and decision.action.egress != "none" and _refused_by_hush(flow.error.msg)):
        outcome = REFUSED  # decided to go, stopped by hush: not what the decision did
    return outcome


def _revoked(flow: http.HTTPFlow) -> str | None:
    now = notes(flow).revoked_by
    if now is None:
        return None
    return f"revoked on reload: policy set {now.policy_version} decides it {now.action.name} by {now.describe()}"


def flow_record(flow: http.HTTPFlow, redaction: str) -> Record:
    req = flow.request
    n = notes(flow)
    decision = n.decision or fail_closed(n.app, "not decided")
    host = getattr(decision, "host", None) or normalize(req.host)  # a Host/target that decided more strictly
    site = site_of(host)
    route = _route(flow.server_conn)
    sent = identifiers(req.headers) if route != "none" else None
    end = (flow.response.timestamp_end if flow.response and flow.response.timestamp_end else None) or time.time()
    return {
        "ts": req.timestamp_start,
        "app": n.app,
        "listener": n.listener,
        "method": req.method,
        "scheme": req.scheme,
        "host": host,
        "port": req.port,
        "site": site,
        "url": redact(req.pretty_url if req.method != "CONNECT" else None, redaction, site),
        "kind": n.kind,
        **_decision_fields(decision, _outcome(flow, route), conn_notes(flow.client_conn).unidentified),
        "status": flow.response.status_code if flow.response else None,
        "ip_exposed": route == "direct",
        "route": route,
        "dest": _dest(flow.server_conn.address) if route != "none" else None,
        "ended": end,
        "carried": _redacted_identifiers(n.carried, redaction),
        "sent": _redacted_identifiers(sent, redaction),
        "bytes_up": len(req.raw_content or b""),
        "bytes_down": n.bytes_down if n.bytes_down is not None else
        len(flow.response.raw_content or b"") if flow.response else 0,
        "duration_ms": round((end - req.timestamp_start) * 1000, 3),
        "error": flow.error.msg if flow.error else _revoked(flow),
        **_tor_fields(n.tor),
        "held_ms": n.held_ms,
        "superseded_by": redact(n.superseded_by, redaction),
        "truncated": 1 if n.truncated else None,
        "process": n.process,
        "exe": n.exe,
    }


@dataclasses.dataclass
class Wire:
    """What one client connection did on the wire, as mitmproxy's connection
    hooks saw it (a SOCKS5 tunnel has no flow to carry it)."""

    tally: Tally | None = None  # bytes, when its contents were counted
    routes: set[str] = dataclasses.field(default_factory=set)  # "direct", "tor": connections made
    refused: str | None = None  # the egress guard's refusal
    tunnels: list[Tunnel] = dataclasses.field(default_factory=list)  # its tunnels whose rows are not complete
    process: str | None = None
    exe: str | None = None
    unidentified: str | None = None  # why no app was identified (shared listeners)


def tunnel_record(tunnel: Tunnel, redaction: str, wire: Wire | None = None) -> Record:
    """The tunnel's row as it stands: open (``ended`` null) or closed."""
    decision = tunnel.decision
    if decision is None:
        raise ValueError("an undecided tunnel has no row")
    wire = wire or Wire()
    route = "direct" if "direct" in wire.routes else "tor" if "tor" in wire.routes else "none"
    outcome, error = tunnel.outcome, tunnel.error
    if outcome is None and route == "none" and wire.refused and decision.action.egress != "none":
        outcome, error = REFUSED, error or wire.refused
    carried = identifiers({"user-agent": tunnel.user_agent} if tunnel.user_agent else {})
    refused_at_once = decision.action.egress == "none" or outcome is not None or tunnel.error is not None
    end = tunnel.ended or (time.time() if refused_at_once else None)
    tally = wire.tally
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
        **_decision_fields(decision, outcome, wire.unidentified),
        "status": tunnel.flow.response.status_code if tunnel.flow and tunnel.flow.response else None,
        "ip_exposed": route == "direct",
        "route": route,
        # the destination the app asked for (a SOCKS5 client that resolved the
        # name itself gives an address, and the row's host is its TLS SNI)
        "dest": _dest(tunnel.address or (tunnel.host, tunnel.port)),
        "carried": _redacted_identifiers(carried, redaction),
        "sent": None,  # the tunnel's bytes are the app's own TLS: hush never saw inside
        "bytes_up": tally.up if tally else None,
        "bytes_down": tally.down if tally else None,
        "duration_ms": round((end - tunnel.started) * 1000, 3) if end else None,
        "ended": end,
        "error": error,
        **_tor_fields(tunnel.route),
        "process": wire.process,
        "exe": wire.exe,
        "conn": tunnel.key,
    }


class Audit:
    def __init__(self, router: TorRoute | None = None):
        self.router = router  # to tell a connection to tor from one to the site (wired in chain())
        self.writer: AuditWriter | None = None
        self.shipper: Shipper | None = None  # audit.ship: the daemon sets it (docs/fleet.md)
        self.counts: collections.Counter[str] = collections.Counter()  # decisions since start
        self.live: Callable[[Record], None] | None = None  # the live view (daemon/ui): the daemon sets it
        # tunnels whose row is not complete, by key, while their connection lives (it holds them)
        self._open: weakref.WeakValueDictionary[str, Tunnel] = weakref.WeakValueDictionary()
        # tunnel rows waiting COALESCE seconds to be built, by key, with the wire each would have used
        self._due: dict[str, tuple[Tunnel, Wire | None]] = {}
        self._due_timer: asyncio.Handle | None = None
        self._due_loop: asyncio.AbstractEventLoop | None = None  # the loop whose timer writes them
        self._stopped = False  # done(): every row is built at once from then on

    def load(self, loader: addonmanager.Loader) -> None:
        loader.add_option(
            # mitmproxy types typespec as `type`, but takes (and compares equal) X | None
            "hush_state_dir", str | None, None,  # type: ignore[arg-type]
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

    def configure(self, updated: set[str]) -> None:
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
                raise exceptions.OptionsError(
                    f"Cannot open the audit database in {ctx.options.hush_state_dir}: {e}") from e

    def _emit(self, record: Record, flow: http.HTTPFlow | None = None) -> None:
        if record.get("conn") is None:
            self.counts[record["decision"]] += 1  # tunnels are counted in hush_tunnel
        if self.live is not None:  # the live view sees the record as the audit keeps it (redacted)
            try:
                self.live(record)
            except Exception:
                log.exception("audit: the live view could not take a record")
        if self.writer is not None:
            self.writer.submit(record)
        else:
            log.info("audit: %s", record)
        if self.shipper is not None:
            self._ship(self.shipper, record, flow)

    @staticmethod
    def _ship(shipper: Shipper, record: Record, flow: http.HTTPFlow | None) -> None:
        """Hand the record to the shipper, which redacts it its own way: a flow's
        record is built again only if shipping keeps more of its URL than the local audit."""
        try:
            if flow is not None and _DETAIL[shipper.redaction] > _DETAIL[ctx.options.hush_audit_redaction]:
                record = flow_record(flow, shipper.redaction)
            shipper.submit(record)
        except Exception:
            log.exception("audit: could not ship a record")

    # flows
    def response(self, flow: http.HTTPFlow) -> None:
        self._flow(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._flow(flow)

    def record(self, flow: http.HTTPFlow) -> None:
        """Record ``flow`` now (once); for flows hush answers while stopping."""
        self._flow(flow)

    def _flow(self, flow: http.HTTPFlow) -> None:
        n = notes(flow)
        if n.audited:
            return
        if flow.request.method == "CONNECT":
            if not self._unopened(flow):
                return
            if n.decision is None:
                version = getattr(n.policy, "version", "") or ""
                n.decision = fail_closed(n.app, "refused by mitmproxy before any decision", version, "connect")
        n.audited = True
        if self._due:
            self._due_of(flow.client_conn)
        try:
            self._emit(flow_record(flow, ctx.options.hush_audit_redaction), flow)
        except Exception:
            log.exception("audit: could not record %s", flow.request.pretty_url)

    @staticmethod
    def _unopened(flow: http.HTTPFlow) -> bool:
        """A CONNECT decide opened no tunnel for: mitmproxy refused its head (its framing) before
        hush decided anything, so the request's row is all that records it.  Any other CONNECT's
        row is its tunnel's, or its requests' if it was inspected."""
        tunnel = conn_notes(flow.client_conn).tunnel
        return tunnel is None or tunnel.flow is not flow

    # tunnels: what their connections do on the wire
    @staticmethod
    def _wire(client: connection.Client | None) -> Wire:
        """What the connection did (its own state: ``conn_notes``); a fresh one for no connection."""
        if client is None:
            return Wire()
        state = conn_notes(client)
        if state.wire is None:
            state.wire = Wire()
        return state.wire

    def _tunnel(self, tunnel: Tunnel, now: bool = False) -> None:
        """The tunnel's row as it stands: built now if ``now`` (or it ended, or no loop runs, or the
        audit has stopped), else within COALESCE seconds, as it stands then."""
        wire = conn_notes(tunnel.client).wire if tunnel.client is not None else None
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if self._due and loop is not self._due_loop:
            self._write_due(everything=True)  # the loop that was to write them stopped: now, before anything newer
        if now or tunnel.ended is not None or loop is None or self._stopped:
            self._due.pop(tunnel.key, None)
            self._tunnel_row(tunnel, wire)
            return
        if self._due_timer is None or self._due_loop is not loop:
            if self._due_timer is not None:
                self._due_timer.cancel()  # another loop's, with nothing due
            self._due_timer, self._due_loop = loop.call_later(COALESCE, self._write_due), loop
        self._due[tunnel.key] = (tunnel, wire)

    def _due_of(self, client: connection.Client | None) -> None:
        """The rows due of the tunnels on ``client``'s connection, now: a tunnel's row comes before
        the rows of the flows inside it."""
        wire = conn_notes(client).wire if client is not None else None
        for tunnel in wire.tunnels if wire is not None else ():
            if self._due.pop(tunnel.key, None) is not None:
                self._tunnel_row(tunnel, wire)

    def _write_due(self, everything: bool = False) -> None:
        """Build the rows that are due, at most DUE_PER_TURN in one turn of the loop (a burst of
        new tunnels is not one long stall); the rest in the next turns, in order."""
        if self._due_timer is not None:
            self._due_timer.cancel()
            self._due_timer = None
        loop = self._due_loop
        spread = not (everything or self._stopped or loop is None or loop.is_closed())
        for _ in range(min(DUE_PER_TURN, len(self._due)) if spread else len(self._due)):
            key = next(iter(self._due))
            tunnel, wire = self._due.pop(key)
            self._tunnel_row(tunnel, wire)
        if self._due:
            assert loop is not None
            self._due_timer = loop.call_soon(self._write_due)
        else:
            self._due_loop = None

    def _tunnel_row(self, tunnel: Tunnel, wire: Wire | None) -> None:
        try:
            self._emit(tunnel_record(tunnel, ctx.options.hush_audit_redaction, wire))
        except Exception:
            log.exception("audit: could not record the tunnel to %s:%s", tunnel.host, tunnel.port)

    def next_layer(self, nextlayer: NextLayer) -> None:
        """Count the bytes of a tunnel's contents (the first layer chosen for a
        connection whose destination is known: a CONNECT's tunnel, a SOCKS5
        connection), in front of whatever layer was chosen."""
        context = nextlayer.context
        if nextlayer.layer is None or context.server.address is None:
            return
        wire = self._wire(context.client)
        if wire.tally is None:
            wire.tally = Tally()
            nextlayer.layer = Counted(context, nextlayer.layer, wire.tally)

    def hush_tunnel(self, tunnel: Tunnel) -> None:
        decision = tunnel.decision
        if decision is None:
            return  # inspected: its requests are recorded
        wire = self._wire(tunnel.client)
        state = conn_notes(tunnel.client) if tunnel.client is not None else None
        owner = state.owner if state is not None else None  # what identify found, on a shared listener
        if owner is not None:
            wire.process = ", ".join(sorted(owner.names)) or owner.name
            wire.exe = ", ".join(sorted({h.exe for h in owner.holders if h.exe})) or owner.exe
        wire.unidentified = state.unidentified if state is not None else None
        if decision.action.egress != "none" and tunnel.error is None and tunnel.outcome is None:
            self._open[tunnel.key] = tunnel  # written now, completed when it connects and when it closes
            wire.tunnels.append(tunnel)
        self.counts[tunnel.outcome or decision.action.name] += 1  # once: the row is written up to 3 times
        # a refused one is complete now; a relayed one is built within COALESCE (its connection, its end)
        self._tunnel(tunnel, now=tunnel.key not in self._open)

    def record_tunnel(self, tunnel: Tunnel) -> None:
        """One complete row for a connection hush refused before mitmproxy saw
        it (a launch's connection to a destination hush cannot name)."""
        if tunnel.decision is not None:
            self.counts[tunnel.outcome or tunnel.decision.action.name] += 1
            self._tunnel(tunnel, now=True)

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """After act's egress guard: remember a refusal, for the tunnel's row."""
        error = data.server.error
        if error and error.startswith("hush:"):
            self._wire(data.client).refused = error

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        wire = conn_notes(data.client).wire
        if wire is None:
            return
        manager = self.router.manager if self.router is not None else None
        tor = manager.tunnel_address if manager is not None else None
        address = data.server.address
        wire.routes.add("tor" if tor is not None and address is not None and tuple(address) == tuple(tor)
                        else "direct")
        for tunnel in wire.tunnels:
            self._tunnel(tunnel)  # a live view sees that it reached the site (or tor)

    def hush_tunnel_end(self, tunnel: Tunnel) -> None:
        if self._open.pop(tunnel.key, None) is not None:
            wire = conn_notes(tunnel.client).wire if tunnel.client is not None else None
            if wire is not None and tunnel in wire.tunnels:
                wire.tunnels.remove(tunnel)
            self._tunnel(tunnel, now=True)  # complete: the row due meanwhile is this one

    def client_disconnected(self, client: connection.Client) -> None:
        conn_notes(client).wire = None  # a row written after the connection ended says nothing of its wire

    def done(self) -> None:
        self._stopped = True
        for tunnel in list(self._open.values()):
            tunnel.ended = tunnel.ended or time.time()
            self._tunnel(tunnel, now=True)  # complete (its row due meanwhile is this one)
        self._write_due(everything=True)  # any other row that was due
        self._open.clear()
        if self.writer is not None:
            self.writer.close()


addons = [Audit()]
