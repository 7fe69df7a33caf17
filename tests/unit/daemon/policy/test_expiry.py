"""expires: on a rule — parsed by the loader, dropped at load once passed; derive() and next_expiry()."""

import dataclasses

import pytest

from hush.daemon.policy import RequestInfo, build
from hush.daemon.policy.expiry import derive, format_time, next_expiry, parse_time, prune
from hush.daemon.yamlschema import LoadError

POLICY = """\
app: a
default: block
rules:
  - match: {{host: example.com}}
    action: allow
    expires: {when}
  - match: {{host: other.example}}
    action: allow
"""
REQ = RequestInfo.from_url("http://example.com/")


def load(when: str):
    return build([("a.yaml", POLICY.format(when=when))])


def test_a_rule_in_force_decides_until_its_time():
    ps = load("2999-01-01T00:00:00Z")
    rule = ps.policies["a"].rules[0]
    assert rule.expires == parse_time("2999-01-01T00:00:00+00:00")
    assert ps.decide("a", REQ).action.name == "allow"
    assert next_expiry(ps) == rule.expires


def test_an_expired_rule_is_dropped_at_load_and_the_others_keep_their_index():
    ps = load("2000-01-01T00:00:00Z")
    assert [r.index for r in ps.policies["a"].rules] == [2]
    assert ps.decide("a", REQ).action.name == "block"
    assert ps.decide("a", RequestInfo.from_url("http://other.example/")).rule.index == 2
    assert next_expiry(ps) is None


@pytest.mark.parametrize("when", ['"2999-01-01T01:00:00+01:00"', "2999-01-01 00:00:00Z", '"2999-01-01T00:00Z"'])
def test_spellings(when):
    assert load(when).policies["a"].rules[0].expires == parse_time("2999-01-01T00:00:00Z")


ZONE = "needs a time zone (Z, or an offset such as +01:00)"


@pytest.mark.parametrize(("when", "message"), [
    ("2999-01-01T00:00:00", f"a.yaml:6:14: expires '2999-01-01T00:00:00' {ZONE}"),
    ("2999-01-01", f"a.yaml:6:14: expires '2999-01-01' {ZONE}"),
    ("tomorrow", "a.yaml:6:14: expires 'tomorrow' must be an ISO-8601 time such as 2026-12-02T18:00:00Z"),
    ("3600", "a.yaml:6:14: expires must be an ISO-8601 time such as 2026-12-02T18:00:00Z"),
])
def test_bad_expires_is_an_error_at_its_place(when, message):
    with pytest.raises(LoadError) as e:
        load(when)
    assert [str(x) for x in e.value.errors] == [message]


def test_prune_drops_at_the_time_and_derive_puts_temporary_rules_first():
    ps = load("2999-01-01T00:00:00Z")
    rule = ps.policies["a"].rules[0]
    later = prune(ps.policies["a"], rule.expires)  # at its time: gone
    assert [r.index for r in later.rules] == [2]
    assert prune(ps.policies["a"], rule.expires - 1) is ps.policies["a"]  # nothing changed: the same object
    temp = dataclasses.replace(ps.policies["a"].rules[1], index=0, expires=rule.expires - 10)
    active = derive(ps, {"a": (temp,)}, rule.expires - 20)
    assert active.version.startswith(ps.version + "+")
    assert [r.index for r in active.policies["a"].rules] == [0, 1, 2]
    assert active.decide("a", RequestInfo.from_url("http://other.example/")).rule.index == 0
    assert next_expiry(ps, {"a": (temp,)}) == rule.expires - 10
    assert derive(ps, {}, 0) is ps
    assert derive(ps, {"a": (temp,)}, rule.expires - 5).version != active.version  # the temporary rule went


def test_format_time_round_trips():
    assert format_time(parse_time("2026-12-02T18:00:00+02:00")) == "2026-12-02T16:00:00Z"
