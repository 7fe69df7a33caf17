import os
import textwrap
from pathlib import Path

import pytest

from hush.daemon.policy import RequestInfo, build, check_examples, load
from hush.daemon.yamlschema import LoadError

F = "policies/x.yaml"

BASE = """\
app: x
listen: 8101
default: allow
"""


def errors(text: str, file: str = F) -> list[str]:
    with pytest.raises(LoadError) as e:
        build([(file, textwrap.dedent(text))])
    return [str(err) for err in e.value.errors]


def rules(body: str) -> str:
    return BASE + "rules:\n" + textwrap.indent(textwrap.dedent(body), "  ")


@pytest.mark.parametrize("text, message", [
    # the policy file itself
    ("", f"{F}:1:1: the file is empty"),
    (BASE + "---\napp: y\n", f"{F}:5:1: only one YAML document is allowed per file"),
    ("app: [x\n", f"{F}:2:1: YAML syntax error: did not find expected ',' or ']'"),
    ("- a\n", f"{F}:1:1: a policy must be a mapping, not a list"),
    ("app: x\nlisten: 8101\n", f"{F}:1:1: missing required key 'default' in a policy"),
    (BASE + "app: y\n", f"{F}:4:1: duplicate key 'app' (first at line 1)"),
    (BASE + "colour: red\n",
     f"{F}:4:1: unknown key 'colour' "
     "(expected one of: app, default, description, examples, identify, listen, rules)"),
    ("app: Big\nlisten: 1\ndefault: allow\n",
     f"{F}:1:6: app name 'Big' must be lower-case letters, digits, '-' or '_'"),
    ("app: no\nlisten: 1\ndefault: allow\n",
     f"{F}:1:6: app: 'no' is read by YAML 1.1 as a boolean; quote it (\"no\") if you mean the string"),
    # listeners
    ("app: x\nlisten: 0\ndefault: allow\n", f"{F}:2:9: listen port must be between 1 and 65535, not 0"),
    ("app: x\nlisten: 0.0.0.0:80\ndefault: allow\n",
     f"{F}:2:9: listen host 0.0.0.0 is not a loopback address: hush listens on loopback only "
     "(allow_non_loopback_listeners: true in the config allows it)"),
    ("app: x\nlisten: localhost:80\ndefault: allow\n",
     f"{F}:2:9: listen host 'localhost' must be an IP address (127.0.0.1 or ::1)"),
    ("app: x\nlisten: {port: 80, mode: socks4}\ndefault: allow\n",
     f"{F}:2:26: unknown listen mode 'socks4' (expected one of: http, socks5)"),
    ("app: x\nlisten: eighty\ndefault: allow\n", f"{F}:2:9: listen 'eighty' must be a port, 'HOST:PORT' or a mapping"),
    # actions
    ("app: x\nlisten: 1\ndefault: drop\n",
     f"{F}:3:10: unknown action 'drop' "
     "(expected one of: allow, ask, block, debounce, delay, learn, passthrough, strip, tor)"),
    ("app: x\nlisten: 1\ndefault: {action: block, status: 200000}\n",
     f"{F}:3:34: status must be between 100 and 599, not 200000"),
    ("app: x\nlisten: 1\ndefault: delay\n",  # found by tests/fuzz
     f"{F}:3:10: action 'delay' needs 'delay' (use the mapping form: {{action: delay, delay: ...}})"),
    ("app: x\nlisten: 1\ndefault: {action: allow, status: 403}\n",
     f"{F}:3:26: action 'allow' does not take 'status' (it takes: no parameters)"),
    (rules("- action: block\n  status: later\n"),
     f"{F}:6:13: unknown status 'later' (expected one of: reset)"),
    (rules("- action: strip\n  headers: [cookie, 'bad header']\n"),
     f"{F}:6:23: 'bad header' is not a valid header name"),
    (rules("- action: strip\n  user_agent: off\n"),
     f"{F}:6:17: user_agent: 'off' is read by YAML 1.1 as a boolean; quote it (\"off\") if you mean the string"),
    (rules("- match: {host: a.com}\n"), f"{F}:5:5: missing required key 'action' in a rule"),
    (rules("- action: block\n  stauts: 403\n"),
     f"{F}:6:5: unknown key 'stauts' (expected one of: "
     "action, delay, expires, fallback, headers, isolation, match, max_bytes, name, quiet, status, then, timeout, "
     "user_agent)"),
    (rules("- action: block\n  headers: [cookie]\n"),
     f"{F}:6:5: action 'block' does not take 'headers' (it takes: status)"),
    (rules("- action: block\n  action: allow\n"), f"{F}:6:5: duplicate key 'action' (first at line 5)"),
    # matchers
    (rules("- match: {host: 'a.*.com'}\n  action: block\n"),
     f"{F}:5:19: 'a.*.com': a wildcard is only allowed as a leading '*.' label"),
    (rules("- match: {host: 'exa mple.com'}\n  action: block\n"), f"{F}:5:19: 'exa mple.com' is not a valid host name"),
    (rules("- match: {host: '*.straße.de'}\n  action: block\n"),
     f"{F}:5:19: '*.straße.de': write an internationalised name in its xn-- form, as apps send it "
     "(IDNA 2003 and 2008 spell some letters differently, so hush does not guess)"),
    (rules("- match: {site: bücher.de}\n  action: block\n"),
     f"{F}:5:19: 'bücher.de': write an internationalised name in its xn-- form, as apps send it "
     "(IDNA 2003 and 2008 spell some letters differently, so hush does not guess)"),
    (rules("- match: {site: www.example.co.uk}\n  action: block\n"),
     f"{F}:5:19: 'www.example.co.uk' is not a registrable domain (did you mean 'example.co.uk'?)"),
    (rules("- match: {path: 'x/*'}\n  action: block\n"), f"{F}:5:19: path 'x/*' must start with '/' or '*'"),
    (rules("- match: {path: '/[ab]'}\n  action: block\n"),
     f"{F}:5:19: bad path glob: character classes ('[') are not supported in '/[ab]'; use * and ?"),
    (rules("- match: {method: get}\n  action: block\n"),
     f"{F}:5:21: method 'get' must be an upper-case HTTP method such as GET"),
    (rules("- match: {scheme: ftp}\n  action: block\n"),
     f"{F}:5:21: unknown scheme 'ftp' (expected one of: http, https)"),
    (rules("- match: {kind: off}\n  action: block\n"),
     f"{F}:5:19: kind: 'off' is read by YAML 1.1 as a boolean; quote it (\"off\") if you mean the string"),
    (rules("- match: {port: 70000}\n  action: block\n"), f"{F}:5:19: port must be between 1 and 65535, not 70000"),
    (rules("- match: {header: {user-agent: '{a,b}'}}\n  action: block\n"),
     f"{F}:5:34: bad header glob: braces ('{{') are not supported in '{{a,b}}'; use * and ?"),
    (rules("- match: {header: {User-Agent: a, user-agent: b}}\n  action: block\n"),
     f"{F}:5:21: a header is named twice (header names are case-insensitive)"),
    (rules("- match: {hots: a.com}\n  action: block\n"),
     f"{F}:5:13: unknown key 'hots' "
     "(expected one of: header, host, hosts_from, kind, method, net, path, port, scheme, site)"),
    (rules("- match: {net: 10.0.0.1/8}\n  action: block\n"),
     f"{F}:5:18: '10.0.0.1/8' has bits set past its prefix (did you mean '10.0.0.0/8'?)"),
    (rules("- match: {net: [192.0.2.0/24, telegram.org]}\n  action: block\n"),
     f"{F}:5:33: 'telegram.org' is not an IP network such as 192.0.2.0/24 or 2001:db8::/32"),
    (rules("- match: {net: 10.0.0.0/33}\n  action: block\n"),
     f"{F}:5:18: '10.0.0.0/33' is not an IP network such as 192.0.2.0/24 or 2001:db8::/32"),
    (rules("- match: {path: /a}\n  action: passthrough\n"),
     f"{F}:6:13: passthrough can only use host-level matchers (host, site, net, port): "
     "path, method, scheme, header and kind need TLS interception"),
    # examples
    (BASE + "examples:\n  - url: ftp://a/\n    expect: allow\n", f"{F}:5:10: not an absolute http:// or https:// URL: 'ftp://a/'"),
    (BASE + "examples:\n  - url: https://a/\n    expect: maybe\n",
     f"{F}:6:13: unknown action 'maybe' "
     "(expected one of: allow, ask, block, debounce, delay, learn, passthrough, strip, tor)"),
    (BASE + "examples:\n  - url: https://a/\n", f"{F}:5:5: missing required key 'expect' in an example"),
])
def test_error_table(text, message):
    assert errors(text) == [message]


