import dataclasses
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


# -- what is decided on what (issue 11: items 1-4) ---------------------------------------

LOOPBACK = build([("p.yaml", "app: x\nlisten: 8101\ndefault: allow\nrules:\n"
                             "  - {match: {net: [127.0.0.0/8, '::1/128']}, action: block, status: 451}\n"
                             "  - {match: {host: blocked.test}, action: block}\n"
                             "  - {match: {host: slow.test}, action: tor}\n")])


@pytest.mark.parametrize("host", ["0", "0.0", "0x0", "0.0.0.0", "::", "[::]", "0:0::0", "::ffff:0.0.0.0", "00"])
def test_the_unspecified_address_is_decided_as_loopback(host):
    assert LOOPBACK.decide_connect("x", host, 80).action.status == 451
    url = f"http://[{host.strip('[]')}]/" if ":" in host else f"http://{host}/"
    assert LOOPBACK.decide("x", req(url)).action.status == 451


@pytest.mark.parametrize("host", ["::1%1", "[::1%251]", "fe80::1%2", "::ffff:127.0.0.1%1"])
def test_a_zone_id_is_refused_whatever_the_policy(host):
    everything = build([("p.yaml", "app: x\nlisten: 8101\ndefault: allow\n")])
    for ps in (LOOPBACK, everything):
        d = ps.decide_connect("x", host, 443)
        assert (d.action.name, d.action.status, d.rule, d.level) == ("block", 400, None, "connect")
        assert "zone id" in d.note
        bare = host.strip("[]")
        d = ps.decide("x", RequestInfo("GET", "http", bare, 80, "/"))
        assert (d.action.status, d.level) == (400, "request") and d.note.startswith("refused:")


def test_a_socks5_domain_that_is_no_host_is_refused():
    for host in ("", "a b", "evil.com/x", "blocked.test#"):
        assert LOOPBACK.decide_connect("x", host, 80).action.status == 400, host


def host_header(value, url="http://cdn.allowed.net/x"):
    return LOOPBACK.decide("x", req(url, headers={"Host": value}))


@pytest.mark.parametrize("value", ["blocked.test", "blocked.test:", "BLOCKED.test.", "blocked.test.:",
                                   "blocked.test:8080", " blocked.test\t"])
def test_a_host_header_naming_a_blocked_host_blocks_however_spelt(value):
    d = host_header(value)
    assert (d.action.name, d.rule.index, d.host) == ("block", 2, "blocked.test")


@pytest.mark.parametrize("value", ["0", "0.0.0.0:80", "[::]", "127.1", "[::ffff:0.0.0.0]"])
def test_a_host_header_naming_loopback_blocks(value):
    assert host_header(value).action.status == 451


@pytest.mark.parametrize("value", [
    "blocked.test:abc", "blocked.test:80:80", "user@blocked.test", "blocked.test, cdn.allowed.net",
    "cdn.allowed.net, cdn.allowed.net",  # two Host headers, even equal ones, arrive joined
    ", blocked.test", "[::1%1]", "bl%6fcked.test", "blocked.test..", "::1", "blocked.test:99999",
])
def test_a_host_header_that_is_not_one_authority_is_refused(value):
    d = host_header(value)
    assert (d.action.name, d.action.status, d.rule) == ("block", 400, None)
    assert d.note.startswith("refused: the Host header")


def test_an_empty_host_header_names_nothing_else():
    assert host_header("").rule is None and host_header("  ").rule is None
    assert host_header("cdn.allowed.net:80").host is None  # the connection's own host: nothing else decided


