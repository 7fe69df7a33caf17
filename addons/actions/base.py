"""What every policy action is.

An action is a frozen dataclass: its fields are the parameters read from the
rule (``status: 451``), so two rules with the same parameters compare equal.
It says how it is applied at each level:

- ``on_tunnel(tunnel, services)``: a connection decided without seeing a
  request (a CONNECT, whose flow is ``tunnel.flow``, or a SOCKS5 connection,
  which has none); the TLS inside is then relayed untouched, or refused;
- ``on_request(flow, decision, services)``: an HTTP request, plain or intercepted.

and what leaves the machine because of it (``sends``, a class attribute;
``egress`` on an action as a rule holds it): ``direct`` opens a connection
from the user's machine to the site; ``tor`` one to tor, which carries it on;
``none`` sends nothing.

A :class:`Holding` action (``delay``, ``debounce``) first holds the request
(``await hold(...)``), then applies its ``then`` action; what leaves is what
``then`` sends.  ``services`` are the addons an action may use (the timers
that hold flows, the route into tor), handed over by act as ``chain()`` wired
them.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import PurePath
from typing import TYPE_CHECKING, ClassVar, Literal

import yaml

from hush.daemon.policy.context import ParseContext as ParseContext  # there: the config needs it, not mitmproxy
from hush.daemon.yamlschema import Field, Reader

if TYPE_CHECKING:
    from mitmproxy import http

    from hush.addons.timing import Timing
    from hush.addons.torroute import TorRoute
    from hush.addons.tunnel import Tunnel
    from hush.daemon.policy.model import Decision

Egress = Literal["direct", "tor", "none"]

REGISTRY: dict[str, type[Action]] = {}

@dataclasses.dataclass(frozen=True)
class Services:
    """The addons applying an action may use, wired in ``chain()`` and
    handed over by act.  None where the chain has no such addon (an addon
    file loaded alone)."""

    timing: Timing | None = None  # holds flows: delay, debounce
    router: TorRoute | None = None  # routes flows into tor: the tor action


@dataclasses.dataclass(frozen=True)
class Action:
    name: ClassVar[str]
    params: ClassVar[frozenset[str]] = frozenset()
    required: ClassVar[frozenset[str]] = frozenset()  # params that must be given
    needs_http: ClassVar[bool] = False  # must see the HTTP request: forces TLS interception
    sends: ClassVar[Egress] = "direct"  # what applying the action sends (see the module's docstring)

    @property
    def egress(self) -> Egress:
        """What leaves this machine once the action is applied: ``sends``
        (a holding action: what its ``then`` sends)."""
        return self.sends

    @classmethod
    def parse(cls, reader: Reader, fields: dict[str, Field], ctx: ParseContext) -> Action | None:
        """Build the action from the rule's parameter fields (only names in
        ``params`` are passed).  Record problems with ``reader.error`` and
        return None if any."""
        return cls()

    def describe(self) -> str:
        """One line for ``hush policy explain``."""
        values = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"{self.name} ({values})" if values else self.name

    def on_tunnel(self, tunnel: Tunnel, decision: Decision, services: Services) -> None:
        """Apply to a connection decided at connection level (``decision``
        is ``tunnel.decision``)."""
        if tunnel.flow is not None:
            self.on_connect(tunnel.flow, decision)

    def on_connect(self, flow: http.HTTPFlow, decision: Decision) -> None:
        """Apply to a CONNECT decided at connection level (from ``on_tunnel``)."""

    def on_request(self, flow: http.HTTPFlow, decision: Decision, services: Services) -> None:
        """Apply to an HTTP request."""


@dataclasses.dataclass(frozen=True)
class Holding(Action):
    """An action that holds a request (``hold``, an ``await``: other flows
    keep moving), then applies ``then`` to it.  Act awaits ``hold``: None
    releases the flow to ``then``, anything else is the outcome that kept it
    back (``superseded``, ``overflow``, …), answered locally."""

    needs_http = True
    sends = "none"  # holding sends nothing; what leaves once released is ``then``'s
    then: Action = dataclasses.field(default_factory=lambda: REGISTRY["allow"](), kw_only=True)

    @property
    def egress(self) -> Egress:
        return self.then.egress

    async def hold(self, flow: http.HTTPFlow, decision: Decision, services: Services) -> str | None:
        raise NotImplementedError


def register[A: type[Action]](cls: A) -> A:
    if cls.name in REGISTRY:
        raise RuntimeError(f"action {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def decision_header(decision: Decision) -> str:
    """``X-Hush-Decision``: the action and where its rule is, ``block whatsapp.yaml:14``
    (``block organisation/whatsapp.yaml:14`` for a rule of the organisation's floor).

    The file is named relative to the policy directory (its ``*.yaml`` files are
    its direct children: the file's name), never by an absolute path: the app
    (and whatever it logs or uploads) would learn the user's home directory."""
    layer = "organisation/" if decision.layer == "organisation" else ""  # the floor's (docs/policy.md)
    return f"{decision.action.name} {layer}{PurePath(decision.source.file).name}:{decision.source.line}"


def local_response(status: int, text: str, decision: Decision) -> http.Response:
    """A response made by hush, not by the site.  Its text names policy files as
    the header does, relative to the policy directory."""
    from mitmproxy import http  # here: the policy loader and explain import this module without mitmproxy

    directory = str(PurePath(decision.source.file).parent)
    if directory not in (".", "/"):
        text = text.replace(directory + "/", "")
    return http.Response.make(
        status,
        f"{text}\n".encode(),
        {"Content-Type": "text/plain; charset=utf-8", "X-Hush-Decision": decision_header(decision)},
    )


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*(ms|s|m)?$")


def parse_duration(reader: Reader, node: yaml.Node, what: str, lo: float = 0.0, hi: float = 3600.0) -> float | None:
    """``500ms``, ``2s``, ``1.5s``, ``1m`` or a number of seconds → seconds."""
    from hush.daemon.yamlschema import FLOAT, INT

    text = node.value if getattr(node, "tag", None) in (INT, FLOAT) else reader.string(node, what)
    if text is None:
        return None
    m = _DURATION.match(str(text).strip())
    if not m:
        reader.error(node, f"{what} {text!r} must be a duration such as 500ms, 2s or 1m")
        return None
    seconds = float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[m.group(2)]
    if not lo <= seconds <= hi:
        reader.error(node, f"{what} must be between {lo:g}s and {hi:g}s, not {text}")
        return None
    return seconds
