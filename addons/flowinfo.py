"""Small pure helpers the addons share (not an addon).

``request_info`` turns a mitmproxy flow into the :class:`RequestInfo` the
policy decides on, so the live proxy and ``hush policy explain`` decide
through the same code.  ``identifiers`` lists what a request carries that
identifies the user.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, TypedDict

from hush.addons.actions.block import Block
from hush.daemon.policy.hosts import normalize
from hush.daemon.policy.model import Decision, Level, RequestInfo, canonical_path
from hush.daemon.yamlschema import Location

if TYPE_CHECKING:
    from mitmproxy import http

FAIL_CLOSED = Location("<hush>", 0, 0)


def joined_headers(headers: http.Headers) -> dict[str, str]:
    """Lower-case name → its values joined with ``, ``, in one pass over the
    raw fields.  (A lookup per name is a scan of every field: with many
    distinct names that was quadratic — 100k header lines held the event
    loop for minutes.)"""
    values: dict[str, list[str]] = {}
    for name, value in headers.fields:
        key = name.decode("utf-8", "surrogateescape").lower()
        text = value.decode("utf-8", "surrogateescape")
        found = values.get(key)
        if found is None:
            values[key] = [text]
        else:
            found.append(text)
    return {key: ", ".join(texts) for key, texts in values.items()}


def request_info(flow: http.HTTPFlow, kind: str = "other") -> RequestInfo:
    req = flow.request
    path, _, query = req.path.partition("?")
    headers = joined_headers(req.headers)
    if "host" not in headers and req.host_header:  # HTTP/2 carries it as :authority
        headers["host"] = req.host_header
    return RequestInfo(
        method=req.method.upper(),
        scheme=req.scheme,
        host=normalize(req.host),
        port=req.port,
        path=canonical_path(path or "/"),
        query=query,
        headers=headers,
        kind=kind,
        # mitmproxy empties it for a plain proxy request (whose URL gave
        # req.host); what is left was named inside a connection already made
        authority=req.authority,
    )


_IDENTIFYING = {b"user-agent": "user_agent", b"cookie": "cookie", b"referer": "referer",
                b"accept-language": "accept_language", b"range": "range", b"authorization": "authorization"}


class Identifiers(TypedDict):
    """What of the user a request's headers reveal."""

    user_agent: str | None
    cookies: int  # how many cookies
    referer: str | None
    accept_language: str | None
    range: str | None
    authorization: bool  # whether it carries credentials


def identifiers(headers: Mapping[str, str] | http.Headers) -> Identifiers:
    """What of the user a request's headers reveal (values the audit may keep).

    One pass over mitmproxy's raw header fields: its case-insensitive lookups
    cost more than the whole pass when called six times per flow."""
    found: dict[str, str] = {}
    fields = getattr(headers, "fields", None)  # mitmproxy's Headers (not imported: explain has no flows)
    if fields is not None:
        for raw_name, raw_value in fields:
            key = _IDENTIFYING.get(raw_name.lower())
            if key is not None and key not in found:
                found[key] = raw_value.decode("utf-8", "surrogateescape")
            elif key == "cookie":
                found[key] += "; " + raw_value.decode("utf-8", "surrogateescape")
    else:
        for name, value in headers.items():
            key = _IDENTIFYING.get(name.lower().encode())
            if key is not None:
                found[key] = value
    cookie = found.get("cookie")
    return {
        "user_agent": found.get("user_agent"),
        "cookies": len([c for c in cookie.split(";") if c.strip()]) if cookie else 0,
        "referer": found.get("referer"),
        "accept_language": found.get("accept_language"),
        "range": found.get("range"),
        "authorization": "authorization" in found,
    }


# Request headers that say a proxy is in use, or carry what only a proxy
# should see: the app's proxy credentials, the client address a proxy would
# forward, tor's stream-isolation key.  None of them is for the site, whatever
# the action (Privoxy removes them too).  Matched case-insensitively, by name
# or by prefix.
PROXY_HEADERS = frozenset({
    "via", "forwarded", "x-real-ip", "x-client-ip", "client-ip", "true-client-ip", "x-cluster-client-ip",
    "x-originating-ip", "x-remote-ip", "x-remote-addr", "x-proxyuser-ip", "x-bluecoat-via", "cf-connecting-ip",
    "fastly-client-ip", "x-tor-stream-isolation",
})
PROXY_HEADER_PREFIXES = ("proxy-", "x-forwarded-", "x-proxy-")  # Proxy-Connection, Proxy-Authorization, …


def is_proxy_header(name: str) -> bool:
    name = name.strip().lower()
    return name in PROXY_HEADERS or name.startswith(PROXY_HEADER_PREFIXES)


def drop_proxy_headers(headers: http.Headers) -> list[str]:
    """Remove every proxy header (and its name from ``Connection``); the
    names removed, lower-case.  One pass over the fields."""
    removed: list[str] = []
    kept: list[tuple[bytes, bytes]] = []
    changed = False
    for name, value in headers.fields:
        text = name.decode("latin-1")
        if is_proxy_header(text):
            removed.append(text.lower())
            continue
        if text.lower() == "connection":
            tokens = value.decode("latin-1").split(",")
            left = [t.strip() for t in tokens if t.strip() and not is_proxy_header(t)]
            if len(left) != len([t for t in tokens if t.strip()]):
                changed = True
                if not left:
                    removed.append("connection")
                    continue
                value = ", ".join(left).encode("latin-1")
        kept.append((name, value))
    if removed or changed:
        headers.fields = tuple(kept)
    return removed


def fail_closed(app: str | None, reason: str, version: str = "", level: Level = "request") -> Decision:
    """A decision hush makes on its own when it cannot decide: nothing leaves."""
    return Decision(app or "?", Block(502), None, FAIL_CLOSED, level, version, note=f"fail-closed: {reason}")
