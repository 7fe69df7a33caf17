"""Registrable domains (eTLD+1) from the Public Suffix List that tldextract bundles.

hush reads the list from tldextract's own snapshot file, never online, and
answers as ``tldextract.TLDExtract(include_psl_private_domains=True)`` does
(the unit tests compare the two over every rule of the list).  It does not
import tldextract's code to do it: that imports ``requests`` and urllib3 and
builds two tries at first use, ~150 ms that every ``hush policy`` command
paid before its first line of output.  Here the list is two sets, built on
first use in a few milliseconds.

    >>> registrable("a.b.example.co.uk")
    'example.co.uk'
    >>> registrable("co.uk"), registrable("intranet")
    ('', '')
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path

# A rule is the first word of a line that starts with a letter or digit, or
# with "*." or "!" (comments start with "//"): the list's own format, as
# tldextract parses it.
_RULE = re.compile(r"^([.*!]*\w\S*)", re.MULTILINE)


def snapshot_path() -> Path:
    """tldextract's bundled copy of the list, found without importing tldextract."""
    spec = importlib.util.find_spec("tldextract")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("tldextract is not installed: hush reads the Public Suffix List from its snapshot")
    return Path(next(iter(spec.submodule_search_locations))) / ".tld_set_snapshot"


@functools.cache
def _rules() -> tuple[frozenset[str], frozenset[str]]:
    """(rules, paths): every rule as written (ICANN and private ones alike),
    and every right-hand part of one (``co.uk`` → ``uk``, ``co.uk``;
    ``*.ck`` → ``ck``, ``*.ck``; ``!www.ck`` → ``ck``, ``!www.ck``): the nodes
    of the list's tree, each named by its path."""
    rules = frozenset(_RULE.findall(snapshot_path().read_text(encoding="utf-8")))
    paths = set(rules)
    for rule in rules:
        dot = rule.find(".")
        while dot >= 0:
            paths.add(rule[dot + 1:])
            dot = rule.find(".", dot + 1)
    return rules, frozenset(paths)


def _decoded(label: str) -> str:
    """The list is written in Unicode; a name's ``xn--`` label is compared in
    its decoded form (as tldextract does, with the ``idna`` package; a label
    that does not decode is compared as it is)."""
    if not label.startswith("xn--"):
        return label
    import idna  # only for an internationalised label: most names never need it

    try:
        return idna.decode(label)
    except (UnicodeError, IndexError):
        return label


def suffix_start(labels: list[str]) -> int | None:
    """Where the public suffix of ``labels`` starts (an index into them), or
    None if no rule of the list covers the name's last label."""
    rules, paths = _rules()
    start = end = len(labels)
    path = ""
    for label in reversed(labels):
        label = _decoded(label)
        longer = f"{label}.{path}" if path else label
        if longer in paths:
            end -= 1
            path = longer
            if longer in rules:
                start = end
            continue
        if path and f"*.{path}" in paths:  # a wildcard covers this label, unless an exception names it
            return end if f"!{label}.{path}" in paths else end - 1
        break
    return None if start == len(labels) else start


def registrable(host: str) -> str:
    """The registrable domain of a lower-case name without a trailing dot: the
    public suffix and one label more; ``""`` if the name is a public suffix
    itself or no rule covers it (``localhost``, ``intranet``, ``a.internal``)."""
    labels = host.split(".")
    start = suffix_start(labels)
    if not start or not labels[start - 1]:
        return ""
    return ".".join(labels[start - 1:])
