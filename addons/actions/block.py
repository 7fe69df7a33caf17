"""``block``: nothing reaches the site; the app gets a local answer.

``status`` is the HTTP status to answer with (default 403) or ``reset`` to drop
the client's connection.  A CONNECT can only be refused with a status >= 400
(a 2xx answer would open the tunnel), so a block with a lower status answers
CONNECTs with 403 and requests with the status given.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from hush.addons.actions.base import Action, ParseContext, Services, local_response, register
from hush.daemon.yamlschema import INT, Field, Reader

if TYPE_CHECKING:
    from mitmproxy import http

    from hush.daemon.policy.model import Decision


@register
@dataclasses.dataclass(frozen=True)
class Block(Action):
    name = "block"
    params = frozenset({"status"})
    sends = "none"

    status: int | None = 403  # None: reset the connection

    @classmethod
    def parse(cls, reader: Reader, fields: dict[str, Field], ctx: ParseContext) -> Block | None:
        field = fields.get("status")
        if field is None:
            return cls()
        node = field.value
        if getattr(node, "tag", None) == INT:
            status = reader.integer(node, "status", 100, 599)
            return None if status is None else cls(status)
        if reader.choice(node, "status", {"reset"}) is None:
            return None
        return cls(None)

    def describe(self) -> str:
        return "block (reset the connection)" if self.status is None else f"block (answer {self.status})"

    def on_connect(self, flow: http.HTTPFlow, decision: Decision) -> None:
        if self.status is None:
            flow.kill()
            return
        status = self.status if self.status >= 400 else 403
        flow.response = local_response(status, f"Blocked by hush: {decision.describe()}", decision)

    def on_request(self, flow: http.HTTPFlow, decision: Decision, services: Services) -> None:
        if self.status is None:
            flow.kill()
            return
        flow.response = local_response(self.status, f"Blocked by hush: {decision.describe()}", decision)