def test_all_errors_at_once_in_order():
    text = """\
    app: x
    listen: 99999
    default: drop
    rules:
      - match: {method: get}
        action: block
        status: 9
    """
    assert errors(text) == [
        f"{F}:2:9: listen port must be between 1 and 65535, not 99999",
        f"{F}:3:10: unknown action 'drop' "
        "(expected one of: allow, ask, block, debounce, delay, learn, passthrough, strip, tor)",
        f"{F}:5:21: method 'get' must be an upper-case HTTP method such as GET",
        f"{F}:7:13: status must be between 100 and 599, not 9",
    ]


def test_errors_from_several_files_together():
    a = ("policies/a.yaml", "app: a\nlisten: 8101\ndefault: allow\n")
    b = ("policies/b.yaml", "app: b\nlisten: 8101\ndefault: allow\n")
    c = ("policies/c.yaml", "app: a\nlisten: 8103\ndefault: nope\n")
    with pytest.raises(LoadError) as e:
        build([a, b, c])
    assert [str(x) for x in e.value.errors] == [
        "policies/b.yaml:2:9: listener 127.0.0.1:8101 is already used by app 'a' (policies/a.yaml:2:9); "
        "to share it, give both policies 'identify: {process: [...]}'",
        "policies/c.yaml:3:10: unknown action 'nope' "
        "(expected one of: allow, ask, block, debounce, delay, learn, passthrough, strip, tor)",
    ]


