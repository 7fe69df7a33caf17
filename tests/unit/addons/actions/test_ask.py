"""ask: its parameters, and what hold() makes of an answer, a timeout, a failing asker and timing's bounds."""

import asyncio

import pytest
from mitmproxy.test import tflow

from hush.addons.actions.ask import Ask
from hush.addons.actions.base import Services
from hush.addons.notes import notes
from hush.daemon.policy import ask as asking
from hush.daemon.policy import build
from hush.daemon.ui.questions import Answer
from hush.daemon.yamlschema import LoadError


def policy(default: str):
    return build([("p.yaml", f"app: x\ndefault: {default}\n")])


def test_defaults_block_after_30s():
    a = policy("ask").policies["x"].default
    assert isinstance(a, Ask) and a.fallback.name == "block" and a.timeout == 30
    assert a.describe() == "ask (for 30s; then block (answer 403))"
    b = policy("{action: ask, fallback: {action: block, status: 204}, timeout: 2m}").policies["x"].default
    assert b.fallback.describe() == "block (answer 204)" and b.timeout == 120
    assert policy("{action: ask, fallback: allow}").policies["x"].default.fallback.name == "allow"


@pytest.mark.parametrize(("text", "message"), [
    ("{action: ask, fallback: passthrough}",
     "p.yaml:2:34: fallback must be one of: allow, tor, block (not passthrough)"),
    ("{action: ask, fallback: ask}", "p.yaml:2:34: fallback must be one of: allow, tor, block (not ask)"),
    ("{action: ask, timeout: 11m}", "p.yaml:2:33: timeout must be between 0.1s and 600s, not 11m"),
    ("{action: ask, then: tor}", "p.yaml:2:24: action 'ask' does not take 'then' (it takes: fallback, timeout)"),
])
def test_bad_parameters(text, message):
    with pytest.raises(LoadError) as e:
        policy(text)
    assert [str(x) for x in e.value.errors] == [message]


class FakeTiming:
    def __init__(self, outcome=None, after=60.0):
        self.outcome, self.after = outcome, after

    async def delay(self, flow, app, seconds):
        await asyncio.sleep(min(self.after, seconds))
        return self.outcome


def hold(monkeypatch, ask_result, timing=None, text="ask"):
    ps = policy(text)
    decision = ps.decide("x", __import__("hush.daemon.policy", fromlist=["RequestInfo"]).RequestInfo.from_url(
        "http://www.example.com/a"))
    flow = tflow.tflow()
    flow.request.url = "http://www.example.com/a"
    n = notes(flow)
    n.decision = decision

    async def fake_ask(**kw):
        assert kw["app"] == "x" and kw["site"] == "example.com" and kw["host"] == "www.example.com"
        if isinstance(ask_result, Exception):
            raise ask_result
        return ask_result

    monkeypatch.setattr(asking.ASKER, "ask", fake_ask)
    out = asyncio.run(decision.action.hold(flow, decision, Services(timing or FakeTiming())))
    return out, n, decision


def test_an_answer_becomes_the_decision(monkeypatch):
    out, n, decision = hold(monkeypatch, asking.Result(Answer("tor", "once", "dbus")))
    assert out is None and n.decision.action.name == "tor" and n.decision.rule is decision.rule
    assert n.outcome is None


def test_no_answer_is_the_fallback_with_its_outcome(monkeypatch):
    out, n, _ = hold(monkeypatch, asking.Result(None, "ask-timeout"), text="{action: ask, fallback: allow}")
    assert out is None and n.decision.action.name == "allow" and n.outcome == "ask-timeout"


def test_a_failing_asker_is_the_fallback_never_direct(monkeypatch):
    out, n, _ = hold(monkeypatch, RuntimeError("boom"))
    assert out is None and n.decision.action.name == "block" and n.outcome == "ask-failed"


def test_timing_keeping_it_back_wins_over_a_pending_question(monkeypatch):
    async def never(**kw):
        await asyncio.sleep(60)

    flow = tflow.tflow()
    ps = policy("ask")
    from hush.daemon.policy import RequestInfo

    decision = ps.decide("x", RequestInfo.from_url("http://example.com/"))
    notes(flow).decision = decision
    monkeypatch.setattr(asking.ASKER, "ask", never)
    out = asyncio.run(decision.action.hold(flow, decision, Services(FakeTiming("overflow", 0))))
    assert out == "overflow" and notes(flow).decision is decision


