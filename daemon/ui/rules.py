""""Make a rule" from the live view: one rule added to an app's policy file,
everything else in the file kept as it was, byte for byte.

ruamel.yaml's round-trip loader reads the file with every node's line and
column; the new rule is inserted as text at the head of ``rules:`` (the
first matching rule decides, so it takes precedence over the rules below
it), with a comment saying when and why.  It is not dumped by ruamel:
ruamel's round-trip *dump* keeps comments but re-flows a flow sequence that
spans lines (four of the shipped policies) onto one line.  The result is
read again with ruamel and must hold the same document with one more rule
first, or nothing is written.

Whether the policy is valid (and its ``examples:`` still pass) is for the
daemon's normal reload to say; :func:`write_rule` returns the text it
replaced so that a refused reload can be undone.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
from pathlib import Path
from typing import Any

ACTIONS = ("block", "tor", "allow", "passthrough")
MATCHES = ("host", "site")
# matched whole (fullmatch: `$` would let a final newline through, and it would split the log line)
_HOST = re.compile(r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\.?"
                   r"|[0-9a-f:.]+")


class RuleError(ValueError):
    """The rule cannot be written (one line, for the page)."""


def _yaml() -> Any:
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    return yaml


def _load(text: str, file: str) -> Any:
    try:
        return _yaml().load(io.StringIO(text))
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RuleError(f"{file} is not YAML ruamel can read: {first}") from None


def check(app: str, match: str, value: str, action: str) -> str:
    """The value, normalised; :raises RuleError: for anything the page may not ask."""
    if match not in MATCHES:
        raise RuleError(f"match must be one of {', '.join(MATCHES)}, not {match!r}")
    if action not in ACTIONS:
        raise RuleError(f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value):
        raise RuleError(f"{value!r} is not a host name or address (it holds a control character)")
    value = value.strip(" ").strip("[]").lower()  # brackets first: "[::1] " and " [::1]" both, "a\n]" never
    if not value or len(value) > 253 or not _HOST.fullmatch(value):
        raise RuleError(f"{value!r} is not a host name or address")
    return value


def rule_text(app: str, match: str, value: str, action: str, dash: str, gap: str, when: float) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(when))
    inner = " " * (len(dash) + 1 + len(gap))
    quoted = json.dumps(value)  # a JSON string is a YAML double-quoted scalar
    return (f"{dash}# added with `hush ui` on {stamp}: {action} this {match} for {app}\n"
            f"{dash}-{gap}name: {json.dumps(f'{action} {value} (hush ui)')}\n"
            f"{inner}match: {{{match}: {quoted}}}\n"
            f"{inner}action: {action}\n")


def add_rule(text: str, file: str, app: str, match: str, value: str, action: str,
             when: float | None = None) -> tuple[str, int]:
    """``text`` with the rule first in ``rules:``; and the rule's line (1-based).

    :raises RuleError: if the file cannot take it (not a mapping, another app's,
        ``rules`` written as a flow sequence, or the result would not read back).
    """
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    value = check(app, match, value, action)
    when = time.time() if when is None else when
    doc = _load(text, file)
    if not isinstance(doc, CommentedMap):
        raise RuleError(f"{file} is not a policy (a YAML mapping)")
    if doc.get("app") != app:
        raise RuleError(f"{file} is not {app}'s policy")
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    rules = doc.get("rules")
    if rules is None and "rules" not in doc:
        # no rules yet: a new block before `examples:` (or at the end)
        at = doc.lc.key("examples")[0] if "examples" in doc else len(lines)
        new = "rules:\n" + rule_text(app, match, value, action, "  ", " ", when)
        line = at + 3
    elif isinstance(rules, CommentedSeq) and not rules.fa.flow_style() and len(rules):
        first = lines[rules.lc.item(0)[0]]
        shape = re.match(r"^(\s*)-(\s+)", first)
        if shape is None:
            raise RuleError(f"{file}: cannot tell how its rules are indented; add the rule by hand")
        at = doc.lc.key("rules")[0] + 1  # right under `rules:`, above the first rule's own comments
        new = rule_text(app, match, value, action, shape.group(1), shape.group(2), when)
        line = at + 2
    else:
        raise RuleError(f"{file}: its rules are not a block list (`rules:` with `- ` items); add the rule by hand")
    result = "".join(lines[:at]) + new + "".join(lines[at:])
    after = _load(result, file)
    before_rules = list(rules or [])
    if (not isinstance(after, CommentedMap) or list(after.get("rules") or [])[1:] != before_rules
            or {k: v for k, v in after.items() if k != "rules"} != {k: v for k, v in doc.items() if k != "rules"}):
        raise RuleError(f"{file}: adding the rule would change more than the rule; add it by hand")
    return result, line


def write_rule(path: Path, app: str, match: str, value: str, action: str) -> tuple[str, str, int]:
    """Add the rule to the file (atomically, its mode kept).  Blocking: call in a thread.

    :returns: (the text it had, the text it has now, the rule's line)
    """
    path = Path(path)
    try:
        old = path.read_text(encoding="utf-8")
    except OSError as e:
        raise RuleError(f"cannot read {path}: {(e.strerror or str(e)).lower()}") from None
    new, line = add_rule(old, str(path), app, match, value, action)
    replace(path, new)
    return old, new, line


def replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, keeping the mode."""
    mode = os.stat(path).st_mode & 0o7777
    tmp = path.with_name(f".{path.name}.hush-ui.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RuleError(f"cannot write {path}: {(e.strerror or str(e)).lower()}") from None


def undo(path: Path, old: str, new: str) -> bool:
    """Put ``old`` back if the file still holds ``new`` (nobody edited it since).  Blocking."""
    try:
        if Path(path).read_text(encoding="utf-8") != new:
            return False
        replace(Path(path), old)
        return True
    except (OSError, RuleError):
        return False
