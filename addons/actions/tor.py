"""``tor``: the request reaches the site from a Tor exit, never from this machine.

``isolation`` chooses which flows may share a circuit: ``app`` (default: all
of this app's Tor flows), ``site`` (per registrable domain), or ``flow``
(each flow its own).  When tor is not ready the flow is answered at once
(503, or a refused CONNECT) and audited ``tor-unavailable``: it is never sent
directly and never left waiting for tor.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from hush.addons.actions.base import Action, ParseContext, Services, local_response, register
from hush.addons.notes import notes
from hush.daemon.yamlschema import Field, Reader

if TYPE_CHECKING:
    from mitmproxy import http

    from hush.addons.tunnel import Tunnel
    from hush.daemon.policy.model import Decision

ISOLATIONS = ("app", "site", "flow")
NOT_LOADED = "tor routing is not loaded"


def _refusal(why: str, decision: Decision) -> http.Response:
    return local_response(503, f"Tor is unavailable ({why}); hush does not send this directly.", decision)


@register
@dataclasses.dataclass(frozen=True)
class Tor(Action):
    name = "tor"
    params = frozenset({"isolation"})
    sends = "tor"

    isolation: str = "app"

    @classmethod
    def parse(cls, reader: Reader, fields: dict[str, Field], ctx: ParseContext) -> Tor | None:
        if "isolation" not in fields:
            return cls()
        isolation = reader.choice(fields["isolation"].value, "isolation", ISOLATIONS)
        return None if isolation is None else cls(isolation)

    def describe(self) -> str:
        return f"tor (circuits isolated per {self.isolation})"

    def on_tunnel(self, tunnel: Tunnel, decision: Decision, services: Services) -> None:
        router = services.router
        why = router.route_tunnel(tunnel, self.isolation) if router else NOT_LOADED
        if why:
            tunnel.outcome = "tor-unavailable"
            tunnel.error = why
            if tunnel.flow is not None:
                tunnel.flow.response = _refusal(why, decision)

    def on_request(self, flow: http.HTTPFlow, decision: Decision, services: Services) -> None:
        router = services.router
        why = router.route_request(flow, self.isolation) if router else NOT_LOADED
        if why:
            notes(flow).outcome = "tor-unavailable"
            flow.response = _refusal(why, decision)
