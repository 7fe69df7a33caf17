"""Each action file: parsing its parameters, and what it does to a flow."""

import pytest
from mitmproxy.test import tflow

from hush.addons.actions import REGISTRY, Action, ParseContext
from hush.addons.actions.base import Holding, Services
from hush.addons.actions.block import Block
from hush.addons.actions.strip import DEFAULT_HEADERS, Strip
from hush.daemon.policy import build
from hush.daemon.yamlschema import LoadError


def test_registry_finds_every_action_file():
    assert sorted(REGISTRY) == ["allow", "ask", "block", "debounce", "delay", "learn", "passthrough", "strip", "tor"]
    # what each action class says of itself, every one of them: a holding action sends nothing
    # itself (what leaves once it is released is its `then`'s)
    assert {name: (cls.needs_http, cls.sends, issubclass(cls, Holding)) for name, cls in REGISTRY.items()} == {
        "allow": (False, "direct", False), "block": (False, "none", False), "passthrough": (False, "direct", False),
        "strip": (True, "direct", False), "tor": (False, "tor", False),
        "delay": (True, "none", True), "debounce": (True, "none", True),
        "ask": (True, "none", True), "learn": (False, "direct", False),
    }


# every action, as a rule holds it: what leaves the machine once it is applied
EGRESS = {
    "allow": "direct", "block": "none", "passthrough": "direct", "strip": "direct", "tor": "tor",
    "{action: delay, delay: 1s}": "direct", "{action: delay, delay: 1s, then: tor}": "tor",
    "{action: debounce}": "direct", "{action: debounce, then: {action: tor, isolation: flow}}": "tor",
    # ask: what an answer may let leave, at most (the user may say allow), whatever the fallback
    "ask": "direct", "{action: ask, fallback: tor, timeout: 5s}": "direct", "learn": "direct",
}


def test_every_action_says_what_leaves():
    built = {text: action(text) for text in EGRESS}
    assert {a.name for a in built.values()} == set(REGISTRY)  # none left out
    assert {text: a.egress for text, a in built.items()} == EGRESS
    for a in built.values():
        assert isinstance(a, Action) and a.needs_http == type(a).needs_http
        if isinstance(a, Holding):
            assert not isinstance(a.then, Holding) and a.egress == a.then.egress
        else:
            assert a.egress == type(a).sends


def test_a_holding_action_without_timing_fails_rather_than_sends():
    import asyncio

    for text in ("{action: delay, delay: 1s}", "{action: debounce}", "ask"):
        held = action(text)
        assert isinstance(held, Holding)
        with pytest.raises(RuntimeError, match="no timing addon"):
            asyncio.run(held.hold(tflow.tflow(), None, Services()))


def action(text):
    ps = build([("p.yaml", f"app: x\nlisten: 1\ndefault: {text}\n")], ParseContext(user_agent="G/1"))
    return ps.policies["x"].default


def test_parse_and_describe():
    assert action("block") == Block(403)
    assert action("{action: block, status: reset}").describe() == "block (reset the connection)"
    assert action("{action: block, status: 204}").describe() == "block (answer 204)"
    assert action("strip") == Strip(DEFAULT_HEADERS, "G/1")
    assert action("{action: strip, headers: [Cookie]}") == Strip(("cookie",), None)  # UA not stripped: not replaced
    assert action("{action: strip, user_agent: remove}").user_agent is None
    assert action("allow").describe() == "allow" and action("passthrough").describe() == "passthrough"


def test_duplicate_header_names_are_folded():
    assert action("{action: strip, headers: [Cookie, cookie, COOKIE]}").headers == ("cookie",)


def test_strip_removes_repeated_headers_and_keeps_others():
    f = tflow.tflow()
    f.request.headers.add("Cookie", "a=1")
    f.request.headers.add("Cookie", "b=2")
    f.request.headers["X-Other"] = "1"
    Strip(("cookie",), None).on_request(f, None, Services())
    assert f.request.headers.get_all("cookie") == [] and f.request.headers["x-other"] == "1"


def test_block_parse_error():
    with pytest.raises(LoadError):
        action("{action: block, status: true}")
