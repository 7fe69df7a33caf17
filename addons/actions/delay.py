"""``delay``: hold a request for a while, then apply ``then``.

``delay: 5s`` holds it that long; ``delay: {min: 2s, max: 20s}`` a random time
in that range (drawn per flow from the OS's random source), so the site
cannot tell when the link was typed.  ``then`` is ``allow`` (default),
``strip`` or ``tor`` (a name, or a mapping with that action's parameters).
Holding is an ``await``; other flows keep moving.  Request level: on HTTPS
it needs TLS interception.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import yaml

from hush.addons.actions.base import Action, Holding, ParseContext, Services, parse_duration, register
from hush.daemon.yamlschema import Field, Reader

if TYPE_CHECKING:
    from mitmproxy import http

    from hush.daemon.policy.model import Decision

THEN = ("allow", "strip", "tor")


def parse_then(reader: Reader, fields: dict[str, Field], ctx: ParseContext) -> Action | None:
    """The ``then`` action: ``allow`` if absent; None on error (recorded with ``reader.error``)."""
    from hush.addons.actions import REGISTRY

    if "then" not in fields:
        return REGISTRY["allow"]()
    node = fields["then"].value
    action = ctx.parse_action(reader, node, ctx) if ctx.parse_action else None
    if action is None:
        return None
    if action.name not in THEN:
        reader.error(node, f"then must be one of: {', '.join(THEN)} (not {action.name})")
        return None
    return action


@register
@dataclasses.dataclass(frozen=True)
class Delay(Holding):
    name = "delay"
    params = frozenset({"delay", "then"})
    required = frozenset({"delay"})

    min: float = 1.0
    max: float = 1.0

    @classmethod
    def parse(cls, reader: Reader, fields: dict[str, Field], ctx: ParseContext):
        then = parse_then(reader, fields, ctx)
        node = fields["delay"].value
        if isinstance(node, yaml.MappingNode):
            sub = reader.mapping(node, allowed={"min", "max"}, required={"min", "max"}, what="delay")
            lo = parse_duration(reader, sub["min"].value, "delay min") if "min" in sub else None
            hi = parse_duration(reader, sub["max"].value, "delay max") if "max" in sub else None
            if lo is not None and hi is not None and hi < lo:
                reader.error(node, f"delay max ({hi:g}s) is less than min ({lo:g}s)")
                return None
        else:
            lo = hi = parse_duration(reader, node, "delay")
        if lo is None or hi is None or then is None:
            return None
        return cls(lo, hi, then=then)

    def describe(self) -> str:
        span = f"{self.min:g}s" if self.min == self.max else f"{self.min:g}–{self.max:g}s (random)"
        return f"delay {span}, then {self.then.describe()}"

    def seconds(self) -> float:
        if self.min == self.max:
            return self.min
        import random  # here: the policy commands read this action and never draw a delay

        return random.SystemRandom().uniform(self.min, self.max)

    async def hold(self, flow: http.HTTPFlow, decision: Decision, services: Services) -> str | None:
        if services.timing is None:
            raise RuntimeError("no timing addon in the chain to hold the flow")
        return await services.timing.delay(flow, decision.app, self.seconds())

