"""peeruid: the uid (and inode) of a local client's socket, from the event loop, as procnet finds it."""

import asyncio
import os
import socket

from hush.daemon import peeruid
from hush.daemon.policy import procnet


def _pair(host: str = "127.0.0.1"):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server = socket.socket(family)
    server.bind((host, 0))
    server.listen()
    client = socket.create_connection(server.getsockname()[:2])
    accepted, peer = server.accept()
    return server, client, accepted, peer


def test_the_clients_uid_and_inode_as_procnet_finds_them():
    server, client, accepted, peer = _pair()
    try:
        local = accepted.getsockname()
        found = asyncio.run(peeruid.uid_inode(peer, local))
        assert found is not None and found[0] == os.getuid()
        assert found == procnet.uid_inode(peer, local)
    finally:
        for s in (client, accepted, server):
            s.close()


def test_ipv6_loopback():
    server, client, accepted, peer = _pair("::1")
    try:
        found = asyncio.run(peeruid.uid_inode(peer[:2], accepted.getsockname()[:2]))
        assert found is not None and found[0] == os.getuid()
    finally:
        for s in (client, accepted, server):
            s.close()


def test_no_such_socket_is_none():
    server, client, accepted, _peer = _pair()
    local = accepted.getsockname()
    for s in (client, accepted, server):
        s.close()
    assert asyncio.run(peeruid.uid_inode(("127.0.0.1", 1), local)) is None


def test_without_netlink_the_proc_table_answers(monkeypatch):
    server, client, accepted, peer = _pair()
    real = socket.socket

    def no_netlink(family=-1, *args, **kwargs):
        if family == socket.AF_NETLINK:
            raise PermissionError("no netlink here")
        return real(family, *args, **kwargs)

    asked = []
    real_fallback = procnet.uid_inode

    def fallback(peer, local=None, proc="/proc"):
        asked.append(local)
        return real_fallback(peer, local, proc)

    monkeypatch.setattr(peeruid.socket, "socket", no_netlink)
    monkeypatch.setattr(procnet, "uid_inode", fallback)
    try:
        found = asyncio.run(peeruid.uid_inode(peer, accepted.getsockname()))
        assert found is not None and found[0] == os.getuid()
        assert asked == [None]  # /proc/net/tcp, in a thread
    finally:
        for s in (client, accepted, server):
            s.close()
