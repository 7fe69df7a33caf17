"""X-Hush-Decision: the rule's file named relative to the policy directory, never by its absolute path."""

import pytest

from .harness import curl, free_port

pytestmark = pytest.mark.integration


def test_the_decision_header_names_the_policy_file_not_the_home(hush, origin):
    port = free_port()
    h = hush({"t": f"app: t\nlisten: {port}\ndefault: allow\nrules:\n"
                   "  - {match: {host: 127.0.0.1}, action: block}\n"})
    res = curl("-D", "-", "-x", f"http://127.0.0.1:{port}", origin.url("/x"))
    head, _, body = res.stdout.decode().partition("\r\n\r\n")
    assert body == "Blocked by hush: rule 1 (t.yaml:5)\n", body
    assert head.startswith("HTTP/1.1 403"), head
    assert "\r\nX-Hush-Decision: block t.yaml:5\r\n" in head, head
    assert str(h.policies) not in head and origin.accepts == []
    h.stop()
    assert h.audit()[0]["rule"] == f"{h.policies / 't.yaml'}:5"  # the audit keeps the full path
