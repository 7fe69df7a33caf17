import textwrap

import pytest

from hush.daemon.policy import RequestInfo, build
from hush.daemon.policy.model import canonical_path, stricter

POLICY = textwrap.dedent("""\
    app: x
    listen: 8101
    default: allow
    rules:
      - match: {host: "*.backend.net"}
        action: passthrough
      - match: {host: tracker.com}
        action: block
      - match: {site: example.com, path: "/private/*"}
        action: block
        status: 451
      - match: {header: {user-agent: "WhatsApp/*"}, kind: preview}
        action: block
      - match: {site: strip.org}
        action: strip
""")


@pytest.fixture
def ps():
    return build([("p.yaml", POLICY)])


def req(url, **kw):
    return RequestInfo.from_url(url, **kw)


def test_first_match_wins(ps):
    d = ps.decide("x", req("https://a.backend.net/x"))
    assert (d.action.name, d.rule.index, d.ref, d.level) == ("passthrough", 1, "p.yaml:5", "request")


def test_site_and_path(ps):
    assert ps.decide("x", req("https://www.example.com/private/a")).action.status == 451
    assert ps.decide("x", req("https://www.example.com/public")).rule is None  # default


def test_header_and_kind(ps):
    ua = {"User-Agent": "WhatsApp/2.19.305 A"}
    assert ps.decide("x", req("https://a.org/", headers=ua, kind="preview")).rule.index == 4
    assert ps.decide("x", req("https://a.org/", headers=ua, kind="other")).rule is None


def test_connect_level_when_only_host_rules_can_match(ps):
    assert ps.decide_connect("x", "mmg.backend.net", 443).action.name == "passthrough"
    # the header rule (no host) could match any host, so other hosts need the request
    assert ps.decide_connect("x", "tracker.com", 443).action.name == "block"
    assert ps.decide_connect("x", "other.org", 443) is None


def test_connect_level_not_for_actions_that_need_http():
    ps = build([("p.yaml", "app: x\nlisten: 1\ndefault: allow\nrules:\n  - {match: {site: s.org}, action: strip}\n")])
    assert ps.decide_connect("x", "a.s.org", 443) is None
    assert ps.decide_connect("x", "other.org", 443).action.name == "allow"


def test_port_matcher():
    ps = build([("p.yaml", "app: x\nlisten: 1\ndefault: allow\nrules:\n  - {match: {port: 25}, action: block}\n")])
    assert ps.decide_connect("x", "mail.org", 25).action.name == "block"
    assert ps.decide_connect("x", "mail.org", 443).action.name == "allow"


def test_net_matcher_decides_addresses_at_connection_level():
    ps = build([("p.yaml", textwrap.dedent("""\
        app: x
        listen: 1
        default: tor
        rules:
          - {match: {host: tracker.com}, action: block}
          - {match: {net: [149.154.160.0/20, "2001:b28:f23d::/48"], port: 443}, action: passthrough}
        """))])
    assert ps.decide_connect("x", "149.154.167.51", 443).rule.index == 2
    assert ps.decide_connect("x", "2001:b28:f23d::a", 443).rule.index == 2
    assert ps.decide_connect("x", "::ffff:149.154.167.51", 443).rule.index == 2
    assert ps.decide_connect("x", "149.154.167.51", 80).rule is None  # the port must hold too
    assert ps.decide_connect("x", "149.154.176.1", 443).action.name == "tor"
    assert ps.decide_connect("x", "tracker.com", 443).rule.index == 1
    assert ps.decide("x", req("https://149.154.167.51/api")).action.name == "passthrough"


def test_listeners_and_unknown_app(ps):
    assert ps.app_for_listener("regular@127.0.0.1:8101") == "x"
    assert ps.app_for_listener("regular@127.0.0.1:9999") is None
    with pytest.raises(KeyError):
        ps.decide("nope", req("http://a/"))


def test_policyset_is_immutable(ps):
    with pytest.raises(TypeError):
        ps.policies["y"] = None
    with pytest.raises(AttributeError):
        ps.version = "other"


@pytest.mark.parametrize("path, canonical", [
    ("/", "/"),
    ("/a/b", "/a/b"),
    ("/%70rivate/%7Euser", "/private/~user"),  # unreserved: decoded
    ("/a%2fb/%c3%a4", "/a%2Fb/%C3%A4"),  # reserved and non-ASCII: escapes kept, upper-cased
    ("/a//b///c", "/a/b/c"),
    ("/a/./b/../c", "/a/c"),
    ("/a/%2e%2E/b", "/b"),
    ("/../../etc", "/etc"),  # never above the root
    ("/a/b/", "/a/b/"),
    ("/a/b/..", "/a/"),
    ("/a/.", "/a/"),
    ("/..", "/"),
    ("http://example.com/a/../b", "/b"),  # absolute-form
    ("HTTPS://example.com", "/"),
    ("*", "*"),
    ("/%zz", "/%zz"),  # not an escape: left as sent
])
def test_canonical_path(path, canonical):
    assert canonical_path(path) == canonical


def test_rules_match_the_canonical_path(ps):
    for url in ("https://www.example.com/%70rivate/a", "https://www.example.com/public/../private/a",
                "https://www.example.com//private//a"):
        assert ps.decide("x", req(url)).action.status == 451, url


def test_stricter_lets_less_reach_the_site():
    ps = build([("p.yaml", "app: a\nlisten: 1\ndefault: allow\nrules:\n"
                           "  - {match: {host: b.org}, action: block}\n"
                           "  - {match: {host: t.org}, action: tor}\n"
                           "  - {match: {host: p.org}, action: passthrough}\n")])
    block, tor, passthrough, allow = (ps.decide_connect("a", h, 443) for h in ("b.org", "t.org", "p.org", "x.org"))
    assert stricter(allow, block) is block and stricter(block, allow) is block
    assert stricter(passthrough, tor) is tor and stricter(tor, block) is block
    assert stricter(passthrough, allow) is passthrough  # a tie: the first


def test_a_host_header_naming_another_host_is_decided_too(ps):
    cdn = "https://cdn.allowed.net/x"
    assert ps.decide("x", req(cdn)).rule is None
    d = ps.decide("x", req(cdn, headers={"Host": "tracker.com:443"}))
    assert (d.action.name, d.rule.index) == ("block", 2)
    assert ps.decide("x", req(cdn, headers={"Host": "cdn.allowed.net"})).rule is None
    assert ps.decide("x", req("https://tracker.com/", headers={"Host": "cdn.allowed.net"})).rule.index == 2
