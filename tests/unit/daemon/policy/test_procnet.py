import os
import socket

from hush.daemon.policy.procnet import owner, socket_entry


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


def test_sock_diag_agrees_with_proc():
    from hush.daemon.policy.procnet import sock_diag

    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        server = socket.socket(family)
        server.bind((host, 0))
        server.listen()
        client = socket.create_connection(server.getsockname()[:2])
        accepted, peer = server.accept()
        try:
            local = accepted.getsockname()[:2]
            assert sock_diag(peer[:2], local) == socket_entry(peer[0], peer[1])
            assert sock_diag(peer[:2], local)[0] == os.getuid()
            assert sock_diag((host, 1), local) is None  # no such socket
        finally:
            for s in (client, accepted, server):
                s.close()


def test_a_time_wait_leftover_on_the_same_port_is_skipped(tmp_path):
    (tmp_path / "net").mkdir()
    head = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    time_wait = "   0: 0100007F:9C40 0100007F:1F90 06 00000000:00000000 03:00000F1D 00000000     0        0 0 3\n"
    live = "   1: 0100007F:9C40 0100007F:1F91 01 00000000:00000000 00:00000000 00000000  1000        0 424242 1\n"
    (tmp_path / "net" / "tcp").write_text(head + time_wait + live)
    assert socket_entry("127.0.0.1", 0x9C40, proc=str(tmp_path)) == (1000, 424242)
    (tmp_path / "net" / "tcp").write_text(head + time_wait)
    assert socket_entry("127.0.0.1", 0x9C40, proc=str(tmp_path)) is None


def test_every_process_holding_the_socket_is_found():
    """A socket inherited by a child (or passed over a unix socket) is held by
    two processes: both are reported, not whichever /proc lists first."""
    import subprocess
    import sys

    from hush.daemon.policy.procnet import owner

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    client = socket.create_connection(server.getsockname())
    accepted, peer = server.accept()
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                             pass_fds=[client.fileno()])
    try:
        found = owner(peer)
        assert sorted(p.pid for p in found.holders) == sorted([os.getpid(), child.pid])
        assert all(p.exe and p.exe_name for p in found.holders)
    finally:
        child.stdin.close()
        child.wait()
        for s in (client, accepted, server):
            s.close()


def test_exe_name_ignores_comm_and_the_deleted_mark():
    from hush.daemon.policy.procnet import Owner, Process

    p = Process(1, "laxcli", "/opt/strict/strictcli (deleted)")
    assert p.exe_name == "strictcli"
    assert Owner(1, 0, "laxcli", p.exe, (p,)).names == {"strictcli"}
    assert Owner(1, 0, "laxcli", None, (Process(1, "laxcli", None),)).names == set()
