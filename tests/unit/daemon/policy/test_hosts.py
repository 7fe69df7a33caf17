import os

import pytest

from hush.daemon.policy.hosts import HostIndex, authority_host, in_networks, normalize, parents, parse_host_pattern, parse_network, site_of


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


@pytest.mark.parametrize("pattern", ["*", "a.*", "*.10.0.0.1", "-a.com", "a..com"])
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


@pytest.mark.parametrize("authority, host", [
    ("example.com", "example.com"), ("example.com:8080", "example.com"), ("[::1]:80", "::1"), ("[::1]", "::1"),
    ("::1", "::1"), ("127.0.0.1:80", "127.0.0.1"), ("a.com:x", "a.com:x"), (" a.com ", "a.com"),
])
def test_authority_host(authority, host):
    assert authority_host(authority) == host
