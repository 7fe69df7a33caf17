"""TLS bytes as a real client sends them, for tests that speak to hush by hand."""

from __future__ import annotations

import contextlib
import ssl


def client_hello(server_name: str | None = None, alpn: list[str] | None = None) -> bytes:
    """A real ClientHello, as Python's ssl (OpenSSL) sends it first: asking for ``server_name``
    (no SNI for None or an address), offering ``alpn``; one record."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()
