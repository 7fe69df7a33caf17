"""A tiny DNS server for the private network's exit: it knows a few names.

Tor randomises the letter case of queries (0x20); the question is echoed
back as it came.
"""

from __future__ import annotations

import socket
import threading

from dnslib import QTYPE, RCODE, RR, A, DNSRecord


class ExitDNS:
    def __init__(self, names: dict[str, str]):
        self.names = {k.lower().rstrip("."): v for k, v in names.items()}
        self.queries: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            try:
                query = DNSRecord.parse(data)
            except Exception:
                continue
            reply = query.reply()
            name = str(query.q.qname).lower().rstrip(".")
            self.queries.append(name)
            if name in self.names and query.q.qtype == QTYPE.A:
                reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(self.names[name]), ttl=60))
            elif name not in self.names:
                reply.header.rcode = RCODE.NXDOMAIN
            self.sock.sendto(reply.pack(), peer)

    def close(self) -> None:
        self.sock.close()
