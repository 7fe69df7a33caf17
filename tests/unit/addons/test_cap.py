"""cap: a rule's max_bytes — the response streams, the app gets the first max_bytes bytes, the site's
connection is cut, and the audit says so.  Driven through the whole chain (tests/unit/addons/drive.py)."""

import asyncio

from mitmproxy import http
from mitmproxy.proxy.layers.http import HttpRequestHeadersHook, HttpResponseHeadersHook

from hush.addons.audit import flow_record

from .drive import running
from .helpers import http_flow

POLICY = """\
app: x
listen: 8101
default: allow
rules:
  - match: {host: capped.org}
    action: allow
    max_bytes: 10
  - match: {host: stripped.org}
    action: strip
    max_bytes: 1KiB
"""


def fetched(url, chunks, content_length=None):
    """Request ``url`` through the chain, answer it with a streamed response: (flow, what the app got)."""
    async def scenario():
        async with running(POLICY) as hush:
            f = http_flow(url)
            await hush.hook(HttpRequestHeadersHook(f))
            assert f.response is None  # allowed: nothing answered locally
            f.response = http.Response.make(200, b"", {"Content-Length": str(content_length or 0)})
            f.response.content = None  # the body is coming: only the head has arrived
            await hush.hook(HttpResponseHeadersHook(f))
            stream = f.response.stream
            if not callable(stream):
                return f, None
            return f, [stream(chunk) for chunk in chunks]

    return asyncio.run(scenario())


def test_without_max_bytes_nothing_is_streamed_or_cut():
    f, got = fetched("http://free.org/x", [b"a" * 100])
    assert got is None and not f.response.stream  # mitmproxy buffers it as usual
    assert not flow_record(f, "full")["truncated"]


def test_under_the_cap_everything_passes():
    f, got = fetched("http://capped.org/x", [b"12345", b"6789", b""])
    assert got == [b"12345", b"6789", b""]
    assert f.error is None
    record = flow_record(f, "full")
    assert not record["truncated"] and record["bytes_down"] == 9


def test_exactly_the_cap_is_not_truncated():
    f, got = fetched("http://capped.org/x", [b"1234567890", b""])
    assert got == [b"1234567890", b""] and f.error is None
    assert not flow_record(f, "full")["truncated"]


def test_over_the_cap_the_app_gets_the_first_bytes_and_the_site_connection_is_cut():
    f, got = fetched("http://capped.org/x", [b"123456", b"7890ab", b"cdef", b""], content_length=16)
    assert got == [b"123456", b"7890", b"", b""]  # 10 bytes in all, cut inside the second chunk
    assert f.error is not None and f.error.msg == "Connection killed."  # mitmproxy stops reading the site
    record = flow_record(f, "full")
    assert record["truncated"] == 1 and record["bytes_down"] == 10


def test_one_chunk_larger_than_the_cap():
    f, got = fetched("http://capped.org/x", [b"x" * 5000])
    assert got == [b"x" * 10]
    assert flow_record(f, "full")["truncated"] == 1


def test_the_cap_applies_to_any_action_that_fetches():
    f, got = fetched("http://stripped.org/x", [b"y" * 1000, b"y" * 1000])
    assert got == [b"y" * 1000, b"y" * 24]  # 1 KiB
    assert flow_record(f, "full")["truncated"] == 1
