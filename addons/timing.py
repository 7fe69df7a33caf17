"""Timing: the flows ``delay`` and ``debounce`` hold, and their bounds.

Holding is an ``await`` on a future that a timer resolves (``loop.call_later``),
never a sleep: other flows keep moving.  Each held flow ends one way:

- ``None`` — released: the rule's ``then`` action is applied and it goes on;
- ``"superseded"`` — a newer request of the same app extended (or shared a
  typed prefix with) its URL, or typed its host further with the same path
  (:func:`related`): only the URL standing when typing stops leaves;
- ``"overflow"`` — too many flows held already (per app, or in total): it is
  refused at once, never sent early;
- ``"shutdown"`` — hush is stopping: answered locally, never released;
- ``"revoked"`` — a reload brought a policy set that decides the flow more
  strictly (:meth:`Timing.policy_changed`): answered locally, never sent;
- ``"abandoned"`` — the app closed its connection while the flow was held
  (it gave up on the request): dropped, never sent, and its place freed at
  once rather than when its timer runs out.  A sweep notices this within
  ``SWEEP_SECONDS`` (mitmproxy does not call any hook while a request hook
  is pending, so the client connection's state is checked).  HTTP/1 only:
  an HTTP/2 stream reset by the app stays held until its timer.

The act addon awaits :meth:`Timing.delay` / :meth:`Timing.debounce` (through
the holding actions); on ``done`` every flow still held is answered and
audited here, before the audit writer closes.  ``chain()`` hands it identify
(which app a held flow's connection is under a new policy set) and audit.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import urllib.parse
from typing import TYPE_CHECKING

from mitmproxy import addonmanager, ctx, http
from mitmproxy.connection import ConnectionState

from hush.addons.actions.base import local_response
from hush.addons.flowinfo import fail_closed, request_info
from hush.addons.notes import notes
from hush.daemon.policy.model import PolicySet

if TYPE_CHECKING:
    from hush.addons.audit import Audit
    from hush.addons.identify import Identify

log = logging.getLogger("hush.timing")

SWEEP_SECONDS = 1.0


def url_key(url: str) -> str:
    """The typed form of a URL, for prefix comparison: no scheme, no trailing slash."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    rest = parts.path + (f"?{parts.query}" if parts.query else "")
    return f"{host}{port}{rest}".rstrip("/")


def related(a: str, b: str) -> bool:
    """One URL is the other, typed further (or backspaced) — its path, or its
    host with the same path: a Matrix client resolves the server of the ID being
    typed at ``https://m/.well-known/…``, ``https://ma/.well-known/…`` (NeoChat 23.01)."""
    if a.startswith(b) or b.startswith(a):
        return True
    host_a, _, rest_a = a.partition("/")
    host_b, _, rest_b = b.partition("/")
    return bool(rest_a) and rest_a == rest_b and (host_a.startswith(host_b) or host_b.startswith(host_a))


@dataclasses.dataclass(eq=False)
class Held:
    flow: http.HTTPFlow
    app: str
    kind: str  # "delay" | "debounce"
    key: str
    future: asyncio.Future[str | None]
    timer: asyncio.TimerHandle | None = None
    since: float = dataclasses.field(default_factory=time.monotonic)


