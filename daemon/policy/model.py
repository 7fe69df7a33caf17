"""The immutable policy objects and the one decision function.

A :class:`PolicySet` is built by :func:`hush.daemon.policy.loader.load` and
never changed afterwards; a reload builds a new one and swaps it in.  Both the
live proxy and ``hush policy explain`` decide through :meth:`PolicySet.decide`
and :meth:`PolicySet.decide_connect`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import string
import types
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Literal

from hush.daemon.policy.glob import Glob
from hush.daemon.policy.hosts import HostIndex, in_networks, normalize, parents, parse_authority, refusal, site_of
from hush.daemon.yamlschema import Location

if TYPE_CHECKING:
    from hush.addons.actions.base import Action

Level = Literal["connect", "request"]
Layer = Literal["user", "organisation"]  # which policy files a decision came from (docs/policy.md)
ListenMode = Literal["http", "socks5"]
DEFAULT_PORTS = {"http": 80, "https": 443}
REFUSED = Location("<hush>", 0, 0)  # the source of decisions no rule made: what no policy may allow


_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")


def _unescape_unreserved(m: re.Match) -> str:
    char = chr(int(m[1], 16))
    return char if char in _UNRESERVED else "%" + m[1].upper()


def canonical_path(path: str) -> str:
    """The path as a server will read it, which is what rules match.

    Percent-escapes of unreserved characters decoded (``/%70rivate`` is
    ``/private``) and the others upper-cased (``%2F`` stays one byte of a
    segment, not a separator); repeated slashes merged; ``.`` and ``..``
    segments resolved (RFC 3986 §5.2.4, §6.2.2; nginx does all three by
    default); an absolute-form target (``http://host/p``, which servers must
    accept) reduced to its path.  Without this ``/public/../private/x``
    would slip past a rule on ``/private/*`` and reach the same resource.
    """
    if not path.startswith("/"):
        parts = urllib.parse.urlsplit(path)
        if not (parts.scheme and parts.netloc):
            return path  # '*' (OPTIONS) and the like
        path = parts.path or "/"
    if "%" in path:
        path = _ESCAPE.sub(_unescape_unreserved, path)
    if "//" not in path and "/." not in path:
        return path
    kept: list[str] = []
    for segment in path.split("/")[1:]:
        if segment == "..":
            if kept:
                kept.pop()
        elif segment not in (".", ""):
            kept.append(segment)
    directory = path.endswith(("/", "/.", "/..")) and kept
    return "/" + "/".join(kept) + ("/" if directory else "")


@dataclasses.dataclass(frozen=True)
class RequestInfo:
    """What a rule can look at.  Header names are lower-case."""

    method: str
    scheme: str
    host: str
    port: int
    path: str  # without the query string; canonical_path() of what the app sent
    query: str = ""
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    kind: str = "other"
    # the authority the request target itself names, when the connection was
    # made to ``host`` before the request was read: an absolute-form target
    # inside a CONNECT or SOCKS5 tunnel, HTTP/2's :authority.  A server uses it
    # before any Host header (RFC 9112 §3.2.2), so it is decided too.  Empty
    # for a plain proxy request, whose absolute URL *is* ``host``.
    authority: str = ""

    @property
    def site(self) -> str:
        return site_of(self.host)

    @classmethod
    def from_url(
        cls,
        url: str,
        method: str = "GET",
        headers: Mapping[str, str] | None = None,
        kind: str = "other",
    ) -> RequestInfo:
        """:raises ValueError: if ``url`` is not an absolute http(s) URL."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"not an absolute http:// or https:// URL: {url!r}")
        return cls(
            method=method.upper(),
            scheme=parts.scheme,
            host=normalize(parts.hostname),
            port=parts.port or DEFAULT_PORTS[parts.scheme],
            path=canonical_path(parts.path or "/"),
            query=parts.query,
            headers={k.lower(): v for k, v in (headers or {}).items()},
            kind=kind,
        )


@dataclasses.dataclass(frozen=True)
class Match:
    """Conditions of one rule: AND across keys, OR within a key's list."""

    hosts: frozenset[str] = frozenset()
    suffixes: frozenset[str] = frozenset()  # from '*.example.com'
    sites: frozenset[str] = frozenset()
    nets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()  # only IP-address hosts can match
    ports: frozenset[int] = frozenset()
    paths: tuple[Glob, ...] = ()
    methods: frozenset[str] = frozenset()
    schemes: frozenset[str] = frozenset()
    headers: tuple[tuple[str, tuple[Glob, ...]], ...] = ()
    kinds: frozenset[str] = frozenset()

    @property
    def request_level(self) -> bool:
        """True if deciding needs the HTTP request, not only host and port."""
        return bool(self.paths or self.methods or self.schemes or self.headers or self.kinds)

    def host_ok(self, host: str, site: str, port: int) -> bool:
        if (self.hosts or self.suffixes) and not (
            host in self.hosts or any(p in self.suffixes for p in parents(host))
        ):
            return False
        if self.sites and site not in self.sites:
            return False
        if self.nets and not in_networks(host, self.nets):
            return False
        return not self.ports or port in self.ports

    def request_ok(self, req: RequestInfo) -> bool:
        if self.methods and req.method not in self.methods:
            return False
        if self.schemes and req.scheme not in self.schemes:
            return False
        if self.kinds and req.kind not in self.kinds:
            return False
        if self.paths and not any(g.matches(req.path) for g in self.paths):
            return False
        for name, globs in self.headers:
            value = req.headers.get(name)
            if value is None or not any(g.matches(value) for g in globs):
                return False
        return True


@dataclasses.dataclass(frozen=True)
class Rule:
    index: int  # 1-based position in the policy's rules
    name: str | None
    match: Match
    action: Action
    location: Location
    max_bytes: int | None = None  # cut responses longer than this
    expires: float | None = None  # epoch seconds; dropped then (``expires:``, daemon/policy/expiry.py)

    @property
    def needs_http(self) -> bool:
        """Must hush see the HTTP exchange (request, or response for a cap)?"""
        return self.action.needs_http or self.max_bytes is not None

    def describe(self) -> str:
        label = f"rule {self.index}" + (f" '{self.name}'" if self.name else "")
        return f"{label} ({self.location.short})"


@dataclasses.dataclass(frozen=True)
class Listener:
    app: str
    host: str
    port: int
    mode: ListenMode
    location: Location

    @property
    def spec(self) -> str:
        """The mitmproxy mode spec, which is also ``proxy_mode.full_spec``."""
        kind = "regular" if self.mode == "http" else "socks5"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{kind}@{host}:{self.port}"

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclasses.dataclass(frozen=True)
class Example:
    request: RequestInfo
    expect: str
    location: Location


@dataclasses.dataclass(frozen=True)
class Decision:
    app: str
    action: Action
    rule: Rule | None  # None: the policy's default
    source: Location
    level: Level
    policy_version: str
    note: str | None = None  # why hush decided without a rule (failing closed)
    # the host this decision was made for when it is not the connection's
    # target: a Host header or a request target naming another host that the
    # policy treats more strictly (the audit records the request under it)
    host: str | None = None
    # which layer's rule or default decided: the user's policies, or the
    # organisation's floor (None: hush itself, with no rule: refused, failing closed)
    layer: Layer | None = None
    # the other layer's decision when both have a policy for the app (``hush
    # policy explain`` shows it; ``floor`` chose between the two)
    other: Decision | None = None

    @property
    def ref(self) -> str:
        """``policies/x.yaml:14``: where the deciding rule (or default) is."""
        return self.source.short

    def describe(self) -> str:
        if self.note:
            return self.note
        return self.rule.describe() if self.rule else f"default ({self.source.short})"


_STRICTNESS = {"none": 0, "tor": 1, "direct": 2}  # by what reaches the site: nothing, tor's exit, this machine


def stricter(first: Decision, second: Decision) -> Decision:
    """The decision that lets less reach the site (block, then tor, then a
    direct action); ``first`` when they tie."""
    return second if _STRICTNESS[second.action.egress] < _STRICTNESS[first.action.egress] else first


def _features(action: Action) -> frozenset[str]:
    """What an action does to a request beyond where it sends it: holding it
    (``delay``, ``debounce``), the headers it strips, how finely tor isolates
    circuits.  One decision treats a request at least as strictly as another
    of the same egress when its features include the other's."""
    then = getattr(action, "then", None)  # a holding action: what it does once released
    base = then if then is not None else action
    out = {f"hold:{action.name}"} if then is not None else set()
    if base.name == "strip":
        out.update(f"strip:{name}" for name in getattr(base, "headers", ()))
    elif base.name == "tor":
        isolation = getattr(base, "isolation", "app")
        out.update({"site": {"isolate:site"}, "flow": {"isolate:site", "isolate:flow"}}.get(isolation, set()))
    return frozenset(out)


def floor(user: Decision, organisation: Decision) -> Decision:
    """The decision that applies when both layers decided: the user's if it is
    at least as strict as the organisation's, otherwise the organisation's
    (the floor), so a user policy never weakens an organisation rule.

    Stricter is first by what reaches the site (block, then tor, then direct,
    as :func:`stricter` orders them); between two decisions that send the
    same way, the user's is at least as strict when it does everything the
    organisation's does (holds it too, strips at least the same headers,
    isolates circuits at least as finely).  Two that each do something the
    other does not go to the organisation.  The applied decision names the
    other in ``other``."""
    u, o = _STRICTNESS[user.action.egress], _STRICTNESS[organisation.action.egress]
    if u < o or (u == o and _features(user.action) >= _features(organisation.action)):
        return dataclasses.replace(user, other=organisation)
    return dataclasses.replace(organisation, other=user)


@dataclasses.dataclass(frozen=True)
class Policy:
    app: str
    file: str
    location: Location  # of the app name
    listeners: tuple[Listener, ...]
    rules: tuple[Rule, ...]
    default: Action
    default_location: Location
    examples: tuple[Example, ...]
    index: HostIndex = dataclasses.field(compare=False, repr=False)
    processes: frozenset[str] = frozenset()  # identify: {process: [...]}, for shared listeners

    def rule_naming(self, address: str, port: int) -> Rule | None:
        """The first rule that names the (normalized) ``address`` itself — by ``host:`` or
        ``net:``, at connection level — and matches it on ``port``; None if no rule does (the
        default, or rules naming no address, would decide it)."""
        for rule in self._candidates(address, site_of(address), port):
            match = rule.match
            if (match.nets or match.hosts) and not match.request_level:
                return rule
        return None

    def _candidates(self, host: str, site: str, port: int) -> Iterable[Rule]:
        for i in self.index.candidates(host, site):
            rule = self.rules[i]
            if rule.match.host_ok(host, site, port):
                yield rule


@dataclasses.dataclass(frozen=True)
class PolicySet:
    """Every app's policy, and the organisation's floor.

    ``policies`` holds each app's policy as its listeners, identification and
    examples come from: the user's, or for an app only the organisation has a
    policy for, the organisation's.  ``organisation`` holds the floor's
    policies (:func:`hush.daemon.policy.loader.load_layers`); where an app has
    one, every decision is the :func:`floor` of the two layers'."""

    policies: Mapping[str, Policy]
    version: str
    loaded_at: float
    organisation: Mapping[str, Policy] = dataclasses.field(default_factory=dict)
    # each mitmproxy mode spec's listeners, one per app sharing it; set by __post_init__
    _by_spec: Mapping[str, tuple[Listener, ...]] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "policies", types.MappingProxyType(dict(self.policies)))
        object.__setattr__(self, "organisation", types.MappingProxyType(dict(self.organisation)))
        by_spec: dict[str, list[Listener]] = {}
        for policy in self.policies.values():
            for listener in policy.listeners:
                by_spec.setdefault(listener.spec, []).append(listener)
        object.__setattr__(self, "_by_spec", types.MappingProxyType({k: tuple(v) for k, v in by_spec.items()}))

    @property
    def listeners(self) -> tuple[Listener, ...]:
        """Every (app, address) pair; a shared address appears once per app."""
        return tuple(listener for group in self._by_spec.values() for listener in group)

    @property
    def specs(self) -> list[str]:
        """The mitmproxy mode specs to listen on, each address once."""
        return list(self._by_spec)

    def is_shared(self, spec: str) -> bool:
        return len(self._by_spec.get(spec, ())) > 1

    def app_for_listener(self, spec: str, processes: set[str] | None = None) -> str | None:
        """The app of a connection to ``spec``: the listener's app, or on a
        shared listener the app whose ``identify.process`` names the client's
        process (None if none does: such connections fail closed)."""
        group = self._by_spec.get(spec, ())
        if len(group) == 1:
            return group[0].app
        for listener in group:
            if processes and self.policies[listener.app].processes & processes:
                return listener.app
        return None

    def layers(self, app: str) -> list[tuple[Layer, Policy]]:
        """``app``'s policy in each layer that has one: the user's first.

        :raises KeyError: for an app without a policy in either."""
        policy = self.policies[app]
        floor_policy = self.organisation.get(app)
        if floor_policy is None:
            return [("user", policy)]
        if policy is floor_policy:
            return [("organisation", policy)]
        return [("user", policy), ("organisation", floor_policy)]

    def layer(self, app: str, layer: Layer) -> Policy | None:
        """``app``'s policy in ``layer``, or None."""
        return dict(self.layers(app)).get(layer) if app in self.policies else None

    def _decision(self, policy: Policy, rule: Rule | None, level: Level, layer: Layer) -> Decision:
        if rule is None:
            return Decision(policy.app, policy.default, None, policy.default_location, level, self.version,
                            layer=layer)
        return Decision(policy.app, rule.action, rule, rule.location, level, self.version, layer=layer)

    def refused(self, app: str, why: str, level: Level) -> Decision:
        """What no rule decides: a destination or a request hush cannot read
        the way the server will (answered 400, nothing sent)."""
        from hush.addons.actions.block import Block

        return Decision(app, Block(400), None, REFUSED, level, self.version, note=f"refused: {why}")

    def decide(self, app: str, req: RequestInfo) -> Decision:
        """The first rule of ``app`` that matches ``req``, else the default;
        where the organisation has a policy for ``app`` too, the :func:`floor`
        of its decision and the user's.

        The connection goes to ``req.host``; but a server picks the site it
        serves by the request target's authority (``req.authority``) and else
        by the ``Host`` header, and a shared server or CDN serves any site it
        hosts: when either names another host, that host is decided too, and
        the :func:`stricter` decision applies (recorded under that host if it
        is the one that decided).  A destination :func:`refusal` names, an
        authority or ``Host`` that is not exactly one valid authority (several
        ``Host`` headers arrive joined with ``, ``), is refused.

        :raises KeyError: for an app without a policy.
        """
        why = refusal(normalize(req.host))
        if why:
            return self.refused(app, why, "request")
        decisions = [self._decide_in(policy, layer, req) for layer, policy in self.layers(app)]
        for decision in decisions:
            if decision.layer is None:
                return decision  # refused: the request cannot be read as the server will
        return decisions[0] if len(decisions) == 1 else floor(*decisions)

    def decide_layer(self, app: str, layer: Layer, req: RequestInfo) -> Decision | None:
        """How ``layer`` alone decides ``req`` (None: it has no policy for
        ``app``): a policy's examples are checked against its own layer."""
        policy = self.layer(app, layer)
        return None if policy is None else self._decide_in(policy, layer, req)

    def _decide_in(self, policy: Policy, layer: Layer, req: RequestInfo) -> Decision:
        app = policy.app
        host = normalize(req.host)
        why = refusal(host)
        if why:
            return self.refused(app, why, "request")
        decision = self._first_match(policy, layer, req)
        named: set[str] = {host}
        for what, value in (("request target", req.authority), ("Host header", req.headers.get("host"))):
            if not value or value.isspace():
                continue  # names no other host: the connection's target is the site
            try:
                name, _ = parse_authority(value)
            except ValueError as e:
                return self.refused(app, f"the {what} {value!r} is not one valid authority: {e}", "request")
            if name not in named:
                named.add(name)
                other = self._first_match(policy, layer, dataclasses.replace(req, host=name))
                if stricter(decision, other) is other:
                    decision = dataclasses.replace(other, host=name)
        return decision

    def _first_match(self, policy: Policy, layer: Layer, req: RequestInfo) -> Decision:
        host = normalize(req.host)
        site = site_of(host)
        for rule in policy._candidates(host, site, req.port):
            if rule.match.request_ok(req):
                return self._decision(policy, rule, "request", layer)
        return self._decision(policy, None, "request", layer)

    def decide_connect(self, app: str, host: str, port: int) -> Decision | None:
        """The decision for a connection to ``host:port`` when it can be made
        without seeing the HTTP request, or None when the request must be
        inspected (a rule that may match looks at the request, or the action
        needs HTTP, as ``strip`` does).  With two layers: the :func:`floor` of
        both when both decide at connection level; a block by either when the
        other needs the request (nothing the request says can make it less
        strict); else None.

        :raises KeyError: for an app without a policy.
        """
        host = normalize(host)
        layers = self.layers(app)
        why = refusal(host)
        if why:
            return self.refused(app, why, "connect")
        decisions = [self._connect_in(policy, layer, host, port) for layer, policy in layers]
        if len(decisions) == 1:
            return decisions[0]
        user, organisation = decisions
        if user is not None and organisation is not None:
            return floor(user, organisation)
        decided = user or organisation
        return decided if decided is not None and decided.action.egress == "none" else None

    def _connect_in(self, policy: Policy, layer: Layer, host: str, port: int) -> Decision | None:
        site = site_of(host)
        for rule in policy._candidates(host, site, port):
            if rule.match.request_level:
                return None
            return None if rule.needs_http else self._decision(policy, rule, "connect", layer)
        if policy.default.needs_http:
            return None
        return self._decision(policy, None, "connect", layer)
