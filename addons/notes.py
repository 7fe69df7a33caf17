"""What hush's addons tell each other: one typed record per flow, one per connection.

``notes(flow)`` is the flow's :class:`Notes`, kept in ``flow.metadata["hush"]``:
every field an addon leaves for a later one is declared here, once, with its
type and who writes it.

``conn_notes(client)`` is a client connection's :class:`ConnNotes`: the
per-connection state of every addon (permits, the tunnel decided on it, its
process, …).  It is kept on the :class:`~mitmproxy.connection.Client` object
itself, so it lives exactly as long as the connection does: nothing is left
behind when a connection ends, whether or not a cleanup hook ran.  (A
``WeakKeyDictionary`` keyed by the client would not do: a CONNECT's tunnel
holds its flow, whose ``client_conn`` is the key, so such an entry would
never be freed.)
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mitmproxy import connection, http
    from mitmproxy import flow as mflow

    from hush.addons.audit import Wire
    from hush.addons.flowinfo import Identifiers
    from hush.addons.intake import Watch
    from hush.addons.torroute import Route
    from hush.addons.tunnel import Tunnel
    from hush.daemon.policy import procnet
    from hush.daemon.policy.model import Decision, PolicySet

KEY = "hush"  # the one key hush sets in flow.metadata


@dataclasses.dataclass(eq=False)
class Notes:
    """One flow's notes, in pipeline order of who writes them."""

    # identify: the snapshot that decides this flow (taken once), the app, the listener
    identified: bool = False
    policy: PolicySet | None = None
    app: str | None = None
    listener: str | None = None
    process: str | None = None  # on a shared listener: the process names holding the socket
    exe: str | None = None  # … and their executables
    # classify: the kind of request, and what it carried of the user as the app sent it
    kind: str | None = None
    carried: Identifiers | None = None
    # decide (act and intake when they fail closed)
    decision: Decision | None = None
    # torroute: how the flow went through tor
    tor: Route | None = None
    # act, timing, the tor action: what happened instead of the decision ("tor-unavailable", "superseded", …)
    outcome: str | None = None
    # timing
    held_ms: float | None = None
    superseded_by: str | None = None  # the URL of the request that superseded this one
    revoked_by: Decision | None = None  # the decision of the new policy set that revoked it
    # cap
    bytes_down: int | None = None
    truncated: bool = False
    # audit: recorded (once)
    audited: bool = False


def notes(flow: mflow.Flow) -> Notes:
    """The flow's notes (made empty on first use)."""
    found = flow.metadata.get(KEY)
    if found is None:
        found = flow.metadata[KEY] = Notes()
    return found


@dataclasses.dataclass(eq=False)
class ConnNotes:
    """One client connection's state, by the addon that keeps it."""

    # identify: on a shared listener, the process found (None: none found) and why no app was identified
    owner: procnet.Owner | None = None
    shared: bool = False  # owner was looked up (a shared listener)
    unidentified: str | None = None
    # intake
    watch: Watch | None = None
    decided: bool = False  # hush decided something on this connection
    in_flight: http.HTTPFlow | None = None
    # decide
    tunnel: Tunnel | None = None  # the tunnel decided (or inspected) on this connection
    socks_seen: bool = False  # next_layer looked at this SOCKS5/transparent connection
    sni: str | None = None  # an inspected tunnel: the name its ClientHello asked for
    hello_read: bool = False  # a Tor-routed tunnel: its ClientHello was checked
    tls_unreadable: bool = False  # its first bytes are a TLS record mitmproxy does not read: never relayed
    # act: where a connection is permitted, and the tunnel it relays
    permits: set[tuple[str, int]] = dataclasses.field(default_factory=set)
    relayed: Tunnel | None = None
    # torroute
    routes: dict[tuple[str, int], Route] = dataclasses.field(default_factory=dict)  # target → route
    tor_tunnel: Tunnel | None = None  # a tunnel waiting for next_layer to route it into tor
    tor_refused: bool = False  # a SOCKS5 tunnel tor could not carry: relay nothing
    # audit
    wire: Wire | None = None


_ON_CLIENT = "hush_notes"


def conn_notes(client: connection.Client) -> ConnNotes:
    """The connection's state (made empty on first use), kept on the client object."""
    attributes = vars(client)
    found = attributes.get(_ON_CLIENT)
    if found is None:
        found = attributes[_ON_CLIENT] = ConnNotes()
    return found
