"""hush's reading of the Public Suffix List answers as tldextract does.

tldextract is the reference: for names built from every rule of the list it
bundles (and names around them), ``registrable`` must give what
``TLDExtract(include_psl_private_domains=True)`` gives, and a name must be
decided the same way in the CLI (which never imports tldextract) and the daemon.
"""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
import tldextract

from hush.daemon.policy import psl

REFERENCE = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, fallback_to_snapshot=True,
                                  include_psl_private_domains=True)


def reference(host: str) -> str:
    return REFERENCE(host).top_domain_under_public_suffix


def names_around(rule: str) -> list[str]:
    """The names whose answer this rule decides, and the ones next to it."""
    concrete = rule.lstrip("!").replace("*", "w")
    return [concrete, f"example.{concrete}", f"a.b.example.{concrete}", f"www.{concrete}",
            concrete.split(".", 1)[-1], f"x.{concrete.split('.', 1)[-1]}"]


def test_every_rule_of_the_list_gives_tldextracts_answer():
    rules, _ = psl._rules()
    assert len(rules) > 9000  # the whole list was read, ICANN and private parts
    assert {"co.uk", "*.ck", "!www.ck", "github.io", "blogspot.com"} <= rules
    wrong = []
    for rule in sorted(rules):
        for host in names_around(rule):
            host = host.encode("idna").decode("ascii") if not host.isascii() and _encodable(host) else host
            if psl.registrable(host) != reference(host):
                wrong.append((host, psl.registrable(host), reference(host)))
    assert not wrong, wrong[:20]


def _encodable(host: str) -> bool:
    try:
        host.encode("idna")
    except UnicodeError:
        return False
    return True


@pytest.mark.parametrize("host, site", [
    ("a.b.example.co.uk", "example.co.uk"),
    ("co.uk", ""),
    ("uk", ""),
    ("localhost", ""),
    ("a.b.internal", ""),  # no rule covers .internal: the name is its own site (site_of)
    ("www.ck", "www.ck"),  # the exception to *.ck
    ("foo.bar.ck", "foo.bar.ck"),  # *.ck: bar.ck is a public suffix
    ("me.github.io", "me.github.io"),  # a private-section rule counts
    ("xn--fiqs8s", ""),  # 中国, a suffix written in Unicode in the list
    ("example.xn--fiqs8s", "example.xn--fiqs8s"),
    ("xn--zz-zz.com", "xn--zz-zz.com"),  # an xn-- label that does not decode is compared as it is
    ("a..co.uk", ""),  # an empty label is no domain
])
def test_registrable(host, site):
    assert psl.registrable(host) == site
    assert reference(host) == site


def test_random_names_agree():
    rules, _ = psl._rules()
    rng = random.Random(7)
    pool = sorted(rules)
    labels = ["a", "www", "xn--bcher-kva", "co", "com", "uk", "jp", "ck", "k12", "s3", "api", ""]
    for _ in range(5000):
        tail = rng.choice(pool).lstrip("!").replace("*", rng.choice(labels) or "x")
        host = ".".join(rng.choice(labels) for _ in range(rng.randint(0, 3))) + "." + tail
        host = host.lstrip(".")
        if host.isascii():
            assert psl.registrable(host) == reference(host), host


def test_the_list_is_read_without_importing_tldextract_or_requests():
    code = ("import sys; from hush.daemon.policy.hosts import site_of; print(site_of('news.bbc.co.uk')); "
            "print(sorted(m for m in ('tldextract', 'requests', 'urllib3', 'idna') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["bbc.co.uk", "[]"]
