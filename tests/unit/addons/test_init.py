"""addons/__init__.py: chain() wires every collaborator itself."""

import re
from pathlib import Path

from hush.addons import Pipeline, chain
from hush.addons.torroute import _StaticTor

ADDONS = Path(__file__).resolve().parents[3] / "addons"


def test_chain_hands_each_addon_the_ones_it_calls():
    tor = _StaticTor(("127.0.0.1", 9050))
    hush = chain(tor=tor)
    assert [type(a).__name__ for a in hush] == ["Identify", "Intake", "Classify", "Decide", "Act", "Timing",
                                                "TorRoute", "Cap", "Audit"]  # hook order
    assert (hush.decide.identify, hush.decide.act) == (hush.identify, hush.act)
    assert (hush.act.identify, hush.act.timing) == (hush.identify, hush.timing)
    assert (hush.act.services.timing, hush.act.services.router) == (hush.timing, hush.router)
    assert (hush.timing.identify, hush.timing.audit) == (hush.identify, hush.audit)
    assert (hush.intake.identify, hush.intake.audit) == (hush.identify, hush.audit)
    assert hush.audit.router is hush.router and hush.router.manager is tor
    assert hush.identify.on_reload == hush.act.policy_changed
    assert Pipeline(hush).addons == list(hush)


def test_no_hush_addon_looks_another_up():
    """Only mitmproxy's own proxyserver is looked up (act and intake reach its connection handlers)."""
    found = {}
    for path in ADDONS.rglob("*.py"):
        names = re.findall(r"addons\.get\(\s*[\"'](\w+)[\"']", path.read_text())
        if names:
            found[path.relative_to(ADDONS).as_posix()] = names
    assert found == {"act.py": ["proxyserver"], "intake.py": ["proxyserver"]}
