import asyncio

import pytest
from mitmproxy.test import taddons

from hush.addons.notes import notes
from hush.addons.timing import Timing, related, url_key

from .helpers import http_flow


@pytest.mark.parametrize("url, key", [
    ("https://example.com/", "example.com"),
    ("https://example.com/fi", "example.com/fi"),
    ("http://example.com:8080/a?q=1", "example.com:8080/a?q=1"),
])
def test_url_key(url, key):
    assert url_key(url) == key


@pytest.mark.parametrize("a, b, expected", [
    ("example.com/f", "example.com/fi", True),
    ("example.com/file", "example.com/fil", True),  # backspace
    ("example.co", "example.com/x", True),  # the host was still being typed
    ("example.com/a", "example.com/b", False),
    ("example.com/a", "other.org/a", False),
    # the host typed, the path the same (NeoChat's .well-known lookup per keystroke of the Matrix ID)
    ("m/.well-known/matrix/client", "mat/.well-known/matrix/client", True),
    ("hs.example:8/.well-known/matrix/client", "hs.example:84/.well-known/matrix/client", True),
    ("m/.well-known/matrix/client", "mat/.well-known/matrix/server", False),
    ("m.example/a", "n.example/a", False),
])
def test_related(a, b, expected):
    assert related(a, b) is expected


def test_debounce_supersedes_and_releases_the_last():
    timing = Timing()

    async def go():
        flows = [http_flow(f"http://example.com/{p}") for p in ("f", "fi", "fil")]
        tasks = []
        for f in flows:
            tasks.append(asyncio.ensure_future(timing.debounce(f, "wa", 0.2)))
            await asyncio.sleep(0.05)
        other = asyncio.ensure_future(timing.debounce(http_flow("http://other.org/x"), "wa", 0.2))
        return await asyncio.gather(*tasks, other), flows

    with taddons.context(timing):
        outcomes, flows = asyncio.run(go())
    assert outcomes == ["superseded", "superseded", None, None]
    assert notes(flows[0]).superseded_by == "http://example.com/fi"
    assert timing.total == 0


def test_bounds_and_shutdown():
    timing = Timing()

    async def go(tctx):
        tctx.configure(timing, hush_max_held_per_app=2, hush_max_held_total=3)
        held = [asyncio.ensure_future(timing.delay(http_flow(f"http://a/{i}"), "a", 30)) for i in range(2)]
        other = asyncio.ensure_future(timing.delay(http_flow("http://b/"), "b", 30))
        await asyncio.sleep(0.01)
        assert await timing.delay(http_flow("http://a/3"), "a", 30) == "overflow"  # per app
        assert await timing.delay(http_flow("http://c/"), "c", 30) == "overflow"  # in total
        assert timing.held() == 3 and timing.held("a") == 2
        timing.done()
        return await asyncio.gather(*held, other)

    with taddons.context(timing) as tctx:
        assert asyncio.run(go(tctx)) == ["shutdown"] * 3


def test_a_flow_whose_client_left_is_released_as_abandoned(monkeypatch):
    from mitmproxy.connection import ConnectionState

    from hush.addons import timing as timing_module

    monkeypatch.setattr(timing_module, "SWEEP_SECONDS", 0.02)
    timing = Timing()

    async def go():
        gone, stays = http_flow("http://a/gone"), http_flow("http://a/stays")
        t_gone = asyncio.ensure_future(timing.delay(gone, "a", 30))
        t_stays = asyncio.ensure_future(timing.delay(stays, "a", 0.3))
        await asyncio.sleep(0.05)
        assert timing.held("a") == 2
        gone.client_conn.state = ConnectionState.CAN_WRITE  # EOF from the app: it can no longer read from us
        outcome = await asyncio.wait_for(t_gone, 1)
        assert timing.held("a") == 1
        return outcome, await t_stays

    with taddons.context(timing):
        assert asyncio.run(go()) == ("abandoned", None)
    assert timing.total == 0 and timing._sweeper.done()


