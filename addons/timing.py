"""Timing: the flows ``delay`` and ``debounce`` hold, and their bounds.

Holding is an ``await`` on a future that a timer resolves (``loop.call_later``),
never a sleep: other flows keep moving.  Each held flow ends one way:

- ``None`` — released: the rule's ``then`` action is applied and it goes on;
- ``"superseded"`` — a newer request of the same app extended (or shared a
  typed prefix with) its URL: only the URL standing when typing stops leaves;
- ``"overflow"`` — too many flows held already (per app, or in total): it is
  refused at once, never sent early;
- ``"shutdown"`` — hush is stopping: answered locally, never released.

The act addon awaits :meth:`Timing.delay` / :meth:`Timing.debounce`; on
``done`` every flow still held is answered and audited here, before the audit
writer closes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import urllib.parse

from mitmproxy import ctx, http

log = logging.getLogger("hush.timing")


def url_key(url: str) -> str:
    """The typed form of a URL, for prefix comparison: no scheme, no trailing slash."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    rest = parts.path + (f"?{parts.query}" if parts.query else "")
    return f"{host}{port}{rest}".rstrip("/")


def related(a: str, b: str) -> bool:
    """One URL is the other, typed further (or backspaced)."""
    return a.startswith(b) or b.startswith(a)


@dataclasses.dataclass(eq=False)
class Held:
    flow: http.HTTPFlow
    app: str
    kind: str  # "delay" | "debounce"
    key: str
    future: asyncio.Future
    timer: asyncio.TimerHandle | None = None
    since: float = dataclasses.field(default_factory=time.monotonic)


class Timing:
    def __init__(self):
        self._held: dict[str, list[Held]] = {}
        self.total = 0

    def load(self, loader):
        loader.add_option("hush_max_held_per_app", int, 500,
                          "At most this many flows held (delay/debounce) per app; more are refused (overflow).")
        loader.add_option("hush_max_held_total", int, 3000,
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
        try:
            return await held.future
        finally:
            self._held[app].remove(held)
            self.total -= 1
            flow.metadata["hush.held_ms"] = round((time.monotonic() - held.since) * 1000, 1)

    async def delay(self, flow: http.HTTPFlow, app: str, seconds: float) -> str | None:
        return await self._hold(flow, app, "delay", url_key(flow.request.pretty_url), seconds)

    async def debounce(self, flow: http.HTTPFlow, app: str, quiet: float) -> str | None:
        key = url_key(flow.request.pretty_url)
        for held in list(self._held.get(app, ())):
            if held.kind == "debounce" and related(held.key, key):
                held.flow.metadata["hush.superseded_by"] = flow.request.pretty_url
                self._release(held, "superseded")
        return await self._hold(flow, app, "debounce", key, quiet)

    def done(self) -> None:
        """Stopping: answer every held flow here and audit it; release none."""
        from hush.addons.actions.base import local_response

        audit = ctx.master.addons.get("audit")
        for held in [h for group in self._held.values() for h in group]:
            flow = held.flow
            flow.metadata["hush.outcome"] = "shutdown"
            decision = flow.metadata.get("hush.decision")
            if decision is not None and flow.response is None:
                flow.response = local_response(503, "hush is stopping; this request was never sent", decision)
            self._release(held, "shutdown")
            if audit is not None:
                audit.record(flow)


addons = [Timing()]