def test_duplicate_app_across_files():
    a = ("policies/a.yaml", "app: a\nlisten: 8101\ndefault: allow\n")
    b = ("policies/b.yaml", "app: a\nlisten: 8102\ndefault: allow\n")
    with pytest.raises(LoadError) as e:
        build([a, b])
    assert [str(x) for x in e.value.errors] == ["policies/b.yaml:1:6: app 'a' is already defined in policies/a.yaml"]


def test_valid_policy_builds_everything():
    ps = build([(F, textwrap.dedent("""\
        app: x
        description: test
        listen:
          - 8101
          - {port: 8102, mode: socks5, host: "::1"}
        default: {action: block, status: reset}
        rules:
          - name: backend
            match: {host: ["*.x.net", x.com], port: 443}
            action: passthrough
          - match: {header: {User-Agent: ["WhatsApp/*", "*Bot*"]}, method: [GET, HEAD]}
            action: strip
            headers: [Cookie, Referer]
            user_agent: remove
        examples:
          - url: https://a.x.net/
            expect: passthrough
          - url: https://example.org/p
            headers: {User-Agent: WhatsApp/2}
            expect: strip
    """))])
    policy = ps.policies["x"]
    assert [listener.spec for listener in policy.listeners] == ["regular@127.0.0.1:8101", "socks5@[::1]:8102"]
    assert policy.default.status is None
    assert policy.rules[0].name == "backend" and policy.rules[0].location.line == 8
    strip = policy.rules[1].action
    assert strip.headers == ("cookie", "referer") and strip.user_agent is None
    assert check_examples(ps) == []


def test_failing_example_is_reported_with_its_location():
    ps = build([(F, BASE + "examples:\n  - url: https://a/\n    expect: block\n")])
    assert [str(e) for e in check_examples(ps)] == [
        f"{F}:5:5: example expects block but default ({F}:3) decides allow"]


def test_load_reads_a_directory_and_versions_by_content(tmp_path):
    (tmp_path / "a.yaml").write_text("app: a\nlisten: 8101\ndefault: allow\n")
    (tmp_path / "notes.txt").write_text("ignored")
    first = load([tmp_path])
    assert list(first.policies) == ["a"]
    assert load([tmp_path]).version == first.version
    (tmp_path / "a.yaml").write_text("app: a\nlisten: 8101\ndefault: block\n")
    assert load([tmp_path]).version != first.version


