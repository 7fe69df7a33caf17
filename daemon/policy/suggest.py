"""``hush policy suggest``: the audit of one app turned into a proposed policy (YAML text).

    conn = queries.open_db(state_dir)
    seen = gather(conn, "signal", since=time.time() - 7 * 86400)
    print(suggest("signal", seen, current=policyset.policies.get("signal")))

What the app did becomes, in this order (first match decides):

1. its own backends — sites it kept long-lived tunnels to (a connection open
   ``LONG_TUNNEL`` seconds or more): ``passthrough``, never intercepted;
2. link previews (``kind: preview``): ``debounce`` then ``tor`` — only the last
   request of a burst leaves, from a Tor exit;
3. every other site it contacted, one rule each, with its requests, hosts and
   first/last seen as a comment above it: ``block`` (change it to ``allow`` or
   ``tor`` for what the app needs);
4. ``default: block``.

``examples:`` record one request of each kind seen, so ``hush policy check``
proves the file decides them as suggested.  The audit is read as aggregates
(one row per site, host, kind and level: SQL ``GROUP BY``), so memory grows
with the sites contacted, not with the records.  No mitmproxy; the loader only
to check the result.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import sqlite3
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hush.daemon.policy.model import Policy

LONG_TUNNEL = 60.0  # seconds: a connection open this long is the app's own, not a fetch
MAX_SITES = 500  # third-party sites listed one rule each; beyond, the busiest (the rest fall to the default)


@dataclasses.dataclass
class Site:
    """What the app did with one registrable domain (or IP address)."""

    site: str
    requests: int = 0
    previews: int = 0
    tunnels_long: int = 0
    longest_s: float = 0.0
    first: float = 0.0
    last: float = 0.0
    hosts: dict[str, int] = dataclasses.field(default_factory=dict)
    kinds: dict[str, int] = dataclasses.field(default_factory=dict)
    example: tuple[str, int, str] | None = None  # (scheme, port, host) of a request, for examples:

    @property
    def backend(self) -> bool:
        return self.tunnels_long > 0

    @property
    def only_previews(self) -> bool:
        return self.previews == self.requests


_QUERY = """
SELECT site, host, port, scheme, COALESCE(kind, ''), level, COUNT(*), MIN(ts), MAX(COALESCE(ended, ts)),
       MAX(COALESCE(duration_ms, 0)),
       SUM(level = 'connect' AND (COALESCE(duration_ms, 0) >= :long_ms
                                  OR (ended IS NULL AND ts <= :now - :long_s)))
