import os

import pytest

from hush.daemon.policy.hosts import (
    HostIndex,
    in_networks,
    normalize,
    parents,
    parse_authority,
    parse_host_pattern,
    parse_network,
    refusal,
    site_of,
)


@pytest.mark.parametrize("host, site", [
    ("a.b.example.co.uk", "example.co.uk"),
    ("example.com", "example.com"),
    ("WWW.Example.COM.", "example.com"),
    ("user.github.io", "user.github.io"),  # a private suffix counts
    ("127.0.0.1", "127.0.0.1"),
    ("[::1]", "::1"),
    ("localhost", "localhost"),
])
def test_site_of(host, site):
    assert site_of(host) == site


def test_site_lookup_needs_no_network_and_no_cache(monkeypatch, tmp_path):
    import socket

    def refuse(*a, **k):
        raise AssertionError("tldextract tried the network")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    site_of.cache_clear()
    assert site_of("news.bbc.co.uk") == "bbc.co.uk"
    assert not (tmp_path / ".cache").exists()
    assert not os.path.exists(os.path.expanduser("~/.cache/python-tldextract"))


def test_parents_and_normalize():
    assert list(parents("a.b.c")) == ["b.c", "c"]
    assert list(parents("c")) == []
    assert normalize(" Example.COM. ") == "example.com"