def test_revoked_by_the_rule_its_own_answer_added_takes_the_answer(monkeypatch):
    from hush.daemon.policy import RequestInfo

    async def answered_soon(**kw):
        await asyncio.sleep(0.05)
        return asking.Result(Answer("block", "1h", "page"))

    flow = tflow.tflow()
    decision = policy("ask").decide("x", RequestInfo.from_url("http://example.com/"))
    notes(flow).decision = decision
    monkeypatch.setattr(asking.ASKER, "ask", answered_soon)

    class Revoking(FakeTiming):
        def __init__(self, by):
            super().__init__("revoked", 0)
            self.by = by

        async def delay(self, flow, app, seconds):
            notes(flow).outcome, notes(flow).revoked_by = "revoked", self.by
            return "revoked"

    blocked = policy("block").decide("x", RequestInfo.from_url("http://example.com/"))
    out = asyncio.run(decision.action.hold(flow, decision, Services(Revoking(blocked))))
    assert out is None and notes(flow).decision.action.name == "block" and notes(flow).outcome is None

    # a reload that blocks it is stricter than an answer "allow": the revocation stands, nothing is sent
    async def allowed_soon(**kw):
        await asyncio.sleep(0.05)
        return asking.Result(Answer("allow", "once", "page"))

    flow = tflow.tflow()
    notes(flow).decision = decision
    monkeypatch.setattr(asking.ASKER, "ask", allowed_soon)
    out = asyncio.run(decision.action.hold(flow, decision, Services(Revoking(blocked))))
    assert out == "revoked" and notes(flow).decision is decision


def mismatched(monkeypatch, url, text="ask", host_header=None, sni=None):
    """hold() on a flow that dials ``url``'s host; returns (out, notes, what the asker was asked)."""
    from hush.addons.notes import conn_notes
    from hush.daemon.policy import RequestInfo

    ps = policy(text)
    decision = ps.decide("x", RequestInfo.from_url(url))
    flow = tflow.tflow()
    flow.request.url = url
    if host_header is not None:
        flow.request.headers["Host"] = host_header
    conn_notes(flow.client_conn).sni = sni
    n = notes(flow)
    n.decision = decision
    asked = []

    async def fake_ask(**kw):
        asked.append(kw)
        return asking.Result(Answer("allow", "once", "page"))

    monkeypatch.setattr(asking.ASKER, "ask", fake_ask)
    out = asyncio.run(decision.action.hold(flow, decision, Services(FakeTiming())))
    return out, n, asked


def test_the_question_names_the_host_dialled_not_the_host_header(monkeypatch):
    # the same host, spelled otherwise in the Host header: asked about the dialled one, its URL built from it
    out, n, [kw] = mismatched(monkeypatch, "http://tracker.example:8080/a?b", host_header="Tracker.Example.:8080")
    assert out is None and n.decision.action.name == "allow"
    assert kw["host"] == "tracker.example" and kw["site"] == "tracker.example"
    assert kw["url"] == "http://tracker.example:8080/a?b"


@pytest.mark.parametrize("fallback", ["allow", "tor", "block"])
def test_a_host_header_naming_another_site_is_blocked_never_asked(monkeypatch, fallback):
    out, n, asked = mismatched(monkeypatch, "http://tracker.evil/a", f"{{action: ask, fallback: {fallback}}}",
                               host_header="trusted-bank.example")
    assert asked == [] and out is None and n.outcome == "ask-mismatch"
    assert n.decision.action.name == "block"  # whatever the fallback: the user was not asked about it


def test_a_tls_name_naming_another_site_is_blocked_never_asked(monkeypatch):
    _, n, asked = mismatched(monkeypatch, "https://tracker.evil/a", sni="trusted-bank.example")
    assert asked == [] and n.outcome == "ask-mismatch" and n.decision.action.name == "block"
    _, n, [kw] = mismatched(monkeypatch, "https://tracker.evil/a", sni="tracker.evil")
    assert kw["host"] == "tracker.evil" and n.outcome is None


def test_a_block_fallback_keeps_its_status_on_a_mismatch(monkeypatch):
    _, n, _ = mismatched(monkeypatch, "http://tracker.evil/a", "{action: ask, fallback: {action: block, status: 204}}",
                         host_header="trusted-bank.example")
    assert n.decision.action.describe() == "block (answer 204)"
