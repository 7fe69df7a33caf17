""""Make a rule" (daemon/ui/rules.py): one rule first in ``rules:``, every other byte kept."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml

from hush.daemon.ui.rules import RuleError, add_rule, check, undo, write_rule

POLICIES = Path(__file__).parents[4] / "policies"

POLICY = """\
# my signal policy — keep this comment
app: signal
listen: 8102
default: tor
rules:
  # Signal's own servers: this comment is the first rule's
  - name: Signal's own servers
    match:
      host: [signal.org, "*.signal.org",
             "*.whispersystems.org"]     # a flow list over two lines
    action: passthrough
examples:
  - url: https://chat.signal.org/
    expect: passthrough
"""


def test_the_rule_goes_first_and_nothing_else_changes() -> None:
    new, line = add_rule(POLICY, "signal.yaml", "signal", "site", "Example.COM", "block", when=0)
    added = ["  # added with `hush ui` on 1970-01-01 00:00 UTC: block this site for signal\n",
             '  - name: "block example.com (hush ui)"\n',
             '    match: {site: "example.com"}\n',
             "    action: block\n"]
    lines = POLICY.splitlines(keepends=True)
    assert new.splitlines(keepends=True) == lines[:5] + added + lines[5:]
    assert new.splitlines()[line - 1] == '  - name: "block example.com (hush ui)"'
    assert yaml.safe_load(new)["rules"][0] == {"name": "block example.com (hush ui)",
                                               "match": {"site": "example.com"}, "action": "block"}


def test_a_policy_without_rules_gets_them_before_its_examples() -> None:
    text = "app: x\ndefault: allow\nexamples:\n  - url: http://a/\n    expect: allow\n"
    new, line = add_rule(text, "x.yaml", "x", "host", "a.b", "tor", when=0)
    assert new.startswith("app: x\ndefault: allow\nrules:\n  # added with")
    assert new.endswith("    action: tor\nexamples:\n  - url: http://a/\n    expect: allow\n")
    assert new.splitlines()[line - 1] == '  - name: "tor a.b (hush ui)"'


@pytest.mark.parametrize("path", sorted(POLICIES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_policy_takes_a_rule_and_keeps_its_bytes(path: Path) -> None:
    text = path.read_text()
    app = yaml.safe_load(text)["app"]
    new, line = add_rule(text, path.name, app, "host", "tracker.example", "block", when=0)
    lines = new.splitlines(keepends=True)
    assert "added with `hush ui`" in lines[line - 2] and "tracker.example" in lines[line]
    assert "".join(lines[:line - 2] + lines[line + 2:]) == text  # the four added lines aside: the same bytes


@pytest.mark.parametrize(("args", "message"), [
    (("signal", "path", "a.org", "block"), "match must be one of host, site, not 'path'"),
    (("signal", "site", "a.org", "drop"), "action must be one of block, tor, allow, passthrough, not 'drop'"),
    (("signal", "host", "a.org\n  - evil", "block"), "is not a host name or address"),
    (("signal", "host", '"x"', "block"), "is not a host name or address"),
    (("whatsapp", "host", "a.org", "block"), "signal.yaml is not whatsapp's policy"),
])
def test_refused(args: tuple, message: str) -> None:
    with pytest.raises(RuleError) as e:
        add_rule(POLICY, "signal.yaml", *args)
    assert message in str(e.value)


def test_flow_rules_are_left_to_the_user() -> None:
    with pytest.raises(RuleError, match="not a block list"):
        add_rule("app: x\ndefault: allow\nrules: []\n", "x.yaml", "x", "host", "a.b", "block")


def test_write_keeps_the_mode_and_undo_puts_it_back(tmp_path: Path) -> None:
    path = tmp_path / "signal.yaml"
    path.write_text(POLICY)
    os.chmod(path, 0o640)
    old, new, _ = write_rule(path, "signal", "host", "a.org", "block")
    assert old == POLICY and path.read_text() == new != POLICY
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert undo(path, old, new) and path.read_text() == POLICY
    path.write_text(new + "# edited meanwhile\n")
    assert not undo(path, old, new)  # someone else's edit is not overwritten
    assert [p.name for p in tmp_path.iterdir()] == ["signal.yaml"]  # no temporary file left


@pytest.mark.parametrize("value", ["evil.test\n]", "evil.test\n", "[evil.test\n]", "evil.test\r", "a\x00b.test",
                                   "evil.test\x85", "evil.test\u2028", "\nevil.test", "evil.test\t", "a b.test"])
def test_a_value_with_a_control_character_or_a_line_break_is_refused(value: str) -> None:
    """The value is matched whole: `$` let a final newline through (and `.strip("[]")` after `.strip()`
    let "evil.test\\n]" become "evil.test\\n"): written safely escaped, but it split the daemon's log line."""
    with pytest.raises(RuleError, match="is not a host name or address"):
        check("web", "host", value, "block")


@pytest.mark.parametrize(("value", "expected"), [
    ("Example.COM", "example.com"), (" example.com ", "example.com"), ("[::1]", "::1"), (" [::1] ", "::1"),
    ("example.com.", "example.com."),
])
def test_a_value_is_normalised(value: str, expected: str) -> None:
    assert check("web", "host", value, "block") == expected