FROM records
WHERE app = :app AND ts >= :since AND host IS NOT NULL AND host != ''
GROUP BY site, host, port, scheme, kind, level
"""


def gather(conn: sqlite3.Connection, app: str, since: float = 0.0, now: float | None = None) -> dict[str, Site]:
    """Every site ``app`` contacted since ``since``, from the audit."""
    from hush.daemon.policy.hosts import site_of

    now = time.time() if now is None else now
    sites: dict[str, Site] = {}
    rows = conn.execute(_QUERY, {"app": app, "since": since, "now": now, "long_ms": LONG_TUNNEL * 1000,
                                 "long_s": LONG_TUNNEL})
    for site, host, port, scheme, kind, level, n, first, last, longest_ms, long_tunnels in rows:
        site = site or site_of(host)
        s = sites.get(site)
        if s is None:
            s = sites[site] = Site(site, first=first, last=last)
        s.requests += n
        s.first, s.last = min(s.first, first), max(s.last, last)
        s.hosts[host] = s.hosts.get(host, 0) + n
        if kind:
            s.kinds[kind] = s.kinds.get(kind, 0) + n
        if kind == "preview":
            s.previews += n
        s.tunnels_long += long_tunnels or 0
        s.longest_s = max(s.longest_s, (longest_ms or 0) / 1000)
        if s.example is None or (kind != "preview" and level == "request"):
            s.example = (scheme or ("https" if port == 443 else "http"), port or 443, host)
    return sites


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts)) + " UTC"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _matches(sites: list[str]) -> list[str]:
    """``{site: [...]}`` for names, ``{net: [...]}`` for addresses (a rule each)."""
    names = [s for s in sites if not _is_ip(s)]
    addresses = [s for s in sites if _is_ip(s)]
    return [f"{{{key}: [{', '.join(json.dumps(x) for x in group)}]}}"
            for key, group in (("site", names), ("net", addresses)) if group]


def _url(s: Site) -> str:
    scheme, port, host = s.example or ("https", 443, s.site)
    default = {"http": 80, "https": 443}.get(scheme)
    h = f"[{host}]" if ":" in host else host
    return f"{scheme}://{h}{'' if port == default else f':{port}'}/"


def _listen(policy: Policy) -> list[str]:
    out = []
    for x in policy.listeners:
        out.append(f"  - {{port: {x.port}, host: {json.dumps(x.host)}, mode: {x.mode}}}")
    return ["listen:", *out] if out else []


def suggest(app: str, sites: dict[str, Site], current: Policy | None = None, since: str | None = None,
            now: float | None = None) -> str:
    """The proposed policy as YAML text (comments say where each rule comes from)."""
    now = time.time() if now is None else now
    total = sum(s.requests for s in sites.values())
    first = min((s.first for s in sites.values()), default=now)
    last = max((s.last for s in sites.values()), default=now)
    backends = sorted((s for s in sites.values() if s.backend), key=lambda s: -s.longest_s)
    previews = sorted((s for s in sites.values() if s.previews and not s.backend), key=lambda s: -s.previews)
    third = sorted((s for s in sites.values() if not s.backend and not s.only_previews),
                   key=lambda s: (-s.requests, s.site))
    dropped = third[MAX_SITES:]
    third = third[:MAX_SITES]
    lines = [
        f"# Suggested by `hush policy suggest --app {app}{f' --since {since}' if since else ''}` on {_when(now)},",
        f"# from {total} audit records of {app} ({_when(first)} to {_when(last)}).",
        "# Read it and change what you disagree with; then save it as the app's policy and check it:",
        f"#   hush policy check {app}.yaml",
        f"app: {app}",
    ]
    if current is not None:
        lines += _listen(current)
        if current.processes:
            lines.append(f"identify: {{process: [{', '.join(json.dumps(p) for p in sorted(current.processes))}]}}")
    lines += ["default: block", "rules:"]
    if backends:
        lines.append("  # the app's own backends: long-lived tunnels, passed through untouched (TLS never intercepted)")
        for s in backends:
            lines.append(f"  # {s.site}: {s.tunnels_long} tunnel(s) open {LONG_TUNNEL:g} s or more, longest "
                         f"{_duration(s.longest_s)}; hosts {', '.join(sorted(s.hosts))}; {_seen(s)}")
        for match in _matches([s.site for s in backends]):
            lines += [f"  - name: {app}'s own servers", f"    match: {match}", "    action: passthrough"]
    if previews:
        n = sum(s.previews for s in previews)
        lines.append(f"  # link previews: {n} request(s) to {len(previews)} site(s) "
                     f"({', '.join(f'{s.site} {s.previews}' for s in previews[:10])}"
                     f"{', …' if len(previews) > 10 else ''}): only the last of a burst leaves, from a Tor exit")
        lines += ["  - name: link previews", "    match: {kind: preview}", "    action: debounce", "    then: tor"]
    if third:
        lines.append("  # third parties, by site: blocked — make one allow (or tor) if the app needs it")
    for s in third:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(s.kinds.items())) or "tunnels"
        lines.append(f"  # {s.site}: {s.requests} request(s) ({kinds}); hosts "
                     f"{', '.join(sorted(s.hosts)[:5])}{', …' if len(s.hosts) > 5 else ''}; {_seen(s)}")
        lines += [f"  - match: {_matches([s.site])[0]}", "    action: block"]
    if dropped:
        lines.append(f"  # {len(dropped)} more site(s) with fewer requests fall to the default (block)")
    if not (backends or previews or third):
        lines[-1] = "rules: []"
    examples: list[tuple[Site, str, str | None]] = [(s, "passthrough", None) for s in backends[:5]]
    examples += [(s, "debounce", "preview") for s in previews[:5]]
    examples += [(s, "block", None) for s in third[:5]]
    if examples:
        lines.append("examples:  # one request of each kind seen, decided as suggested")
        for s, expect, kind in examples:
            lines.append(f"  - {{url: {json.dumps(_url(s))}, {f'kind: {kind}, ' if kind else ''}expect: {expect}}}")
    return "\n".join(lines) + "\n"


def _seen(s: Site) -> str:
    return f"first {_when(s.first)}, last {_when(s.last)}"
