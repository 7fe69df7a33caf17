"""Each action file: parsing its parameters, and what it does to a flow."""

import pytest
from mitmproxy.test import tflow

from hush.addons.actions import REGISTRY, ParseContext
from hush.addons.actions.block import Block
from hush.addons.actions.strip import DEFAULT_HEADERS, Strip
from hush.daemon.policy import build
from hush.daemon.yamlschema import LoadError


def test_registry_finds_every_action_file():
    assert sorted(REGISTRY) == ["allow", "block", "debounce", "delay", "passthrough", "strip", "tor"]
    assert {n: (a.needs_http, a.egress) for n, a in REGISTRY.items() if n not in ("delay", "debounce")} == {
        "allow": (False, "direct"), "block": (False, "none"),
        "passthrough": (False, "direct"), "strip": (True, "direct"), "tor": (False, "tor"),
    }
    assert REGISTRY["delay"].needs_http and REGISTRY["debounce"].needs_http


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
    Strip(("cookie",), None).on_request(f, None)
    assert f.request.headers.get_all("cookie") == [] and f.request.headers["x-other"] == "1"


def test_block_parse_error():
    with pytest.raises(LoadError):
        action("{action: block, status: true}")