@pytest.mark.parametrize("host, canonical", [
    ("2130706433", "127.0.0.1"),  # what getaddrinfo reads as 127.0.0.1 without DNS
    ("0x7f.1", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("0xdeadbeef", "222.173.190.239"),
    ("[::FFFF:127.0.0.1]", "127.0.0.1"),
    ("2001:DB8:0:0::1", "2001:db8::1"),
    ("1e100.net", "1e100.net"),  # names stay names
    ("Bücher.de", "xn--bcher-kva.de"),  # as mitmproxy decoded it → as the app sent it
    ("8bad.cafe", "8bad.cafe"),
    ("256.1.1.1", "256.1.1.1"),  # not an address: a name (and not one anything resolves to 256.…)
    ("12345678901", "12345678901"),
])
def test_normalize_spells_addresses_one_way(host, canonical):
    assert normalize(host) == canonical


@pytest.mark.parametrize("pattern, result", [
    ("example.com", ("example.com", False)),
    ("*.Example.com", ("example.com", True)),
    ("10.0.0.1", ("10.0.0.1", False)),
])
def test_host_patterns(pattern, result):
    assert parse_host_pattern(pattern) == result


@pytest.mark.parametrize("pattern", ["*", "a.*", "*.10.0.0.1", "-a.com", "a..com", "::1%1", "fe80::1%eth0"])
def test_bad_host_patterns(pattern):
    with pytest.raises(ValueError):
        parse_host_pattern(pattern)


def test_index_candidates_keep_rule_order():
    index = HostIndex(
        exact={0: ["a.example.com"], 3: ["b.example.com"]},
        suffix={1: ["example.com"]},
        site={2: ["example.com"]},
        unindexed=[4],
    )
    assert index.candidates("a.example.com", "example.com") == [0, 1, 2, 4]
    assert index.candidates("example.com", "example.com") == [2, 4]  # '*.x' is subdomains only
    assert index.candidates("other.org", "other.org") == [4]


def test_index_offers_net_rules_to_addresses_only():
    index = HostIndex(exact={0: ["a.com"]}, suffix={}, site={}, unindexed=[2], by_address=[1])
    assert index.candidates("149.154.167.51", "149.154.167.51") == [1, 2]
    assert index.candidates("2001:b28:f23d::a", "2001:b28:f23d::a") == [1, 2]
    assert index.candidates("a.com", "a.com") == [0, 2]


@pytest.mark.parametrize("host, inside", [
    ("149.154.167.51", True),
    ("149.154.176.1", False),  # just past the /20
    ("::ffff:149.154.167.51", True),  # IPv4-mapped: the kernel connects to the IPv4 address
    ("2001:b28:f23d:f001::a", True),
    ("2001:b28:f23e::1", False),
    ("telegram.org", False),  # names are never resolved to decide
    ("149.154.167.51.nip.io", False),
])
def test_in_networks(host, inside):
    nets = [parse_network("149.154.160.0/20"), parse_network("2001:b28:f23d::/48")]
    assert in_networks(normalize(host), nets) is inside


def test_parse_network():
    assert str(parse_network("10.1.2.3")) == "10.1.2.3/32"
    assert str(parse_network(" 2001:db8::/32 ")) == "2001:db8::/32"
    with pytest.raises(ValueError, match="did you mean '2001:db8::/32'"):
        parse_network("2001:db8::1/32")
    for zoned in ("::1%1", "::1%1/128", "fe80::%eth0/64"):
        with pytest.raises(ValueError, match="zone id"):
            parse_network(zoned)


@pytest.mark.parametrize("authority, parsed", [
    ("example.com", ("example.com", None)), ("example.com:8080", ("example.com", 8080)), ("[::1]:80", ("::1", 80)),
    ("[::1]", ("::1", None)), ("127.0.0.1:80", ("127.0.0.1", 80)), (" a.com\t", ("a.com", None)),
    ("blocked.test:", ("blocked.test", None)),  # an empty port is valid (RFC 3986): still blocked.test
    ("Blocked.Test.:", ("blocked.test", None)),
    ("0x7f.1:8080", ("127.0.0.1", 8080)), ("[0:0::0]:1", ("::1", 1)), ("0", ("127.0.0.1", None)),
])
def test_parse_authority(authority, parsed):
    assert parse_authority(authority) == parsed


@pytest.mark.parametrize("authority, why", [
    ("a.com:x", "port"), ("a.com:80x", "port"), ("a.com:+80", "port"), ("a.com:99999", "port"), ("a.com:٣", "port"),
    ("user@a.com", "userinfo"), ("user:pw@a.com:80", "userinfo"),
    ("a.com, b.com", "several"), ("a.com,", "several"),  # repeated Host headers arrive joined so
    ("::1", "brackets"), ("::1:80", "brackets"), ("[::1", "malformed"), ("[::1]80", "malformed"),
    ("[::1%1]:80", "zone id"), ("[fe80::1%25eth0]", "zone id"), ("[v1.x]", "no IPv6"), ("[127.0.0.1]", "no IPv6"),
    ("a..com", "host"), ("a.com..", "host"), ("bl%6fcked.test", "host"), ("a/b", "host"), ("a_b!", "host"),
    ("", "empty"), (":80", "host"), ("a.com:80:80", "brackets"),
    ("a.com :80", "blanks"), ("a .com", "blanks"), ("a.com\x00", "control"), ("a.com\r\nX: y", "control"),
])
def test_what_is_not_one_authority_is_refused(authority, why):
    with pytest.raises(ValueError, match=why):
        parse_authority(authority)


@pytest.mark.parametrize("spelling", [
    "0.0.0.0", "0", "0.0", "0.0.0", "0x0", "00", "0x00000000", "000.0.0.0", "0.0.0.0.",
    "::", "[::]", "0:0::0", "[0:0:0:0:0:0:0:0]", "::0.0.0.0", "::ffff:0.0.0.0", "::FFFF:0:0",
])
def test_the_unspecified_address_is_the_loopback_address_it_reaches(spelling):
    # Linux connects 0.0.0.0 to 127.0.0.1 and :: to ::1 (an IPv4-mapped one to 127.0.0.1)
    loopback = "::1" if normalize(spelling) == "::1" else "127.0.0.1"
    assert normalize(spelling) == loopback
    assert in_networks(normalize(spelling), [parse_network("127.0.0.0/8"), parse_network("::1/128")])


@pytest.mark.parametrize("host", ["0.0.0.1", "0.1.2.3", "0.255.255.255"])
def test_the_rest_of_0_0_0_0_8_is_itself(host):
    # routed like any address (kernel 5.3+: `ip route get 0.0.0.1` names the default gateway)
    assert normalize(host) == host


@pytest.mark.parametrize("host", ["::1%1", "[::1%251]", "::%1", "fe80::1%eth0", "::ffff:127.0.0.1%1", "::1%"])
def test_a_zone_id_is_refused(host):
    assert "zone id" in refusal(normalize(host))


@pytest.mark.parametrize("host", ["", "a b", "a/b", "a..b", "-a.com", "x" * 64 + ".com", "a\x00b", "evil.com#"])
def test_what_is_no_host_is_refused(host):
    assert refusal(normalize(host))


@pytest.mark.parametrize("host", ["example.com", "127.0.0.1", "::1", "2001:db8::1", "xn--bcher-kva.de", "a_b.example"])
def test_hosts_are_not_refused(host):
    assert refusal(normalize(host)) is None


@pytest.mark.parametrize("host, canonical", [
    ("64:ff9b::cb00:710b", "203.0.113.11"),  # RFC 6052's well-known NAT64 prefix: reaches 203.0.113.11
    ("[64:FF9B::203.0.113.11]", "203.0.113.11"),
    ("64:ff9b::7f00:1", "127.0.0.1"),
    ("64:ff9b::", "127.0.0.1"),  # 0.0.0.0 through NAT64: decided as the unspecified address, the strict way
    ("::7f00:1", "127.0.0.1"),  # RFC 4291's deprecated IPv4-compatible form
    ("::203.0.113.11", "203.0.113.11"),
    ("::0.0.0.2", "0.0.0.2"),
    ("::", "::1"), ("::1", "::1"), ("::0.0.0.1", "::1"),  # IPv6's own unspecified and loopback addresses stay IPv6
    ("64:ff9b::1:7f00:1", "64:ff9b::1:7f00:1"),  # outside the /96: itself
    ("64:ff9a::7f00:1", "64:ff9a::7f00:1"),
    ("::1:7f00:1", "::1:7f00:1"),  # outside ::/96
])
def test_an_ipv6_address_standing_for_an_ipv4_one_is_decided_as_it(host, canonical):
    assert normalize(host) == canonical


def test_nat64_forms_match_ipv4_rules_and_loopback_networks():
    nets = [parse_network("203.0.113.11/32")]
    for host in ("64:ff9b::cb00:710b", "::cb00:710b", "::ffff:cb00:710b"):
        assert in_networks(normalize(host), nets), host
        assert parse_authority(f"[{host}]:443") == ("203.0.113.11", 443)
        assert parse_host_pattern(host) == ("203.0.113.11", False)  # a rule written so names the same host
    loopback = [parse_network("127.0.0.0/8")]
    assert in_networks(normalize("64:ff9b::7f00:1"), loopback) and in_networks(normalize("::7f00:1"), loopback)


@pytest.mark.parametrize("host", ["64:ff9b:1::7f00:1", "64:ff9b:1:7f00:0:100::", "[64:FF9B:1::cb00:710b]"])
def test_local_use_nat64_is_refused(host):
    # RFC 8215: where the IPv4 address sits depends on the prefix length the network chose
    assert "local-use NAT64" in refusal(normalize(host))
    with pytest.raises(ValueError):
        parse_authority(f"[{host.strip('[]')}]:80")


def test_is_loopback_and_address_of_stay_strict_for_peers():
    # a peer's address: NAT64's 64:ff9b::7f00:1 is another machine's, through a translator
    from hush.daemon.policy.hosts import address_of, is_loopback
    assert not is_loopback("64:ff9b::7f00:1") and not is_loopback("::7f00:1")
    assert is_loopback("::1") and is_loopback("127.0.0.1") and is_loopback("::ffff:127.0.0.1")
    assert address_of("64:ff9b::7f00:1").version == 6  # a socket's family follows what is written


def test_this_machine_names_why_a_destination_is_this_machine_however_spelt():
    from hush.daemon.policy.hosts import this_machine

    for host in ("127.0.0.1", "127.1", "2130706433", "::ffff:127.0.0.1", "64:ff9b::7f00:1", "::1", "::1%lo"):
        assert this_machine(host) == "this machine's loopback", host
    assert this_machine("0.0.0.0") == this_machine("::") == "this machine's loopback"  # as Linux connects them
    assert this_machine("169.254.169.254") == "a link-local address"
    assert this_machine("169.254.169.254", link_local=False) is None
    assert this_machine("fe80::1%2") == "a link-local address"
    assert this_machine("203.0.113.10") is None and this_machine("example.org") is None
