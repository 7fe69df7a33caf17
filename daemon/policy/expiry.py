"""Rules that end: ``expires:`` on a rule, and the rules the user's answers add for a while.

A rule may carry ``expires: 2026-12-02T18:00:00Z`` (an absolute ISO-8601 time
with a zone).  The loader drops a rule whose time has passed; the
:class:`~hush.daemon.policy.holder.PolicyHolder` derives the active set again
when the next one passes, without a reload::

    policy = prune(policy, time.time())          # the rules still in force
    when = next_expiry(policyset)                # epoch seconds, or None
    active = derive(loaded, {"signal": (rule,)}, time.time())

``derive`` also puts *temporary* rules before an app's own (an ``ask`` answered
"for this site for 1 h" or "until restart": :mod:`hush.daemon.policy.ask`).
They live in the daemon's memory only; a rule "always" is written into the
policy file instead (:mod:`hush.daemon.policy.edit`).

Pure functions: no I/O, no mitmproxy.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from hush.daemon.policy.model import Policy, PolicySet, Rule
    from hush.daemon.yamlschema import Reader

_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_STR = "tag:yaml.org,2002:str"


def parse_time(text: str) -> float:
    """An absolute ISO-8601 time with a zone → epoch seconds.

    :raises ValueError: for anything else (one line, the input quoted)."""
    try:
        when = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"expires {text!r} must be an ISO-8601 time such as 2026-12-02T18:00:00Z") from None
    if when.tzinfo is None:
        raise ValueError(f"expires {text!r} needs a time zone (Z, or an offset such as +01:00)")
    return when.timestamp()


def format_time(when: float) -> str:
    """Epoch seconds → ``2026-12-02T18:00:00Z`` (what ``expires:`` is written as)."""
    return datetime.datetime.fromtimestamp(round(when), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_expires(reader: Reader, node: yaml.Node) -> float | None:
    """The ``expires:`` value of a rule (a YAML timestamp or a string), or None with an error."""
    if not (isinstance(node, yaml.ScalarNode) and node.tag in (_TIMESTAMP, _STR)):
        reader.error(node, "expires must be an ISO-8601 time such as 2026-12-02T18:00:00Z")
        return None
    try:
        return parse_time(node.value)
    except ValueError as e:
        reader.error(node, str(e))
        return None


def live(rule: Rule, now: float) -> bool:
    return rule.expires is None or rule.expires > now


def prune(policy: Policy, now: float, before: Sequence[Rule] = ()) -> Policy:
    """``policy`` with ``before`` put first and every rule whose ``expires`` has
    passed dropped (the same object when nothing changes).  Rules keep their
    ``index`` (the position in the file, as ``explain`` and the audit name them)."""
    from hush.daemon.policy.loader import _index as index_rules  # the loader's own index of a rule list

    rules = [r for r in (*before, *policy.rules) if live(r, now)]
    if not before and len(rules) == len(policy.rules):
        return policy
    return dataclasses.replace(policy, rules=tuple(rules), index=index_rules(rules))


def next_expiry(policyset: PolicySet, temporary: Mapping[str, Sequence[Rule]] | None = None,
                now: float = 0.0) -> float | None:
    """When the next rule of ``policyset`` (either layer) or of ``temporary`` expires after ``now``."""
    times = [
        rule.expires
        for policies in (policyset.policies.values(), policyset.organisation.values())
        for policy in policies
        for rule in policy.rules
        if rule.expires is not None and rule.expires > now
    ]
    times += [r.expires for rules in (temporary or {}).values() for r in rules if r.expires is not None
              and r.expires > now]
    return min(times, default=None)


def derive(loaded: PolicySet, temporary: Mapping[str, Sequence[Rule]], now: float) -> PolicySet:
    """The set in force at ``now``: ``loaded`` without its expired rules, each
    app's temporary rules (those not expired) before its own.  Temporary rules
    go into the user's layer only: an app only the organisation has a policy
    for keeps the organisation's rules as they are (a user's answer never
    weakens the floor).  ``loaded`` itself when nothing changes."""
    from hush.daemon.policy.model import PolicySet

    user_apps = {app for app in loaded.policies if loaded.organisation.get(app) is not loaded.policies[app]}
    policies = {
        app: prune(policy, now, temporary.get(app, ()) if app in user_apps else ())
        for app, policy in loaded.policies.items()
    }
    organisation = {app: policies[app] if loaded.policies.get(app) is policy else prune(policy, now)
                    for app, policy in loaded.organisation.items()}
    changed = any(policies[a] is not p for a, p in loaded.policies.items()) or any(
        organisation[a] is not p for a, p in loaded.organisation.items())
    if not changed:
        return loaded
    digest = hashlib.sha256(loaded.version.encode())
    for app in sorted(policies):
        for rule in policies[app].rules:
            digest.update(f"\0{app}\0{rule.location}\0{rule.action.describe()}\0{rule.expires}".encode())
    return PolicySet(policies, f"{loaded.version}+{digest.hexdigest()[:4]}", loaded.loaded_at,
                     organisation=organisation)