def test_load_empty_directory_is_an_error(tmp_path):
    with pytest.raises(LoadError) as e:
        load([tmp_path])
    assert str(e.value) == f"{tmp_path}:1:1: no policy files (*.yaml) found"


def test_strip_default_user_agent_comes_from_config():
    from hush.addons.actions import ParseContext

    ps = build([(F, rules("- action: strip\n"))], ParseContext(user_agent="Generic/1"))
    assert ps.policies["x"].rules[0].action.user_agent == "Generic/1"


def test_anchors_are_allowed():
    text = BASE + "rules:\n  - match: &m {host: a.com}\n    action: block\n  - match: *m\n    action: allow\n"
    ps = build([(F, text)])
    assert ps.decide("x", RequestInfo.from_url("http://a.com/")).rule.index == 1


LIST_POLICY = "app: x\nlisten: 1\ndefault: allow\nrules:\n  - {match: {hosts_from: lists/ads.txt}, action: block}\n"


def test_hosts_from_reads_domain_and_hosts_file_lines():
    files = {"/p/lists/ads.txt": "# ads\nads.example.com\n0.0.0.0 track.example.org  # hosts format\n\n"}
    ps = build([("/p/x.yaml", LIST_POLICY)], read=files.__getitem__)
    decide = lambda url: ps.decide("x", RequestInfo.from_url(url)).action.name  # noqa: E731
    assert decide("https://ads.example.com/") == "block"
    assert decide("https://cdn.ads.example.com/") == "block"  # a listed domain covers its subdomains
    assert decide("https://example.com/") == "allow"
    assert decide("https://track.example.org/") == "block"
    assert ps.decide_connect("x", "ads.example.com", 443).action.name == "block"


def test_hosts_from_errors_point_into_the_list_file():
    files = {"/p/lists/ads.txt": "ok.example.com\nbad name here\n1.2.3.4\n  -x.com\n"}
    with pytest.raises(LoadError) as e:
        build([("/p/x.yaml", LIST_POLICY)], read=files.__getitem__)
    assert [str(x) for x in e.value.errors] == [
        "/p/lists/ads.txt:2:1: expected one domain per line",
        "/p/lists/ads.txt:3:1: '1.2.3.4' is an IP address",
        "/p/lists/ads.txt:4:3: '-x.com' is not a valid host name",
    ]


def test_hosts_from_missing_file():
    def missing(path):
        raise FileNotFoundError(2, "No such file or directory")

    with pytest.raises(LoadError) as e:
        build([("/p/x.yaml", LIST_POLICY)], read=missing)
    assert [str(x) for x in e.value.errors] == [
        "/p/x.yaml:5:26: cannot read hosts_from 'lists/ads.txt': [Errno 2] No such file or directory"]


def test_hosts_from_caps_the_error_listing():
    files = {"/p/lists/ads.txt": "bad name\n" * 50}
    with pytest.raises(LoadError) as e:
        build([("/p/x.yaml", LIST_POLICY)], read=files.__getitem__)
    messages = [str(x) for x in e.value.errors]
    assert len(messages) == 21
    assert "/p/x.yaml:5:26: hosts_from 'lists/ads.txt': 30 more bad lines not shown" in messages


@pytest.mark.parametrize("rule, message", [
    ("- action: delay\n", f"{F}:5:13: action 'delay' needs 'delay'"),
    ("- {action: delay, delay: soon}\n", f"{F}:5:28: delay 'soon' must be a duration such as 500ms, 2s or 1m"),
    ("- {action: delay, delay: {min: 5s, max: 2s}}\n", f"{F}:5:28: delay max (2s) is less than min (5s)"),
    ("- {action: delay, delay: 1s, then: block}\n", f"{F}:5:38: then must be one of: allow, strip, tor (not block)"),
    ("- {action: debounce, quiet: 120s}\n", f"{F}:5:31: quiet must be between 0.01s and 60s, not 120s"),
    ("- {action: allow, max_bytes: lots}\n",
     f"{F}:5:32: max_bytes 'lots' must be a size such as 1000KiB, 1MiB or 65536"),
    ("- {action: block, max_bytes: 1KiB}\n", f"{F}:5:21: max_bytes has no effect on 'block': nothing is fetched"),
])
def test_timing_errors(rule, message):
    assert errors(rules(rule)) == [message]