class Timing:
    def __init__(self, identify: Identify | None = None, audit: Audit | None = None):
        self.identify = identify
        self.audit = audit
        self._held: dict[str, list[Held]] = {}
        self.total = 0
        self._sweeper: asyncio.Task[None] | None = None

    def load(self, loader: addonmanager.Loader) -> None:
        loader.add_option("hush_max_held_per_app", int, 500,
                          "At most this many flows held (delay/debounce) per app; more are refused (overflow).")
        loader.add_option("hush_max_held_total", int, 1000,
                          "At most this many flows held in all; more are refused (overflow).")

    def held(self, app: str | None = None) -> int:
        return self.total if app is None else len(self._held.get(app, ()))

    def _admit(self, app: str) -> bool:
        return self.held(app) < ctx.options.hush_max_held_per_app and self.total < ctx.options.hush_max_held_total

    def _release(self, held: Held, outcome: str | None) -> None:
        if held.timer is not None:
            held.timer.cancel()
        if not held.future.done():
            held.future.set_result(outcome)

    async def _hold(self, flow: http.HTTPFlow, app: str, kind: str, key: str, seconds: float) -> str | None:
        if not self._admit(app):
            log.warning("overflow: %d flows held for %s, %d in all; refusing %s", self.held(app), app, self.total,
                        flow.request.pretty_host)
            return "overflow"
        loop = asyncio.get_running_loop()
        held = Held(flow, app, kind, key, loop.create_future())
        held.timer = loop.call_later(seconds, self._release, held, None)
        self._held.setdefault(app, []).append(held)
        self.total += 1
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.ensure_future(self._sweep())
        try:
            return await held.future
        finally:
            self._held[app].remove(held)
            self.total -= 1
            notes(flow).held_ms = round((time.monotonic() - held.since) * 1000, 1)

    async def _sweep(self) -> None:
        """While anything is held: release the flows whose app has closed its connection."""
        while self.total:
            await asyncio.sleep(SWEEP_SECONDS)
            for group in list(self._held.values()):
                for held in [h for h in group if not h.flow.client_conn.state & ConnectionState.CAN_READ]:
                    self._release(held, "abandoned")

    async def delay(self, flow: http.HTTPFlow, app: str, seconds: float) -> str | None:
        return await self._hold(flow, app, "delay", url_key(flow.request.pretty_url), seconds)

    async def debounce(self, flow: http.HTTPFlow, app: str, quiet: float) -> str | None:
        key = url_key(flow.request.pretty_url)
        for held in list(self._held.get(app, ())):
            if held.kind == "debounce" and related(held.key, key):
                notes(held.flow).superseded_by = flow.request.pretty_url
                self._release(held, "superseded")
        return await self._hold(flow, app, "debounce", key, quiet)

    def policy_changed(self, old: PolicySet | None, new: PolicySet) -> int:
        """A reload: every held flow that ``new`` decides more strictly than the
        decision holding it (by what would reach the site once released:
        nothing, a Tor exit, this machine) is released as ``revoked``.  The
        others keep their timers and their decision."""
        from hush.addons.act import more_strictly

        identify = self.identify
        revoked = 0
        for held in [h for group in self._held.values() for h in group]:
            flow = held.flow
            n = notes(flow)
            decision = n.decision
            if decision is None or held.future.done():
                continue
            try:
                app = identify.app_for(flow.client_conn, new)[0] if identify is not None else held.app
                if app != held.app:  # its listener is another app's now, or its process no longer identified
                    now = fail_closed(app, f"the connection is not {held.app}'s under policy set {new.version}",
                                      new.version)
                else:
                    req = request_info(flow, n.kind or "other")
                    # the TLS name hush's own connection will ask for, as when the flow was decided
                    from hush.addons.decide import Decide

                    now = Decide.sni_decision(flow, new, held.app, req, new.decide(held.app, req))
            except Exception as e:  # an app the new set does not have, or a bug: fail closed
                now = fail_closed(held.app, f"cannot decide under policy set {new.version}: {e!r}", new.version)
            if more_strictly(decision, now):
                n.revoked_by = now
                n.outcome = "revoked"
                log.warning("revoked a held flow to %s: policy set %s decides it %s", flow.request.pretty_host,
                            new.version, now.describe())
                self._release(held, "revoked")
                revoked += 1
        return revoked

    def done(self) -> None:
        """Stopping: answer every held flow here and audit it; release none."""
        for held in [h for group in self._held.values() for h in group]:
            flow = held.flow
            n = notes(flow)
            n.outcome = "shutdown"
            if n.decision is not None and flow.response is None:
                flow.response = local_response(503, "hush is stopping; this request was never sent", n.decision)
            self._release(held, "shutdown")
            if self.audit is not None:
                self.audit.record(flow)
        if self._sweeper is not None:
            self._sweeper.cancel()


addons = [Timing()]
