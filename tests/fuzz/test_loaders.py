"""Fuzzing the policy and config loaders: whatever the input, the only thing
that escapes is LoadError, and every error it carries has a location.

In the suite the examples are derandomized (the same 300 per test on every
run), so a landing is never decided by a lucky draw.  To search further, with
fresh random examples:  HUSH_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/fuzz
"""

import os

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hush.daemon.config import parse_config
from hush.daemon.policy import build
from hush.daemon.yamlschema import LoadError

FILE = "policies/fuzz.yaml"
_DEEP = os.environ.get("HUSH_FUZZ_EXAMPLES")
FAST = settings(max_examples=int(_DEEP or 300), derandomize=not _DEEP, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])

KEYS = ["app", "listen", "default", "rules", "examples", "identify", "description", "match", "action",
        "host", "hosts_from", "site", "net", "path", "method", "header", "kind", "port", "scheme", "status",
        "headers", "user_agent", "isolation", "delay", "quiet", "then", "max_bytes", "min", "max", "process",
        "url", "expect", "mode", "name", "user-agent"]
SCALARS = st.one_of(
    st.sampled_from(["allow", "block", "tor", "strip", "passthrough", "delay", "debounce", "reset", "no", "off",
                     "yes", "*.example.com", "example.com", "/a*", "GET", "get", "8101", "127.0.0.1:8101",
                     "0.0.0.0:1", "10.0.0.0/8", "10.0.0.1/8", "::/0", "1MiB", "2s", "https://a.org/", "[", "{a}",
                     "a.*.b", "", "~", "null"]),
    st.integers(min_value=-5, max_value=70000),
    st.booleans(),
    st.text(max_size=12),
)
TREES = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.sampled_from(KEYS), children, max_size=5)),
    max_leaves=25,
)


def check(text: str, loader) -> None:
    try:
        loader(text)
    except LoadError as e:
        assert e.errors
        for err in e.errors:
            assert err.location.line >= 1 and err.location.col >= 1, err
            assert err.location.file in (FILE, "c.yaml"), err
            assert err.message, err


def policy(text):
    return build([(FILE, text)], read=lambda p: "ads.example.com\n")


@FAST
@given(st.text(max_size=300))
def test_policy_loader_on_any_text(text):
    check(text, policy)


@FAST
@given(st.dictionaries(st.sampled_from(KEYS), TREES, max_size=7))
def test_policy_loader_on_yaml_shaped_input(tree):
    check(yaml.safe_dump(tree, allow_unicode=True), policy)


@FAST
@given(TREES, st.sampled_from(["allow", "block", "tor", "delay", "debounce", "strip"]))
def test_policy_loader_on_mutated_rules(rule, action):
    base = {"app": "f", "listen": 8101, "default": "allow", "rules": [rule, {"action": action, "match": rule}]}
    check(yaml.safe_dump(base, allow_unicode=True), policy)


@FAST
@given(st.dictionaries(st.sampled_from([*KEYS, "state_dir", "audit", "tor", "timing", "torrc", "redaction",
                                        "keep_days", "control", "log_level", "listen_host"]),
                       TREES, max_size=6))
def test_config_loader(tree):
    check(yaml.safe_dump(tree, allow_unicode=True), lambda text: parse_config("c.yaml", text))
