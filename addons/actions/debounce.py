"""``debounce``: of a burst of related requests, only the last one leaves.

Clients that fetch a preview per typed character (``/f``, ``/fi``, ``/fil``…)
send requests whose URLs extend one another.  Each is held for ``quiet``
(default 1.5s); a newer request of the same app whose URL extends — or is
extended by — a held one supersedes it, and so does one whose host extends
(or is extended by) the held one's with the same path (``https://m/.well-known/…``,
``https://ma/.well-known/…``: ``timing.related()``).  Only the URL standing when typing
stops reaches the site, through ``then`` (``allow``, ``strip`` or ``tor``).
Superseded requests are answered locally with ``status`` (default 204) and
audited ``superseded``, naming the URL that replaced them.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from hush.addons.actions.base import Holding, ParseContext, Services, local_response, parse_duration, register
from hush.addons.actions.delay import parse_then
from hush.addons.notes import notes
from hush.daemon.yamlschema import Field, Reader

if TYPE_CHECKING:
    from mitmproxy import http

    from hush.daemon.policy.model import Decision


@register
@dataclasses.dataclass(frozen=True)
class Debounce(Holding):
    name = "debounce"
    params = frozenset({"quiet", "then", "status"})

    quiet: float = 1.5
    status: int = 204

    @classmethod
    def parse(cls, reader: Reader, fields: dict[str, Field], ctx: ParseContext):
        then = parse_then(reader, fields, ctx)
        quiet = parse_duration(reader, fields["quiet"].value, "quiet", 0.01, 60) if "quiet" in fields else 1.5
        status: int | None = 204
        if "status" in fields:
            status = reader.integer(fields["status"].value, "status", 200, 599)
        if then is None or quiet is None or status is None:
            return None
        return cls(quiet, status, then=then)

    def describe(self) -> str:
        return (f"debounce (quiet {self.quiet:g}s; superseded requests get {self.status}), "
                f"then {self.then.describe()}")

    async def hold(self, flow: http.HTTPFlow, decision: Decision, services: Services) -> str | None:
        if services.timing is None:
            raise RuntimeError("no timing addon in the chain to hold the flow")
        outcome = await services.timing.debounce(flow, decision.app, self.quiet)
        if outcome == "superseded":
            replaced = notes(flow).superseded_by or "a newer request"
            flow.response = local_response(self.status, f"Superseded by {replaced}", decision)
        return outcome
