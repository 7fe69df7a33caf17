import os
import socket

from hush.daemon.procnet import owner, socket_entry


def test_owner_of_a_connection_is_this_process():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    client = socket.create_connection(server.getsockname())
    accepted, peer = server.accept()
    try:
        found = owner(peer)
        assert found.pid == os.getpid() and found.uid == os.getuid()
        assert found.name and found.exe and "python" in os.path.basename(found.exe)
        assert os.path.basename(found.exe) in found.names
    finally:
        for s in (client, accepted, server):
            s.close()


def test_ipv6_and_unknown():
    server = socket.socket(socket.AF_INET6)
    server.bind(("::1", 0))
    server.listen()
    client = socket.create_connection(server.getsockname()[:2])
    accepted, peer = server.accept()
    try:
        assert owner(peer[:2]).pid == os.getpid()
    finally:
        for s in (client, accepted, server):
            s.close()
    assert socket_entry("127.0.0.1", 1) is None
    assert owner(("not an ip", 1)) is None