def test_the_request_target_authority_is_decided_too():
    inside = RequestInfo("GET", "http", "cdn.allowed.net", 80, "/x", headers={"host": "cdn.allowed.net"},
                         authority="blocked.test")
    d = LOOPBACK.decide("x", inside)
    assert (d.action.name, d.rule.index, d.host) == ("block", 2, "blocked.test")
    for authority in ("0.0.0.0:80", "[::]:80", "127.0.0.3"):
        assert LOOPBACK.decide("x", dataclasses.replace(inside, authority=authority)).action.status == 451
    for authority in ("user@blocked.test", "blocked.test:x", "[::1%1]:80"):
        d = LOOPBACK.decide("x", dataclasses.replace(inside, authority=authority))
        assert d.action.status == 400 and d.note.startswith("refused: the request target")
    assert LOOPBACK.decide("x", dataclasses.replace(inside, authority="cdn.allowed.net:80")).rule is None
    # the stricter wins across all three; on a tie the connection's own decision stands
    tor = LOOPBACK.decide("x", dataclasses.replace(inside, authority="slow.test", headers={"host": "blocked.test"}))
    assert (tor.action.name, tor.host) == ("block", "blocked.test")
    assert LOOPBACK.decide("x", dataclasses.replace(inside, authority="slow.test")).host == "slow.test"


# -- the organisation's floor: two layers, the stricter applies ---------------------------

def two_layers(user_rules: str, org_rules: str, user_default="allow", org_default="allow"):
    from hush.daemon.policy.loader import combine

    user = build([("u/a.yaml", f"app: a\nlisten: 8101\ndefault: {user_default}\nrules:\n{user_rules}")])
    org = build([("o/a.yaml", f"app: a\ndefault: {org_default}\nrules:\n{org_rules}")])
    return combine(user, org)


ON_X = "  - {{match: {{host: x.org}}, action: {}}}\n"  # one rule on one line: the action and its parameters


@pytest.mark.parametrize("user, org, applied, layer", [
    ("allow", "block", "block", "organisation"),  # the first case
    ("tor", "allow", "tor", "user"),  # and its second: the user's stricter choice stands
    ("block", "tor", "block", "user"),
    ("allow", "tor", "tor", "organisation"),
    ("tor", "block", "block", "organisation"),
    ("allow", "allow", "allow", "user"),  # a tie: the user's decision is as strict, and applies
    ("passthrough", "allow", "passthrough", "user"),  # the same egress, nothing more: a tie
    ("strip", "allow", "strip", "user"),  # does what allow does, and strips
    ("allow", "strip", "strip", "organisation"),
    ("debounce", "allow", "debounce", "user"),
    ("allow", "debounce", "debounce", "organisation"),
    # the same egress, each doing something the other does not: the floor's
    ("debounce", "strip", "strip", "organisation"),
    ("strip", "debounce", "debounce", "organisation"),
    ("debounce, then: strip", "strip", "debounce", "user"),  # holds and strips: more than strip
    ("debounce, then: strip", "debounce", "debounce", "user"),
    ("delay, delay: 1s", "debounce", "debounce", "organisation"),  # different holds
    # egress first (block, then tor, then direct), whatever else the other does
    ("tor", "strip", "tor", "user"),
    ("debounce, then: tor", "strip", "debounce", "user"),
    ("strip", "debounce, then: tor", "debounce", "organisation"),
])
def test_floor_applies_the_stricter_layer(user, org, applied, layer):
    ps = two_layers(ON_X.format(user), ON_X.format(org))
    d = ps.decide("a", req("https://x.org/p"))
    assert (d.action.name, d.layer) == (applied, layer)
    assert d.other is not None and d.other.layer == ({"user", "organisation"} - {layer}).pop()
    assert d.ref == ("u/a.yaml:5" if layer == "user" else "o/a.yaml:4")


def test_floor_between_strips_and_tor_isolations():
    strip = "strip, headers: [{}]"
    ps = two_layers(ON_X.format(strip.format("cookie, referer")), ON_X.format(strip.format("cookie")))
    assert ps.decide("a", req("https://x.org/")).layer == "user"  # strips more
    ps = two_layers(ON_X.format(strip.format("cookie")), ON_X.format(strip.format("cookie, referer")))
    assert ps.decide("a", req("https://x.org/")).layer == "organisation"
    ps = two_layers(ON_X.format(strip.format("referer")), ON_X.format(strip.format("cookie")))
    assert ps.decide("a", req("https://x.org/")).layer == "organisation"  # neither includes the other
    tor = "tor, isolation: {}"
    for user, org, layer in [("flow", "site", "user"), ("app", "site", "organisation"),
                             ("site", "flow", "organisation"), ("site", "app", "user")]:
        ps = two_layers(ON_X.format(tor.format(user)), ON_X.format(tor.format(org)))
        d = ps.decide("a", req("https://x.org/"))
        assert (d.layer, d.action.isolation) == (layer, {"user": user, "organisation": org}[layer])