# -- issue 11, item 13: a reload revokes held flows it treats more strictly

HELD = """\
app: a
listen: 8101
default: {action: delay, delay: 30s}
rules:
  - match: {host: tor.org}
    action: delay
    delay: 30s
    then: tor
"""


@pytest.mark.parametrize("new_rules, outcomes", [
    # now blocked: both revoked
    ("  - match: {host: [a.org, tor.org]}\n    action: block\n", ["revoked", "revoked"]),
    # direct now where tor was: laxer, so the held flow keeps its hold and goes through tor
    ("  - match: {host: tor.org}\n    action: allow\n", [None, None]),
    # through tor now where it went direct: stricter (the site would see an exit, not this machine)
    ("  - match: {host: a.org}\n    action: tor\n", ["revoked", None]),
    # allowed without a delay: not stricter, both keep their hold and decision
    ("  - match: {host: [a.org, tor.org]}\n    action: allow\n", [None, None]),
])
def test_a_reload_revokes_held_flows_it_treats_more_strictly(new_rules, outcomes):
    from hush.daemon.policy import build

    old = build([("a.yaml", HELD)])
    new = build([("a.yaml", "app: a\nlisten: 8101\ndefault: {action: delay, delay: 30s}\nrules:\n" + new_rules)])
    timing = Timing()

    async def go():
        flows = [http_flow("http://a.org/x"), http_flow("http://tor.org/y")]
        tasks = []
        for f in flows:
            notes(f).app = "a"
            notes(f).decision = old.decide("a", _info(f))
            tasks.append(asyncio.ensure_future(timing.delay(f, "a", 0.3)))
        await asyncio.sleep(0.01)
        revoked = timing.policy_changed(old, new)
        return revoked, await asyncio.gather(*tasks), flows

    with taddons.context(timing):
        revoked, got, flows = asyncio.run(go())
    assert got == outcomes and revoked == outcomes.count("revoked")
    for f, outcome in zip(flows, outcomes, strict=True):
        assert (notes(f).outcome == "revoked") is (outcome == "revoked")


def test_a_held_flow_of_an_app_the_new_set_lacks_is_revoked():
    from hush.daemon.policy import build

    old = build([("a.yaml", HELD)])
    new = build([("b.yaml", "app: b\nlisten: 8102\ndefault: allow\n")])
    timing = Timing()

    async def go():
        f = http_flow("http://a.org/x")
        notes(f).decision = old.decide("a", _info(f))
        task = asyncio.ensure_future(timing.delay(f, "a", 30))
        await asyncio.sleep(0.01)
        assert timing.policy_changed(old, new) == 1
        return await asyncio.wait_for(task, 5), f

    with taddons.context(timing):
        outcome, f = asyncio.run(go())
    assert outcome == "revoked" and notes(f).revoked_by.note.startswith("fail-closed")


def _info(flow):
    from hush.addons.flowinfo import request_info

    return request_info(flow)


def test_a_held_flow_whose_listener_is_another_apps_now_is_revoked():
    from hush.addons.identify import Identify
    from hush.daemon.policy import build
    from hush.daemon.policy.holder import PolicyHolder

    old = build([("a.yaml", HELD)])
    new = build([("b.yaml", "app: b\nlisten: 8101\ndefault: {action: delay, delay: 30s}\n")])  # same listener
    identify = Identify(PolicyHolder(old))
    timing = Timing(identify)

    async def go():
        f = http_flow("http://a.org/x")
        notes(f).decision = old.decide("a", _info(f))
        task = asyncio.ensure_future(timing.delay(f, "a", 30))
        await asyncio.sleep(0.01)
        assert timing.policy_changed(old, new) == 1
        return await asyncio.wait_for(task, 5), f

    with taddons.context(identify, timing):
        outcome, f = asyncio.run(go())
    assert outcome == "revoked" and "not a's" in notes(f).revoked_by.note
