import os

import pytest

from hush.daemon.policy.hosts import HostIndex, normalize, parents, parse_host_pattern, site_of


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