def test_timing_rules_parse_and_describe():
    ps = build([(F, rules(
        "- {action: delay, delay: {min: 2s, max: 20s}, then: {action: strip, headers: [cookie]}}\n"
        "- {action: debounce, quiet: 800ms, status: 404, then: tor}\n"
        "- {action: allow, max_bytes: 1000KiB}\n"))])
    delay, debounce, capped = ps.policies["x"].rules
    assert delay.action.describe() == "delay 2–20s (random), then strip (cookie)"
    assert debounce.action.describe() == ("debounce (quiet 0.8s; superseded requests get 404), "
                                          "then tor (circuits isolated per app)")
    assert capped.max_bytes == 1024000 and capped.needs_http
    assert ps.decide_connect("x", "a.org", 443) is None  # all three need the request


def test_shared_listener_needs_identify_on_both_and_distinct_processes():
    a = ("p/a.yaml", "app: a\nlisten: 8101\nidentify: {process: [signal-desktop]}\ndefault: allow\n")
    b = ("p/b.yaml", "app: b\nlisten: 8101\nidentify: {process: [chromium, chrome]}\ndefault: block\n")
    ps = build([a, b])
    assert ps.specs == ["regular@127.0.0.1:8101"] and ps.is_shared("regular@127.0.0.1:8101")
    assert ps.app_for_listener("regular@127.0.0.1:8101", {"chromium"}) == "b"
    assert ps.app_for_listener("regular@127.0.0.1:8101", {"signal-desktop", "x"}) == "a"
    assert ps.app_for_listener("regular@127.0.0.1:8101", {"curl"}) is None  # nobody's: fail closed
    assert ps.app_for_listener("regular@127.0.0.1:8101", None) is None
    c = ("p/c.yaml", "app: c\nlisten: {port: 8101, mode: socks5}\nidentify: {process: [chrome]}\ndefault: block\n")
    with pytest.raises(LoadError) as e:
        build([a, b, c])
    assert [str(x) for x in e.value.errors] == [
        "p/c.yaml:2:9: listener 127.0.0.1:8101 is shared with app 'a' in mode http, not socks5"]
    d = ("p/d.yaml", "app: d\nlisten: 8101\nidentify: {process: [chrome]}\ndefault: block\n")
    with pytest.raises(LoadError) as e:
        build([b, d])
    assert [str(x) for x in e.value.errors] == [
        "p/d.yaml:2:9: apps 'b' and 'd' share listener 127.0.0.1:8101 and both claim process chrome"]


def test_a_policy_needs_no_listener_to_be_launchable():
    ps = build([("p.yaml", "app: x\ndefault: block\n")])
    assert "x" in ps.policies and ps.policies["x"].listeners == () and ps.specs == []


# -- the organisation's floor: loading, and who may write it ------------------------------

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="organisation files must be root's: run as root (CI does)")
USER = "app: a\nlisten: 8101\ndefault: allow\nexamples:\n  - {url: 'https://x.org/', expect: allow}\n"
FLOOR = "app: a\ndefault: allow\nrules:\n  - {match: {host: x.org}, action: block}\n" \
        "examples:\n  - {url: 'https://x.org/', expect: block}\n"


@pytest.fixture
def layers(tmp_path):
    user, org = tmp_path / "user", tmp_path / "org"
    user.mkdir()
    org.mkdir(mode=0o755)
    os.chmod(org, 0o755)
    (user / "a.yaml").write_text(USER)
    (org / "a.yaml").write_text(FLOOR)
    os.chmod(org / "a.yaml", 0o644)
    return user, org


@ROOT_ONLY
def test_load_layers_puts_the_floor_under_the_user(layers):
    from hush.daemon.policy.loader import load_checked, load_layers

    user, org = layers
    ps = load_layers([user], org)
    d = ps.decide("a", RequestInfo.from_url("https://x.org/"))
    assert (d.action.name, d.layer, d.ref) == ("block", "organisation", f"{org}/a.yaml:4")
    assert check_examples(ps) == []  # each policy's examples against its own layer
    assert load_checked([user], org).version == ps.version
    assert load_layers([user], org / "absent").version == load([user]).version  # no directory: no floor
    (org / "a.yaml").unlink()
    assert load_layers([user], org).organisation == {}  # no files: no floor


