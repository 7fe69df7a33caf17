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

    def _candidates(self, host: str, site: str, port: int) -> Iterable[Rule]:
        for i in self.index.candidates(host, site):
            rule = self.rules[i]
            if rule.match.host_ok(host, site, port):
                yield rule


@dataclasses.dataclass(frozen=True)
class PolicySet:
    policies: Mapping[str, Policy]
    version: str
    loaded_at: float
    # each mitmproxy mode spec's listeners, one per app sharing it; set by __post_init__
    _by_spec: Mapping[str, tuple[Listener, ...]] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "policies", types.MappingProxyType(dict(self.policies)))
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

    def _decision(self, policy: Policy, rule: Rule | None, level: Level) -> Decision:
        if rule is None:
            return Decision(policy.app, policy.default, None, policy.default_location, level, self.version)
        return Decision(policy.app, rule.action, rule, rule.location, level, self.version)

    def refused(self, app: str, why: str, level: Level) -> Decision:
        """What no rule decides: a destination or a request hush cannot read
        the way the server will (answered 400, nothing sent)."""
        from hush.addons.actions.block import Block

        return Decision(app, Block(400), None, REFUSED, level, self.version, note=f"refused: {why}")

    def decide(self, app: str, req: RequestInfo) -> Decision:
        """The first rule of ``app`` that matches ``req``, else the default.

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
        host = normalize(req.host)
        why = refusal(host)
        if why:
            return self.refused(app, why, "request")
        decision = self._first_match(app, req)
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
                other = self._first_match(app, dataclasses.replace(req, host=name))
                if stricter(decision, other) is other:
                    decision = dataclasses.replace(other, host=name)
        return decision

    def _first_match(self, app: str, req: RequestInfo) -> Decision:
        policy = self.policies[app]
        host = normalize(req.host)
        site = site_of(host)
        for rule in policy._candidates(host, site, req.port):
            if rule.match.request_ok(req):
                return self._decision(policy, rule, "request")
        return self._decision(policy, None, "request")

    def decide_connect(self, app: str, host: str, port: int) -> Decision | None:
        """The decision for a connection to ``host:port`` when it can be made
        without seeing the HTTP request, or None when the request must be
        inspected (a rule that may match looks at the request, or the action
        needs HTTP, as ``strip`` does).

        :raises KeyError: for an app without a policy.
        """
        policy = self.policies[app]
        host = normalize(host)
        why = refusal(host)
        if why:
            return self.refused(app, why, "connect")
        site = site_of(host)
        for rule in policy._candidates(host, site, port):
            if rule.match.request_level:
                return None
            return None if rule.needs_http else self._decision(policy, rule, "connect")
        if policy.default.needs_http:
            return None
        return self._decision(policy, None, "connect")
