"""actions/base.py: what a response hush makes itself tells the app."""

from hush.addons.actions.base import decision_header, local_response
from hush.daemon.policy import build


def _decision(file: str):
    text = "app: p\nlisten: 8101\ndefault: allow\nrules:\n  - match: {host: blocked.org}\n    action: block\n"
    policyset = build([(file, text)])
    decision = policyset.decide_connect("p", "blocked.org", 443)
    assert decision is not None
    return decision


def test_decision_header_names_the_file_relative_to_the_policy_dir_not_the_home():
    decision = _decision("/home/alice/.config/hush/policies/p.yaml")
    assert decision.ref == "/home/alice/.config/hush/policies/p.yaml:5"  # the audit and explain keep the path
    assert decision_header(decision) == "block p.yaml:5"
    response = local_response(403, f"Blocked by hush: {decision.describe()}", decision)
    assert response.content == b"Blocked by hush: rule 1 (p.yaml:5)\n"  # the body names it so too
    assert response.headers["X-Hush-Decision"] == "block p.yaml:5"
    assert b"alice" not in bytes(response.headers) and b"alice" not in response.content


def test_decision_header_of_a_file_given_alone():
    assert decision_header(_decision("p.yaml")) == "block p.yaml:5"
