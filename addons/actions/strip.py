"""``strip``: the request goes out without the headers that identify the user.

``headers`` lists the request headers to remove (default: Cookie, Referer,
Accept-Language, User-Agent).  A listed User-Agent is replaced by ``user_agent``
(default: the config's ``strip.user_agent``, a common browser string); give
``user_agent: remove`` to send none.  Stripping edits the request, so on HTTPS
it needs TLS interception and the app must trust hush's CA.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING

from hush.addons.actions.base import Action, ParseContext, Services, register
from hush.daemon.yamlschema import Field, Reader

if TYPE_CHECKING:
    from mitmproxy import http

    from hush.daemon.policy.model import Decision

DEFAULT_HEADERS: tuple[str, ...] = ("cookie", "referer", "accept-language", "user-agent")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@register
@dataclasses.dataclass(frozen=True)
class Strip(Action):
    name = "strip"
    params = frozenset({"headers", "user_agent"})
    needs_http = True

    headers: tuple[str, ...] = DEFAULT_HEADERS
    user_agent: str | None = None  # replacement; None: remove it

    @classmethod
    def parse(cls, reader: Reader, fields: dict[str, Field], ctx: ParseContext) -> Strip | None:
        ok = True
        headers = DEFAULT_HEADERS
        if "headers" in fields:
            names = []
            for node in reader.items(fields["headers"].value, "headers"):
                name = reader.string(node, "header name")
                if name is None:
                    ok = False
                elif not _TOKEN.match(name):
                    reader.error(node, f"{name!r} is not a valid header name")
                    ok = False
                else:
                    names.append(name.lower())
            headers = tuple(dict.fromkeys(names))
        user_agent: str | None = ctx.user_agent
        if "user_agent" in fields:
            user_agent = reader.string(fields["user_agent"].value, "user_agent")
            if user_agent is None:
                ok = False
            elif user_agent == "remove":
                user_agent = None
        if "user-agent" not in headers:
            user_agent = None
        return cls(headers, user_agent) if ok else None

    def describe(self) -> str:
        ua = f"; User-Agent → {self.user_agent!r}" if self.user_agent else ""
        return f"strip ({', '.join(self.headers)}{ua})"

    def on_request(self, flow: http.HTTPFlow, decision: Decision, services: Services) -> None:
        for name in self.headers:
            flow.request.headers.pop(name, None)
        if self.user_agent:
            flow.request.headers["User-Agent"] = self.user_agent
