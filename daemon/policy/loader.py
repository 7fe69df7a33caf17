"""Policy files → :class:`PolicySet`, or every error with its location.

``load`` reads the files and hands their text to ``build``; ``build`` is a
pure function of (file name, text) pairs, so tests feed it strings::

    policyset = build([("policies/x.yaml", text)])   # or raises LoadError

Nothing is half-loaded: one error anywhere and no PolicySet is returned.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import ipaddress
import os
import re
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import cast

import yaml

from hush.addons.actions import REGISTRY, Action, ParseContext
from hush.daemon.policy.expiry import live, parse_expires
from hush.daemon.policy.glob import Glob
from hush.daemon.policy.hosts import HostIndex, check_name, is_ip, parse_host_pattern, parse_network, site_of
from hush.daemon.policy.model import (
    Example,
    Listener,
    ListenMode,
    Match,
    Policy,
    PolicySet,
    RequestInfo,
    Rule,
)
from hush.daemon.yamlschema import INT, Field, LoadError, LocatedError, Location, Reader

POLICY_KEYS = {"app", "description", "listen", "identify", "default", "rules", "examples"}
RULE_KEYS = {"name", "match", "action", "max_bytes", "expires"}
_SIZE = re.compile(r"^(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?$")
_UNITS = {None: 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 1000**2, "MiB": 1024**2, "GB": 1000**3, "GiB": 1024**3}
MAX_LIST_ERRORS = 20
LISTEN_KEYS = {"port", "host", "mode"}
LISTEN_MODES: tuple[ListenMode, ...] = ("http", "socks5")
EXAMPLE_KEYS = {"url", "method", "headers", "kind", "expect"}
KINDS = {"preview", "media", "other"}
SCHEMES = {"http", "https"}
_APP = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
_METHOD = re.compile(r"^[A-Z]{1,20}$")
_HEADER = re.compile(r"^[!#$%&'*+.^_`|~0-9a-z-]+$")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_DEFAULTS = ParseContext()  # no config: the defaults of every setting policies read


def policy_files(paths: Iterable[Path | str]) -> list[Path]:
    """Every ``*.yaml``/``*.yml`` of the directories given, and the files given."""
    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            out.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()))
        else:
            out.append(path)
    return out


def load(paths: Iterable[Path | str], ctx: ParseContext = _DEFAULTS) -> PolicySet:
    """:raises LoadError: with every error in every file."""
    paths = list(paths)
    files = policy_files(paths)
    sources, errors = [], []
    for path in files:
        try:
            sources.append((str(path), path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as e:
            errors.append(LocatedError(Location(str(path), 1, 1), f"cannot read: {e}"))
    if not files:
        names = ", ".join(str(p) for p in paths)
        errors.append(LocatedError(Location(names or ".", 1, 1), "no policy files (*.yaml) found"))
    if errors:
        raise LoadError(errors)
    return build(sources, ctx)


def _read(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def build(
    sources: Iterable[tuple[str, str]],
    ctx: ParseContext = _DEFAULTS,
    read: Callable[[str], str] = _read,
) -> PolicySet:
    """:raises LoadError: with every error found.

    ``read`` fetches the text of ``hosts_from:`` list files (tests pass a dict's get).
    """
    sources = list(sources)
    errors: list[LocatedError] = []
    policies: dict[str, Policy] = {}
    listeners: dict[tuple[str, int], tuple[Listener, Policy]] = {}
    for file, text in sources:
        reader = Reader(file, read)
        policy = _policy(reader, text, dataclasses.replace(ctx, parse_action=_action_spec))
        if policy is not None:
            if policy.app in policies:
                other = policies[policy.app]
                reader.error(policy.location, f"app '{policy.app}' is already defined in {other.file}")
            for listener in policy.listeners:
                first = listeners.get((listener.host, listener.port))
                if first is None:
                    listeners[(listener.host, listener.port)] = (listener, policy)
                    continue
                clash, other = first
                if not (policy.processes and other.processes):
                    reader.error(listener.location,
                                 f"listener {listener.address} is already used by app "
                                 f"'{clash.app}' ({clash.location}); to share it, give both policies "
                                 f"'identify: {{process: [...]}}'")
                elif clash.mode != listener.mode:
                    reader.error(listener.location, f"listener {listener.address} is shared with app "
                                 f"'{clash.app}' in mode {clash.mode}, not {listener.mode}")
                elif policy.processes & other.processes:
                    names = ", ".join(sorted(policy.processes & other.processes))
                    reader.error(listener.location, f"apps '{clash.app}' and '{policy.app}' share listener "
                                 f"{listener.address} and both claim process {names}")
        errors.extend(reader.errors)
        if policy is not None and not reader.errors:
            policies[policy.app] = policy
    if errors:
        raise LoadError(errors)
    digest = hashlib.sha256()
    for file, text in sorted(sources):
        digest.update(f"{file}\0{text}\0".encode())
    return PolicySet(policies, digest.hexdigest()[:12], time.time())


class ExamplesFailed(LoadError):
    """Policies that load but whose own ``examples:`` fail (exit 5, not 3)."""


def check_examples(policyset: PolicySet) -> list[LocatedError]:
    """Every example whose expected action differs from the decision.  A
    policy's examples are checked against its own layer: the user's against
    the user's policies, the organisation's against the organisation's (what
    the floor then changes is not the user's to fix)."""
    failures = []
    for app in policyset.policies:
        for layer, policy in policyset.layers(app):
            for example in policy.examples:
                decision = policyset.decide_layer(app, layer, example.request)
                assert decision is not None  # the layer has this policy
                if decision.action.name != example.expect:
                    failures.append(LocatedError(
                        example.location,
                        f"example expects {example.expect} but {decision.describe()} decides "
                        f"{decision.action.name}",
                    ))
    return failures


def load_checked(paths: Iterable[Path | str], organisation: Path | str | None = None,
                 ctx: ParseContext = _DEFAULTS, user: Callable[[], PolicySet] | None = None) -> PolicySet:
    """What ``hush run`` and a reload take: both layers (:func:`load_layers`),
    every policy's examples passing.

    :raises LoadError: a policy is invalid (or an organisation file is not root's);
    :raises ExamplesFailed: with every failing example."""
    policyset = load_layers(paths, organisation, ctx, user)
    failures = check_examples(policyset)
    if failures:
        raise ExamplesFailed(failures)
    return policyset


# -- the organisation's floor ------------------------------------------------------


def load_layers(paths: Iterable[Path | str], organisation: Path | str | None = None,
                ctx: ParseContext = _DEFAULTS, user_layer: Callable[[], PolicySet] | None = None) -> PolicySet:
    """The user's policies (``paths``; or what ``user_layer`` builds: the daemon's reload reads
    them through the directory it started with) and the organisation's floor (the
    ``*.yaml`` files of the directory ``organisation``; none if it does not
    exist), as one set: :meth:`PolicySet.decide` applies the stricter of the
    two layers (:func:`hush.daemon.policy.model.floor`).

    :raises LoadError: with every error of both layers."""
    errors: list[LocatedError] = []
    user = floor_set = None
    try:
        user = user_layer() if user_layer is not None else load(paths, ctx)
    except LoadError as e:
        errors.extend(e.errors)
    try:
        floor_set = load_organisation(organisation, ctx) if organisation is not None else None
    except LoadError as e:
        errors.extend(e.errors)
    if errors or user is None:
        raise LoadError(errors)
    return combine(user, floor_set)


def root_uids() -> frozenset[int]:
    """The uids root's files show as to this process: 0, and the overflow uid
    (65534, "nobody") when it runs in a user namespace that does not map root —
    as under systemd's ``PrivateUsers=yes`` in a user unit, which maps only the
    user.  The user's own uid is always mapped, so their files never pass as root's."""
    try:
        numbers = [int(x) for x in Path("/proc/self/uid_map").read_text().split()]
    except (OSError, ValueError):
        return frozenset({0})
    ranges = [numbers[i:i + 3] for i in range(0, len(numbers) - 2, 3)]
    if any(outside <= 0 < outside + count for _, outside, count in ranges):
        return frozenset({0})
    try:
        overflow = int(Path("/proc/sys/kernel/overflowuid").read_text())
    except (OSError, ValueError):
        overflow = 65534
    return frozenset({0, overflow})


def root_only(path: Path, *, strict: bool = True, roots: frozenset[int] = frozenset({0})) -> str | None:
    """Why someone other than root could change ``path`` (None: only root can):
    it is owned by another user, or group- or world-writable.  ``strict=False``
    (a directory above the floor's) allows a sticky world-writable directory
    such as /tmp, where no one can replace what root put there.  ``roots``:
    the uids root shows as (:func:`root_uids`)."""
    try:
        st = os.stat(path)
    except OSError as e:
        return f"cannot be checked: {(e.strerror or str(e)).lower()}"
    if st.st_uid not in roots:
        return f"is owned by uid {st.st_uid}, not root"
    writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable and not (not strict and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
        who = {stat.S_IWGRP: "group", stat.S_IWOTH: "world", stat.S_IWGRP | stat.S_IWOTH: "group and world"}[writable]
        return f"is {who}-writable (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _unsafe(path: Path) -> LocatedError | None:
    """The error for an organisation file or directory someone but root could change:
    it (a symbolic link: its target), or a directory above either."""
    real = Path(os.path.realpath(path))
    checks = {path: "it"} if real == path.absolute() else {real: f"its target {real}"}
    for parent in [*real.parents, *path.absolute().parents]:
        checks.setdefault(parent, f"{parent}, a directory above it,")
    roots = root_uids()
    for where, what in checks.items():
        why = root_only(where, strict=where in (path, real), roots=roots)
        if why:
            return LocatedError(Location(str(path), 1, 1),
                                f"refused: organisation policies must be writable only by root, but {what} {why}")
    return None


def load_organisation(directory: Path | str, ctx: ParseContext = _DEFAULTS) -> PolicySet | None:
    """The organisation's floor: the ``*.yaml`` files of ``directory``, or None
    if it does not exist or has none.  The directory, every file and every
    ``hosts_from`` list must be root's and writable by no one else, and so
    must the directories above them: a floor the user can edit is none.

    :raises LoadError: with every error, a file that is not root's among them."""
    directory = Path(directory)
    try:
        os.stat(directory)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:  # there, but not readable: a floor hush cannot read is not silently none
        raise LoadError([LocatedError(Location(str(directory), 1, 1), f"cannot read the organisation's "
                                      f"policies: {(e.strerror or str(e)).lower()}")]) from None
    problem = _unsafe(directory)
    if problem is not None:
        raise LoadError([problem])
    if not directory.is_dir():
        raise LoadError([LocatedError(Location(str(directory), 1, 1),
                                      "organisation_policies must name a directory of *.yaml files")])
    try:
        files = policy_files([directory])
    except OSError as e:
        raise LoadError([LocatedError(Location(str(directory), 1, 1), f"cannot read the organisation's "
                                      f"policies: {(e.strerror or str(e)).lower()}")]) from None
    if not files:
        return None
    errors = [e for e in (_unsafe(f) for f in files) if e is not None]
    if errors:
        raise LoadError(errors)
    sources = []
    for path in files:
        try:
            sources.append((str(path), path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as e:
            errors.append(LocatedError(Location(str(path), 1, 1), f"cannot read: {e}"))
    if errors:
        raise LoadError(errors)
    return build(sources, ctx, read=_read_root_only)


def _read_root_only(path: str) -> str:
    """A ``hosts_from`` list of an organisation policy: root's, or refused."""
    problem = _unsafe(Path(path))
    if problem is not None:
        raise PermissionError(problem.message)
    return _read(path)


def combine(user: PolicySet, organisation: PolicySet | None) -> PolicySet:
    """One set of both layers.  An app only the organisation has a policy for
    is decided by that policy alone, on its listeners (an error if one is the
    user's); an app in both keeps the user's listeners and identification.

    :raises LoadError: for a listener both layers claim."""
    if organisation is None or not organisation.policies:
        return user
    policies = dict(user.policies)
    used = {(listener.host, listener.port): listener for listener in user.listeners}
    errors = []
    for app, policy in organisation.policies.items():
        if app in policies:
            continue
        for listener in policy.listeners:
            clash = used.get((listener.host, listener.port))
            if clash is not None:
                errors.append(LocatedError(listener.location, f"listener {listener.address} of the organisation's "
                                           f"app '{app}' is already used by app '{clash.app}' ({clash.location})"))
        policies[app] = policy
    if errors:
        raise LoadError(errors)
    version = hashlib.sha256(f"{user.version}\0{organisation.version}".encode()).hexdigest()[:12]
    return PolicySet(policies, version, time.time(), organisation=organisation.policies)


# -- one file -----------------------------------------------------------------


def _policy(reader: Reader, text: str, ctx: ParseContext) -> Policy | None:
    root = reader.compose(text)
    if root is None:
        return None
    fields = reader.mapping(root, allowed=POLICY_KEYS, required={"app", "default"}, what="a policy")
    if not fields:
        return None
    app = None
    if "app" in fields:
        app = reader.string(fields["app"].value, "app")
        if app is not None and not _APP.match(app):
            reader.error(fields["app"].value, f"app name {app!r} must be lower-case letters, digits, '-' or '_'")
            app = None
    if "description" in fields:
        reader.string(fields["description"].value, "description")
    listeners = _listeners(reader, fields["listen"].value, ctx) if "listen" in fields else ()
    default = None
    if "default" in fields:
        default = _action_spec(reader, fields["default"].value, ctx)
    rules = []
    if "rules" in fields:
        for i, node in enumerate(reader.sequence(fields["rules"].value, "rules"), start=1):
            rule = _rule(reader, node, i, ctx)
            if rule is not None:
                rules.append(rule)
    examples = []
    if "examples" in fields:
        for node in reader.sequence(fields["examples"].value, "examples"):
            example = _example(reader, node)
            if example is not None:
                examples.append(example)
    if reader.errors or app is None or default is None:
        return None
    listeners = [dataclasses.replace(listener, app=app) for listener in listeners]
    processes = _identify(reader, fields["identify"].value) if "identify" in fields else frozenset()
    if reader.errors:
        return None
    rules = [rule for rule in rules if live(rule, time.time())]  # an expired rule is dropped at load
    return Policy(
        app=app,
        file=reader.file,
        location=reader.loc(fields["app"].value),
        listeners=tuple(listeners),
        rules=tuple(rules),
        default=default,
        default_location=reader.loc(fields["default"].value),
        examples=tuple(examples),
        index=_index(rules),
        processes=processes,
    )


def _identify(reader: Reader, node: yaml.Node) -> frozenset[str]:
    """``identify: {process: [signal-desktop, Signal]}``: names of the app's processes
    (``/proc/PID/comm``, at most 15 characters, or the executable's file name)."""
    fields = reader.mapping(node, allowed={"process"}, required={"process"}, what="identify")
    names = set()
    for item in reader.items(fields["process"].value, "process") if "process" in fields else ():
        name = reader.string(item, "process name")
        if name is not None and ("/" in name or len(name) > 255):
            reader.error(item, f"process name {name!r} must be a file name, not a path")
        elif name is not None:
            names.add(name)
    return frozenset(names)


def _index(rules: list[Rule]) -> HostIndex:
    exact, suffix, site, unindexed, by_address = {}, {}, {}, [], []
    for i, rule in enumerate(rules):
        m = rule.match
        if m.hosts or m.suffixes:
            exact[i], suffix[i] = m.hosts, m.suffixes
        elif m.sites:
            site[i] = m.sites
        elif m.nets:
            by_address.append(i)
        else:
            unindexed.append(i)
    return HostIndex(exact, suffix, site, unindexed, by_address)


def _listeners(reader: Reader, node: yaml.Node, ctx: ParseContext) -> list[Listener]:
    default_host = ctx.listen_host
    nodes = node.value if isinstance(node, yaml.SequenceNode) else [node]
    if not nodes:
        reader.error(node, "listen must name at least one listener")
    out = []
    for item in nodes:
        listener = _listener(reader, item, default_host, ctx.allow_non_loopback)
        if listener is not None:
            out.append(listener)
    return out


def _listener(reader: Reader, node: yaml.Node, default_host: str, allow_non_loopback: bool = False) -> Listener | None:
    host, mode = default_host, "http"
    port: int | None = None
    if isinstance(node, yaml.ScalarNode) and node.tag == INT:
        port = reader.integer(node, "listen port", 1, 65535)
    elif isinstance(node, yaml.ScalarNode):
        text = reader.string(node, "listen")
        if text is None:
            return None
        head, sep, tail = text.rpartition(":")
        if not sep or not tail.isdigit():
            reader.error(node, f"listen {text!r} must be a port, 'HOST:PORT' or a mapping")
            return None
        host, port = head.strip("[]"), int(tail)
        if not 1 <= port <= 65535:
            reader.error(node, f"listen port must be between 1 and 65535, not {port}")
            return None
    else:
        fields = reader.mapping(node, allowed=LISTEN_KEYS, required={"port"}, what="listen")
        if "port" in fields:
            port = reader.integer(fields["port"].value, "listen port", 1, 65535)
        given_mode = reader.choice(fields["mode"].value, "listen mode", LISTEN_MODES) if "mode" in fields else mode
        given_host = reader.string(fields["host"].value, "listen host") if "host" in fields else host
        if port is None or given_mode is None or given_host is None:
            return None
        host, mode = given_host, given_mode
    address = listen_address(reader, node, host, "listen host", allow_non_loopback)
    if address is None:
        return None
    if port is None:
        return None
    return Listener("", address, port, cast(ListenMode, mode), reader.loc(node))  # one of LISTEN_MODES


def listen_address(reader: Reader, node: yaml.Node, text: str, what: str, allow_non_loopback: bool = False):
    """``text`` as a listening IP address, loopback unless explicitly allowed (or None, with an error)."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        reader.error(node, f"{what} {text!r} must be an IP address (127.0.0.1 or ::1)")
        return None
    if not address.is_loopback and not allow_non_loopback:
        reader.error(node, f"{what} {text} is not a loopback address: hush listens on loopback only "
                           "(allow_non_loopback_listeners: true in the config allows it)")
        return None
    return str(address)


def _action_spec(reader: Reader, node: yaml.Node, ctx: ParseContext) -> Action | None:
    """``default: block`` or ``default: {action: block, status: 451}``."""
    if isinstance(node, yaml.MappingNode):
        fields = reader.mapping(node, allowed={"action"} | _params(), required={"action"}, what="default")
        if "action" not in fields:
            return None
        return _action(reader, fields, ctx)
    name = _action_name(reader, node)
    if name is None:
        return None
    missing = sorted(REGISTRY[name].required)
    if missing:  # e.g. 'default: delay' — how long?
        reader.error(node, f"action '{name}' needs {', '.join(repr(m) for m in missing)} "
                           f"(use the mapping form: {{action: {name}, {missing[0]}: ...}})")
        return None
    return REGISTRY[name].parse(reader, {}, ctx)


def _action_name(reader: Reader, node: yaml.Node) -> str | None:
    return reader.choice(node, "action", REGISTRY)


def _action(reader: Reader, fields: dict[str, Field], ctx: ParseContext) -> Action | None:
    name = _action_name(reader, fields["action"].value)
    if name is None:
        return None
    cls = REGISTRY[name]
    missing = sorted(cls.required - fields.keys())
    if missing:
        reader.error(fields["action"].value, f"action '{name}' needs {', '.join(repr(m) for m in missing)}")
        return None
    params = {}
    for key, field in fields.items():
        if key in RULE_KEYS:
            continue
        if key in cls.params:
            params[key] = field
        else:
            takes = ", ".join(sorted(cls.params)) or "no parameters"
            reader.error(field.key, f"action '{name}' does not take '{key}' (it takes: {takes})")
    return cls.parse(reader, params, ctx)


@functools.cache
def _params() -> frozenset[str]:
    """Every parameter key any action takes (the registry is complete after import)."""
    return frozenset().union(*(a.params for a in REGISTRY.values()))


def _rule(reader: Reader, node: yaml.Node, index: int, ctx: ParseContext) -> Rule | None:
    fields = reader.mapping(node, allowed=RULE_KEYS | _params(), required={"action"}, what="a rule")
    if not fields:
        return None
    before = len(reader.errors)
    name = reader.string(fields["name"].value, "name") if "name" in fields else None
    match = _match(reader, fields["match"].value) if "match" in fields else Match()
    action = _action(reader, fields, ctx) if "action" in fields else None
    max_bytes = _size(reader, fields["max_bytes"].value) if "max_bytes" in fields else None
    if max_bytes is not None and action is not None and action.egress == "none":
        reader.error(fields["max_bytes"].key, f"max_bytes has no effect on '{action.name}': nothing is fetched")
    if max_bytes is not None and action is not None and action.name == "passthrough":
        reader.error(fields["max_bytes"].key, "max_bytes needs to see the response; passthrough never does")
    if action is not None and match is not None and action.name == "passthrough" and match.request_level:
        reader.error(fields["action"].value,
                     "passthrough can only use host-level matchers (host, site, net, port): "
                     "path, method, scheme, header and kind need TLS interception")
    expires = parse_expires(reader, fields["expires"].value) if "expires" in fields else None
    if len(reader.errors) > before or match is None or action is None:
        return None
    return Rule(index, name, match, action, reader.loc(node), max_bytes, expires)


def _size(reader: Reader, node: yaml.Node) -> int | None:
    """``1000KiB``, ``1MiB``, ``5MB`` or a number of bytes."""
    text = node.value if isinstance(node, yaml.ScalarNode) and node.tag == INT else reader.string(node, "max_bytes")
    if text is None:
        return None
    m = _SIZE.match(str(text).strip())
    if not m or int(m.group(1)) == 0:
        reader.error(node, f"max_bytes {text!r} must be a size such as 1000KiB, 1MiB or 65536")
        return None
    return int(m.group(1)) * _UNITS[m.group(2)]


# -- match: a table from each key to the parser of its value -------------------------


@dataclasses.dataclass
class _MatchParts:
    """What a rule's ``match:`` keys collect, key by key, until :meth:`freeze` makes the Match."""

    hosts: set[str] = dataclasses.field(default_factory=set)
    suffixes: set[str] = dataclasses.field(default_factory=set)
    sites: set[str] = dataclasses.field(default_factory=set)
    nets: dict[Network, None] = dataclasses.field(default_factory=dict)  # in the order written, once each
    ports: set[int] = dataclasses.field(default_factory=set)
    paths: set[Glob] = dataclasses.field(default_factory=set)
    methods: set[str] = dataclasses.field(default_factory=set)
    schemes: set[str] = dataclasses.field(default_factory=set)
    kinds: set[str] = dataclasses.field(default_factory=set)
    headers: list[tuple[str, tuple[Glob, ...]]] = dataclasses.field(default_factory=list)

    def freeze(self) -> Match:
        return Match(
            hosts=frozenset(self.hosts),
            suffixes=frozenset(self.suffixes),
            sites=frozenset(self.sites),
            nets=tuple(self.nets),
            ports=frozenset(self.ports),
            paths=tuple(sorted(self.paths, key=lambda g: g.pattern)),
            methods=frozenset(self.methods),
            schemes=frozenset(self.schemes),
            headers=tuple(self.headers),
            kinds=frozenset(self.kinds),
        )


# Reads a node into the parts; what is wrong with it is an error at the node.
_Parser = Callable[[Reader, yaml.Node, _MatchParts], None]


def _match(reader: Reader, node: yaml.Node) -> Match | None:
    fields = reader.mapping(node, allowed=MATCH_KEYS, what="match")
    before = len(reader.errors)
    parts = _MatchParts()
    for key, parse in _MATCH_PARSERS.items():
        if key in fields:
            parse(reader, fields[key].value, parts)
    if len(reader.errors) > before:
        return None
    return parts.freeze()


def _each(key: str, parse_item: _Parser) -> _Parser:
    """The parser of a key whose value is one item or a list of them, from the parser of one item."""

    def parse(reader: Reader, node: yaml.Node, parts: _MatchParts) -> None:
        for item in reader.items(node, key):
            parse_item(reader, item, parts)

    return parse


def _converted[T](reader: Reader, item: yaml.Node, what: str, convert: Callable[[str], T]) -> T | None:
    """A string item through ``convert``; its ValueError becomes an error at the item."""
    text = reader.string(item, what)
    if text is None:
        return None
    try:
        return convert(text)
    except ValueError as e:
        reader.error(item, str(e))
        return None


def _host(reader: Reader, item: yaml.Node, parts: _MatchParts) -> None:
    pattern = _converted(reader, item, "host", parse_host_pattern)
    if pattern is not None:
        name, wildcard = pattern
        (parts.suffixes if wildcard else parts.hosts).add(name)


def _hosts_from(reader: Reader, item: yaml.Node, parts: _MatchParts) -> None:
    text = reader.string(item, "hosts_from")
    if text is not None:
        names = _host_list(reader, item, text)
        parts.hosts.update(names)  # a listed domain blocks itself and everything under it
        parts.suffixes.update(names)


def _site(reader: Reader, item: yaml.Node, parts: _MatchParts) -> None:
    text = reader.string(item, "site")
    if text is None:
        return
    text = text.lower().rstrip(".")
    problem = check_name(text)
    if problem:
        reader.error(item, problem)
    elif site_of(text) != text:
        reader.error(item, f"{text!r} is not a registrable domain (did you mean {site_of(text)!r}?)")
    else:
        parts.sites.add(text)


def _net(reader: Reader, item: yaml.Node, parts: _MatchParts) -> None:
    network = _converted(reader, item, "net", parse_network)
    if network is not None:
        parts.nets[network] = None


def _port(reader: Reader, item: yaml.Node, parts: _MatchParts) -> None:
    port = reader.integer(item, "port", 1, 65535)
    if port is not None:
        parts.ports.add(port)


def _path(reader: Reader, item: yaml.Node, parts: _MatchParts) -> None:
    text = reader.string(item, "path")
    if text is None:
        return
    if not text.startswith(("/", "*")):
        reader.error(item, f"path {text!r} must start with '/' or '*'")
        return
    try:
        parts.paths.add(Glob.parse(text))
    except ValueError as e:
        reader.error(item, f"bad path glob: {e}")


def _method(reader: Reader, item: yaml.Node, parts: _MatchParts) -> None:
    text = reader.string(item, "method")
    if text is not None and not _METHOD.match(text):
        reader.error(item, f"method {text!r} must be an upper-case HTTP method such as GET")
    elif text is not None:
        parts.methods.add(text)


def _scheme(reader: Reader, item: yaml.Node, parts: _MatchParts) -> None:
    text = reader.choice(item, "scheme", SCHEMES)
    if text is not None:
        parts.schemes.add(text)


def _kind(reader: Reader, item: yaml.Node, parts: _MatchParts) -> None:
    text = reader.choice(item, "kind", KINDS)
    if text is not None:
        parts.kinds.add(text)


def _headers(reader: Reader, node: yaml.Node, parts: _MatchParts) -> None:
    """``header: {User-Agent: ["WhatsApp/*", "*Bot*"]}``: a mapping of header names to globs."""
    for hname, field in reader.mapping(node, allowed=None, what="header").items():
        if not _HEADER.match(hname.lower()):
            reader.error(field.key, f"{hname!r} is not a valid header name")
            continue
        globs = []
        for item in reader.items(field.value, f"header {hname}"):
            text = reader.string(item, f"header {hname}")
            if text is None:
                continue
            try:
                globs.append(Glob.parse(text, casefold=True))
            except ValueError as e:
                reader.error(item, f"bad header glob: {e}")
        parts.headers.append((hname.lower(), tuple(globs)))
    if len({h for h, _ in parts.headers}) != len(parts.headers):
        reader.error(node, "a header is named twice (header names are case-insensitive)")


# Each match key and the parser of its value: the item parsers above, through _each, or for
# ``header`` (a mapping) the whole value's.
_MATCH_PARSERS: dict[str, _Parser] = {
    "host": _each("host", _host),
    "hosts_from": _each("hosts_from", _hosts_from),
    "site": _each("site", _site),
    "net": _each("net", _net),
    "port": _each("port", _port),
    "path": _each("path", _path),
    "method": _each("method", _method),
    "scheme": _each("scheme", _scheme),
    "kind": _each("kind", _kind),
    "header": _headers,
}
MATCH_KEYS = frozenset(_MATCH_PARSERS)


def _host_list(reader: Reader, node: yaml.Node, name: str) -> list[str]:
    """Domains from a list file: one per line, or hosts-file lines
    (``0.0.0.0 ads.example.com``); ``#`` starts a comment."""
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = Path(reader.file).parent / path
    try:
        text = reader.read(str(path))
    except (OSError, UnicodeDecodeError) as e:
        reader.error(node, f"cannot read hosts_from {name!r}: {e}")
        return []
    out, bad = [], 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        body = line.split("#", 1)[0]
        words = body.split()
        if not words:
            continue
        word = words[-1] if len(words) == 2 and is_ip(words[0]) else words[0]
        domain = word.lower().rstrip(".")
        problem = None if len(words) <= 2 and (len(words) == 1 or is_ip(words[0])) else "expected one domain per line"
        problem = problem or check_name(domain) or (f"{domain!r} is an IP address" if is_ip(domain) else None)
        if problem:
            bad += 1
            if bad <= MAX_LIST_ERRORS:
                reader.error(Location(str(path), lineno, line.index(word) + 1), problem)
            continue
        out.append(domain)
    if bad > MAX_LIST_ERRORS:
        reader.error(node, f"hosts_from {name!r}: {bad - MAX_LIST_ERRORS} more bad lines not shown")
    return out


def _example(reader: Reader, node: yaml.Node) -> Example | None:
    fields = reader.mapping(node, allowed=EXAMPLE_KEYS, required={"url", "expect"}, what="an example")
    if "url" not in fields or "expect" not in fields:
        return None
    before = len(reader.errors)
    url = reader.string(fields["url"].value, "url")
    method = reader.string(fields["method"].value, "method") if "method" in fields else "GET"
    kind = reader.choice(fields["kind"].value, "kind", KINDS) if "kind" in fields else ""
    expect = _action_name(reader, fields["expect"].value)
    headers = {}
    if "headers" in fields:
        for hname, field in reader.mapping(fields["headers"].value, allowed=None, what="headers").items():
            value = reader.string(field.value, f"header {hname}")
            if value is not None:
                headers[hname] = value
    if len(reader.errors) > before or url is None or method is None or kind is None or expect is None:
        return None
    try:
        request = RequestInfo.from_url(url, method, headers, kind or "other")
    except ValueError as e:
        reader.error(fields["url"].value, str(e))
        return None
    if not kind:  # as the classify addon would label it
        from hush.addons.classify import kind_of

        lower = {k.lower(): v for k, v in headers.items()}
        request = dataclasses.replace(request, kind=kind_of(lower.get("user-agent"), lower.get("accept"), request.path))
    return Example(request, expect, reader.loc(node))