@ROOT_ONLY
@pytest.mark.parametrize("mode, why", [(0o664, "group-writable (mode 0664)"), (0o646, "world-writable (mode 0646)"),
                                        (0o666, "group and world-writable (mode 0666)")])
def test_an_organisation_file_others_can_write_is_refused(layers, mode, why):
    from hush.daemon.policy.loader import load_layers

    user, org = layers
    os.chmod(org / "a.yaml", mode)
    with pytest.raises(LoadError) as e:
        load_layers([user], org)
    assert [str(x) for x in e.value.errors] == [
        f"{org}/a.yaml:1:1: refused: organisation policies must be writable only by root, but it is {why}"]


@ROOT_ONLY
def test_an_organisation_file_or_directory_owned_by_a_user_is_refused(layers):
    from hush.daemon.policy.loader import load_layers

    user, org = layers
    os.chown(org / "a.yaml", 1001, -1)
    with pytest.raises(LoadError) as e:
        load_layers([user], org)
    assert str(e.value) == (f"{org}/a.yaml:1:1: refused: organisation policies must be writable only by root, "
                            "but it is owned by uid 1001, not root")
    os.chown(org / "a.yaml", 0, -1)
    os.chmod(org, 0o775)  # the directory: anyone in its group could add a file
    with pytest.raises(LoadError) as e:
        load_layers([user], org)
    assert str(e.value) == (f"{org}:1:1: refused: organisation policies must be writable only by root, "
                            "but it is group-writable (mode 0775)")
    os.chmod(org, 0o755)
    os.chown(org.parent, 1001, -1)  # a directory above it: its owner could rename the floor away
    try:
        with pytest.raises(LoadError) as e:
            load_layers([user], org)
        assert str(e.value) == (f"{org}:1:1: refused: organisation policies must be writable only by root, "
                                f"but {org.parent}, a directory above it, is owned by uid 1001, not root")
    finally:
        os.chown(org.parent, 0, -1)


@ROOT_ONLY
def test_an_organisation_symlink_to_a_file_a_user_owns_is_refused(layers, tmp_path):
    from hush.daemon.policy.loader import load_layers

    user, org = layers
    target = tmp_path / "theirs.yaml"
    target.write_text(FLOOR)
    os.chown(target, 1001, -1)
    (org / "a.yaml").unlink()
    (org / "a.yaml").symlink_to(target)
    with pytest.raises(LoadError) as e:
        load_layers([user], org)
    assert str(e.value).endswith(f"but its target {target} is owned by uid 1001, not root")


@ROOT_ONLY
def test_an_organisation_hosts_from_list_must_be_roots_too(layers):
    from hush.daemon.policy.loader import load_layers

    user, org = layers
    (org / "a.yaml").write_text("app: a\ndefault: allow\nrules:\n  - {match: {hosts_from: bad.txt}, action: block}\n")
    (org / "bad.txt").write_text("x.org\n")
    os.chmod(org / "bad.txt", 0o666)
    with pytest.raises(LoadError) as e:
        load_layers([user], org)
    assert "cannot read hosts_from 'bad.txt'" in str(e.value) and "world-writable" in str(e.value)
    os.chmod(org / "bad.txt", 0o644)
    assert load_layers([user], org).decide("a", RequestInfo.from_url("https://x.org/")).action.name == "block"


@ROOT_ONLY
def test_errors_of_both_layers_come_together(layers):
    from hush.daemon.policy.loader import load_layers

    user, org = layers
    (user / "a.yaml").write_text("app: a\ndefault: drop\n")
    os.chmod(org / "a.yaml", 0o666)
    with pytest.raises(LoadError) as e:
        load_layers([user], org)
    assert [x.location.file for x in e.value.errors] == sorted([str(org / "a.yaml"), str(user / "a.yaml")])