def test_floor_defaults_and_rules_of_each_layer():
    ps = two_layers(ON_X.format("tor"), "  - match: {host: y.org}\n    action: block\n")
    assert ps.decide("a", req("https://y.org/")).describe() == "rule 1 (o/a.yaml:4)"  # org rule, user default allow
    assert ps.decide("a", req("https://x.org/")).describe() == "rule 1 (u/a.yaml:5)"  # user tor, org default allow
    d = ps.decide("a", req("https://z.org/"))
    assert (d.rule, d.layer, d.ref) == (None, "user", "u/a.yaml:3")  # both defaults allow: a tie


def test_floor_at_connection_level():
    ps = two_layers(ON_X.format("tor") + "  - {match: {path: /p/*}, action: block}\n",
                    "  - match: {host: y.org}\n    action: block\n  - match: {host: s.org}\n    action: strip\n")
    # the organisation blocks y.org outright: nothing the request says could make it less strict
    d = ps.decide_connect("a", "y.org", 443)
    assert (d.action.name, d.layer, d.level) == ("block", "organisation", "connect")
    assert ps.decide_connect("a", "x.org", 443).action.name == "tor"  # both decide at connection level
    assert ps.decide_connect("a", "x.org", 443).other.action.name == "allow"
    assert ps.decide_connect("a", "s.org", 443) is None  # the floor strips: the requests must be seen
    assert ps.decide_connect("a", "z.org", 443) is None  # the user's path rule needs the request
    assert ps.decide("a", req("https://s.org/")).action.name == "strip"
    # a user block at connection level stands while the floor needs the request
    ps = two_layers(ON_X.format("block"), ON_X.format("strip"))
    assert ps.decide_connect("a", "x.org", 443).layer == "user"


def test_floor_with_a_host_header_naming_another_host():
    ps = two_layers("", "  - match: {host: y.org}\n    action: block\n")
    d = ps.decide("a", req("https://x.org/", headers={"Host": "y.org"}))
    assert (d.action.name, d.layer, d.host) == ("block", "organisation", "y.org")
    d = ps.decide("a", req("https://x.org/", headers={"Host": "a, b"}))
    assert d.note.startswith("refused:") and d.layer is None  # hush refuses it in either layer


def test_an_app_only_the_organisation_has():
    from hush.daemon.policy.loader import combine

    user = build([("u/a.yaml", "app: a\nlisten: 8101\ndefault: allow\n")])
    org = build([("o/b.yaml", "app: b\nlisten: 8102\ndefault: block\nrules:\n" + ON_X.format("allow"))])
    ps = combine(user, org)
    assert sorted(ps.policies) == ["a", "b"] and ps.specs == ["regular@127.0.0.1:8101", "regular@127.0.0.1:8102"]
    assert ps.layers("b") == [("organisation", org.policies["b"])]
    d = ps.decide("b", req("https://y.org/"))
    assert (d.action.name, d.layer, d.other) == ("block", "organisation", None)
    assert ps.decide_connect("b", "x.org", 443).layer == "organisation"
    assert ps.decide_layer("b", "user", req("https://x.org/")) is None
    assert ps.decide("a", req("https://y.org/")).layer == "user"  # no floor for a
    assert ps.version not in (user.version, org.version)


def test_one_layer_decides_as_before():
    ps = build([("p.yaml", POLICY)])
    assert ps.organisation == {} and ps.layers("x") == [("user", ps.policies["x"])]
    d = ps.decide("x", req("https://tracker.com/"))
    assert (d.layer, d.other) == ("user", None)
