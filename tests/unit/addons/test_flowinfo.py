"""flowinfo: what the policy decides on, and the proxy headers no site gets."""

import pytest
from mitmproxy import http

from hush.addons.flowinfo import drop_proxy_headers, is_proxy_header, request_info

from .helpers import http_flow


def test_request_info_carries_the_target_authority_named_inside_a_connection():
    f = http_flow("http://allowed.test/x")
    assert request_info(f).authority == ""  # origin-form, or a plain proxy request (mitmproxy empties it)
    f.request.authority = "blocked.test:80"  # absolute-form inside a tunnel to allowed.test
    info = request_info(f)
    assert (info.host, info.authority) == ("allowed.test", "blocked.test:80")


def test_repeated_host_headers_reach_the_policy_joined():
    f = http_flow("http://allowed.test/x")
    f.request.headers.fields = ((b"Host", b"allowed.test"), (b"Host", b"blocked.test"))
    assert request_info(f).headers["host"] == "allowed.test, blocked.test"


@pytest.mark.parametrize("name", ["Proxy-Connection", "proxy-authorization", "PROXY-AUTHENTICATE", "Proxy-Foo",
                                  "Via", "Forwarded", "X-Forwarded-For", "x-forwarded-host", "X-Forwarded-Proto",
                                  "X-Real-IP", "Client-IP", "True-Client-IP", "X-Tor-Stream-Isolation", "X-Proxy-ID"])
def test_proxy_headers(name):
    assert is_proxy_header(name)


@pytest.mark.parametrize("name", ["Host", "Connection", "Authorization", "Cookie", "X-Forwarded", "Viagra", "User-Agent"])
def test_not_proxy_headers(name):
    assert not is_proxy_header(name)


def test_drop_proxy_headers_keeps_everything_else_in_order():
    headers = http.Headers([
        (b"Host", b"a.test"), (b"Proxy-Connection", b"keep-alive"), (b"Cookie", b"a=1"),
        (b"Proxy-Authorization", b"Basic dTpw"), (b"Via", b"1.1 app"), (b"Forwarded", b"for=10.0.0.1"),
        (b"X-Forwarded-For", b"10.0.0.1"), (b"x-forwarded-for", b"10.0.0.2"), (b"Cookie", b"b=2"),
        (b"Connection", b"keep-alive, Proxy-Connection, X-Keep"), (b"X-Keep", b"1"),
    ])
    removed = drop_proxy_headers(headers)
    assert removed == ["proxy-connection", "proxy-authorization", "via", "forwarded", "x-forwarded-for",
                       "x-forwarded-for"]
    assert headers.fields == ((b"Host", b"a.test"), (b"Cookie", b"a=1"), (b"Cookie", b"b=2"),
                              (b"Connection", b"keep-alive, X-Keep"), (b"X-Keep", b"1"))


def test_a_connection_header_naming_only_proxy_headers_goes_too():
    headers = http.Headers([(b"Connection", b"Proxy-Connection, Via"), (b"Accept", b"*/*")])
    assert drop_proxy_headers(headers) == ["connection"]
    assert headers.fields == ((b"Accept", b"*/*"),)
    untouched = http.Headers([(b"Connection", b"close"), (b"Accept", b"*/*")])
    assert drop_proxy_headers(untouched) == [] and untouched.fields == ((b"Connection", b"close"), (b"Accept", b"*/*"))


def test_joined_headers_is_the_per_name_join_in_one_pass():
    from mitmproxy import http as mhttp

    from hush.addons.flowinfo import joined_headers

    h = mhttp.Headers([(b"A", b"1"), (b"b", b"2"), (b"a", b"3"), (b"\xc3\xa9", b"\xff")])
    assert joined_headers(h) == {name.lower(): ", ".join(h.get_all(name)) for name in h} == {
        "a": "1, 3", "b": "2", "é": "\udcff"}
    many = mhttp.Headers([(b"X-%d" % i, b"v") for i in range(100_000)])  # was minutes (quadratic)
    assert len(joined_headers(many)) == 100_000
