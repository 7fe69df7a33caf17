"""flowinfo: what the policy decides on, and the proxy headers no site gets."""

import pytest
from mitmproxy import http

from hush.addons.flowinfo import drop_proxy_headers, fail_closed, identifiers, is_proxy_header, request_info

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


@pytest.mark.parametrize("name", ["Host", "Connection", "Authorization", "Cookie", "X-Forwarded", "Viagra",
                                  "User-Agent"])
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


# -- what the policy decides on, as the proxy and `hush policy explain` both build it ---------


def test_request_info_is_the_request_as_the_server_will_read_it():
    f = http_flow("http://EXAMPLE.com:8080/public/../private/%70age?q=1&r=%2F", method="post",
                  headers={"X-A": "1"})
    info = request_info(f, kind="preview")
    assert (info.method, info.scheme, info.host, info.port) == ("POST", "http", "example.com", 8080)
    assert (info.path, info.query, info.kind) == ("/private/page", "q=1&r=%2F", "preview")
    assert info.headers["x-a"] == "1"


def test_request_info_names_hosts_as_the_connection_reaches_them():
    idn = http_flow("http://a.org/")
    idn.request.host = "Bücher.de"
    assert request_info(idn).host == "xn--bcher-kva.de"
    assert request_info(http_flow("http://example.com./")).host == "example.com"
    assert request_info(http_flow("http://0.0.0.0/")).host == "127.0.0.1"  # where the connection goes
    assert request_info(http_flow("http://a.org")).path == "/"
    assert request_info(http_flow("http://a.org/x")).kind == "other"


def test_an_http2_request_has_its_authority_as_the_host_header():
    f = http_flow("https://a.org/x")
    f.request.http_version = "HTTP/2.0"
    f.request.headers.pop("Host", None)
    f.request.authority = "a.org"
    assert request_info(f).headers["host"] == "a.org"
    no_authority = http_flow("https://a.org/x")
    no_authority.request.headers.pop("Host", None)
    assert "host" not in request_info(no_authority).headers  # nothing named a host: nothing invented


NOTHING = {"user_agent": None, "cookies": 0, "referer": None, "accept_language": None, "range": None,
           "authorization": False}


@pytest.mark.parametrize("form", ["mitmproxy", "mapping"])
def test_identifiers_what_a_request_reveals_of_the_user(form):
    fields = [(b"User-Agent", b"WhatsApp/2.23"), (b"cookie", b"a=1; b=2"), (b"Referer", b"https://chat/room"),
              (b"ACCEPT-LANGUAGE", b"de-CH"), (b"Range", b"bytes=0-99"), (b"Authorization", b"Bearer t"),
              (b"Accept", b"*/*")]
    headers = http.Headers(fields) if form == "mitmproxy" else {n.decode(): v.decode() for n, v in fields}
    assert identifiers(headers) == {"user_agent": "WhatsApp/2.23", "cookies": 2, "referer": "https://chat/room",
                                    "accept_language": "de-CH", "range": "bytes=0-99", "authorization": True}
    assert identifiers(http.Headers([(b"Accept", b"*/*")]) if form == "mitmproxy" else {"Accept": "*/*"}) == NOTHING


def test_identifiers_count_cookies_over_repeated_headers_and_keep_the_first_user_agent():
    headers = http.Headers([(b"Cookie", b"a=1"), (b"User-Agent", b"first"), (b"Cookie", b"b=2;  ; c=3"),
                            (b"user-agent", b"second"), (b"Cookie", b"")])
    found = identifiers(headers)
    assert found["cookies"] == 3 and found["user_agent"] == "first"


def test_identifiers_keep_undecodable_bytes_recoverably():
    found = identifiers(http.Headers([(b"User-Agent", b"caf\xe9")]))
    assert found["user_agent"] == "caf\udce9" and found["user_agent"].encode("utf-8", "surrogateescape") == b"caf\xe9"


@pytest.mark.parametrize("name", [" Via ", "proxy-connection\t", "X-FORWARDED-FOR"])
def test_proxy_header_names_are_matched_loosely(name):
    assert is_proxy_header(name)


def test_fail_closed_blocks_and_says_why():
    d = fail_closed("wa", "no policy loaded", "v1", level="connect")
    assert d.action.name == "block" and d.action.egress == "none"
    assert (d.app, d.level, d.policy_version, d.note) == ("wa", "connect", "v1", "fail-closed: no policy loaded")
    assert d.rule is None and str(d.source).startswith("<hush>")
    assert fail_closed(None, "x").app == "?" and fail_closed(None, "x").level == "request"
