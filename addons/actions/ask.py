"""``ask``: hold the request and ask the user; apply the answer, or ``fallback``.

``fallback`` (default ``block``) is ``allow``, ``tor`` or ``block`` (a name, or
a mapping with that action's parameters); ``timeout`` (default ``30s``) is
how long the question stays open.  The flow is held as ``delay`` holds it
(through timing: an ``await``, other flows keep moving; bounded, dropped if
the app leaves, answered at shutdown, revoked by a stricter reload) while the
user is asked — in the live view's page and as a desktop notification with
action buttons (:mod:`hush.daemon.policy.ask`).  One question per (app,
site): every flow waiting on it gets its answer.

The answer (``allow``, ``tor`` or ``block``) becomes the flow's decision,
still naming the ask rule; ``for 1 h`` / ``until restart`` / ``always`` add a
rule for the site as well.  No answer before the timeout: ``fallback``,
audited ``ask-timeout``.  No one to ask (no page open, no notification
service): ``fallback`` at once, audited ``ask-unavailable``.  Anything failing
in the asker: ``fallback``, audited ``ask-failed`` — never a direct
connection unless ``fallback`` says so.

The question names the host hush dials (``flow.request.host``: the
absolute-form target, a tunnel's target), never the ``Host`` header's.  A
request that names another host besides (its ``Host`` header, an authority
inside a tunnel, the TLS name of an intercepted tunnel) is not asked about:
it is blocked at once (the fallback's status if the fallback is ``block``),
audited ``ask-mismatch`` — the user would be asked about one site while the
connection goes to another, and it would join that other site's question.  Request level (like ``delay``: on
HTTPS it needs TLS interception).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from hush.addons.actions.base import Action, Holding, ParseContext, Services, parse_duration, register
from hush.daemon.yamlschema import Field, Reader

if TYPE_CHECKING:
    from mitmproxy import http

    from hush.daemon.policy.model import Decision



def _log():
    """hush.ask's logger, imported when a flow is asked about: the policy commands load this
    action to read policies and need no logging (they start fast: bench/cli.py)."""
    import logging

    return logging.getLogger("hush.ask")

FALLBACKS = ("allow", "tor", "block")
TIMEOUT = 30.0
MAX_TIMEOUT = 600.0
# timing holds the flow this much longer than the question is open: the
# question's timeout decides, timing only bounds and sweeps
_GRACE = 1.0


def parse_fallback(reader: Reader, fields: dict[str, Field], ctx: ParseContext) -> Action | None:
    """The ``fallback`` action: ``block`` if absent; None on error (recorded)."""
    from hush.addons.actions import REGISTRY

    if "fallback" not in fields:
        return REGISTRY["block"]()
    node = fields["fallback"].value
    action = ctx.parse_action(reader, node, ctx) if ctx.parse_action else None
    if action is None:
        return None
    if action.name not in FALLBACKS:
        reader.error(node, f"fallback must be one of: {', '.join(FALLBACKS)} (not {action.name})")
        return None
    return action


def verdict_action(verdict: str) -> Action:
    """The action an answer names: ``allow``, ``tor`` or ``block``, with their defaults."""
    from hush.addons.actions import REGISTRY

    if verdict not in FALLBACKS:
        raise ValueError(f"unknown answer {verdict!r}")
    return REGISTRY[verdict]()


def other_name(flow: http.HTTPFlow, host: str) -> str | None:
    """A name the request carries that is not ``host``, the one dialled: its
    ``Host`` header (HTTP/2's ``:authority``), an absolute-form target inside a
    tunnel, the TLS name (SNI) an intercepted tunnel's ClientHello asked for
    and hush sends on.  None when every one names ``host`` (or is absent)."""
    from hush.addons.notes import conn_notes
    from hush.daemon.policy.hosts import normalize, parse_authority

    for value in (flow.request.host_header, flow.request.authority):
        if not value or value.isspace():
            continue
        try:
            name, _ = parse_authority(value)
        except ValueError:
            return value  # decide refuses these already: never asked about on a guess either
        if name != host:
            return name
    sni = conn_notes(flow.client_conn).sni
    if sni and normalize(sni) != host:
        return normalize(sni)
    return None


@register
@dataclasses.dataclass(frozen=True)
class Ask(Holding):
    name = "ask"
    params = frozenset({"fallback", "timeout"})

    fallback: Action = dataclasses.field(default_factory=lambda: verdict_action("block"))
    timeout: float = TIMEOUT

    @classmethod
    def parse(cls, reader: Reader, fields: dict[str, Field], ctx: ParseContext):
        fallback = parse_fallback(reader, fields, ctx)
        timeout: float | None = TIMEOUT
        if "timeout" in fields:
            timeout = parse_duration(reader, fields["timeout"].value, "timeout", 0.1, MAX_TIMEOUT)
        if fallback is None or timeout is None:
            return None
        return cls(fallback, timeout)

    def describe(self) -> str:
        return f"ask (for {self.timeout:g}s; then {self.fallback.describe()})"

    async def hold(self, flow: http.HTTPFlow, decision: Decision, services: Services) -> str | None:
        """Held until answered: the answer (or the fallback) becomes the flow's
        decision (``notes(flow).decision``), which act then applies.  Returns
        timing's outcome when timing kept the flow back (overflow, abandoned,
        shutdown, revoked): act answers it locally."""
        import asyncio  # here: the loader (and so every policy command) imports this module

        from hush.addons.notes import notes
        from hush.daemon.policy import ask
        from hush.daemon.policy.hosts import normalize, site_of

        if services.timing is None:
            raise RuntimeError("no timing addon in the chain to hold the flow")
        n = notes(flow)
        # the host mitmproxy dials (the absolute-form target, a tunnel's), not the Host header's
        host = normalize(flow.request.host)
        other = other_name(flow, host)
        if other is not None:  # the user would be asked about one site while the IP goes to another
            n.decision = dataclasses.replace(
                decision, action=self.fallback if self.fallback.name == "block" else verdict_action("block"))
            n.outcome = "ask-mismatch"
            _log().warning("%s: not asking about %s: the request names %s (blocked)", decision.app, host, other)
            return None
        held = asyncio.ensure_future(services.timing.delay(flow, decision.app, self.timeout + _GRACE))
        asked = asyncio.ensure_future(ask.ASKER.ask(
            app=decision.app, host=host, site=site_of(host), url=flow.request.url, rule=decision.ref,
            timeout=self.timeout, fallback=self.fallback.name))
        try:
            await asyncio.wait({held, asked}, return_when=asyncio.FIRST_COMPLETED)
            if held.done() and held.result() == "revoked" and not asked.done():
                # an answer "block/tor for 1 h" adds a rule that revokes the flows it answers a
                # moment before they see the answer: give it that moment
                await asyncio.wait({asked}, timeout=_GRACE)
        finally:
            if not asked.done():
                asked.cancel()
        result: ask.Result | None = None
        if asked.done() and not asked.cancelled():
            try:
                result = asked.result()
            except Exception as e:  # the asker failed: fail closed to the fallback
                _log().exception("asking about %s failed", host)
                result = ask.Result(None, "ask-failed", f"{e!r}")
        if held.done():
            outcome = held.result()
            # timing kept it back — unless the answer came at the same moment (an answer
            # "block for 1 h" revokes the held flows it answers: they get the answer)
            if outcome is not None and (result is None or result.answer is None):
                return outcome
        else:
            held.cancel()  # answered: timing lets it go
        if result is None:  # timing's timer before the asker's: cannot happen but by a stalled loop
            result = ask.Result(None, "ask-timeout")
        if result.answer is not None:
            answered = dataclasses.replace(decision, action=verdict_action(result.answer.verdict))
            if n.outcome == "revoked":
                from hush.addons.act import more_strictly

                if n.revoked_by is None or more_strictly(answered, n.revoked_by):
                    return "revoked"  # a reload decides it more strictly than the answer: never sent
                n.outcome = n.revoked_by = None  # revoked by the rule this very answer added
            n.decision = answered
            _log().info("%s: %s %s (%s, %s)", decision.app, result.answer.verdict, host, result.answer.scope,
                     result.answer.source)
        else:
            n.decision = dataclasses.replace(decision, action=self.fallback)
            n.outcome = result.outcome
            _log().info("%s: %s %s: %s", decision.app, result.outcome, host, self.fallback.describe())
        return None