@ROOT_ONLY
def test_failing_examples_of_either_layer_refuse_the_set(layers):
    from hush.daemon.policy.loader import ExamplesFailed, load_checked

    user, org = layers
    (org / "a.yaml").write_text(FLOOR.replace("expect: block", "expect: tor"))
    with pytest.raises(ExamplesFailed) as e:
        load_checked([user], org)
    assert [str(x) for x in e.value.errors] == [
        f"{org}/a.yaml:6:5: example expects tor but rule 1 ({org}/a.yaml:4) decides block"]
    (org / "a.yaml").write_text(FLOOR)
    (user / "a.yaml").write_text(USER.replace("expect: allow", "expect: block"))
    with pytest.raises(ExamplesFailed) as e:
        load_checked([user], org)
    assert [str(x) for x in e.value.errors] == [
        f"{user}/a.yaml:5:5: example expects block but default ({user}/a.yaml:3) decides allow"]


def test_an_organisation_listener_the_user_uses_is_an_error():
    from hush.daemon.policy.loader import combine

    user = build([("u/a.yaml", "app: a\nlisten: 8101\ndefault: allow\n")])
    org = build([("o/b.yaml", "app: b\nlisten: 8101\ndefault: block\n"),
                 ("o/a.yaml", "app: a\nlisten: 8109\ndefault: block\n")])
    with pytest.raises(LoadError) as e:
        combine(user, org)
    assert [str(x) for x in e.value.errors] == [
        "o/b.yaml:2:9: listener 127.0.0.1:8101 of the organisation's app 'b' is already used by app 'a' (u/a.yaml:2:9)"]
    # an app in both layers listens where the user's policy says (the floor's 'listen' is not used)
    ps = combine(user, build([("o/a.yaml", "app: a\nlisten: 8109\ndefault: block\n")]))
    assert ps.specs == ["regular@127.0.0.1:8101"]


def test_root_only_allows_a_sticky_directory_above_the_floor(tmp_path):
    from hush.daemon.policy.loader import root_only

    assert root_only(Path("/tmp"), strict=False) is None  # 1777: no one can replace root's entries
    assert root_only(Path("/tmp")) == "is group and world-writable (mode 1777)"
    assert root_only(tmp_path / "absent").startswith("cannot be checked: no such file")


def test_root_shows_as_the_overflow_uid_where_root_is_not_mapped(tmp_path, monkeypatch):
    """systemd's PrivateUsers=yes in a user unit maps only the user: root's files show as 65534."""
    from hush.daemon.policy import loader

    real_read = Path.read_text

    def fake(maps):
        return lambda self, *a, **k: maps if str(self) == "/proc/self/uid_map" else real_read(self, *a, **k)

    monkeypatch.setattr(Path, "read_text", fake("      1000       1000          1\n"))
    assert loader.root_uids() == frozenset({0, int(real_read(Path("/proc/sys/kernel/overflowuid")))})
    monkeypatch.setattr(Path, "read_text", fake("         0          0 4294967295\n"))
    assert loader.root_uids() == frozenset({0})
    monkeypatch.setattr(Path, "read_text", fake("         0       1000          1\n"))  # unshare -r: root is 1000
    assert loader.root_uids() == frozenset({0, int(real_read(Path("/proc/sys/kernel/overflowuid")))})
    f = tmp_path / "f"
    f.write_text("")
    os.chmod(f, 0o644)
    if os.geteuid() == 0:
        os.chown(f, 65534, -1)
        assert loader.root_only(f) == "is owned by uid 65534, not root"
        assert loader.root_only(f, roots=frozenset({0, 65534})) is None
        os.chown(f, 1001, -1)
        assert loader.root_only(f, roots=frozenset({0, 65534})) == "is owned by uid 1001, not root"


def test_a_floor_hush_cannot_read_is_an_error_not_no_floor(tmp_path, monkeypatch):
    from hush.daemon.policy import loader

    assert loader.load_organisation(tmp_path / "absent") is None  # none there: no floor
    real_stat = os.stat

    def denied(path, *args, **kwargs):
        if str(path) == str(tmp_path):
            raise PermissionError(13, "Permission denied")
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(loader.os, "stat", denied)
    with pytest.raises(LoadError) as e:
        loader.load_organisation(tmp_path)
    assert str(e.value) == f"{tmp_path}:1:1: cannot read the organisation's policies: permission denied"
