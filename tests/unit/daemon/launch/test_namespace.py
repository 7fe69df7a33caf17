"""daemon/launch/namespace.py: what `hush launch` does on the host, and the rules it installs."""

import signal
import subprocess
import sys

import pytest

from hush.daemon.launch import namespace as launch


def test_the_rules_send_tcp_and_dns_to_hush_and_reject_the_rest():
    rules = launch.nft_rules(4321, 5353)
    assert "th dport 53 redirect to :5353" in rules
    assert "meta l4proto tcp redirect to :4321" in rules
    # DNS first: a query to 127.0.0.53 or 8.8.8.8 goes to the stub alike
    assert rules.index("dport 53") < rules.index("127.0.0.0/8") < rules.index("redirect to :4321")
    assert "policy drop" in rules and rules.rstrip().splitlines()[-3].strip() == "reject"


def test_proxy_variables_are_not_passed_on(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:8102")
    monkeypatch.setenv("all_proxy", "socks5://127.0.0.1:1080")
    monkeypatch.setenv("KEEP_ME", "1")
    env = launch.launch_env()
    assert "HTTPS_PROXY" not in env and "all_proxy" not in env and env["KEEP_ME"] == "1"


def test_exit_status_is_the_commands():
    assert launch.exit_status(3 << 8) == 3
    assert launch.exit_status(signal.SIGKILL) == 128 + signal.SIGKILL


def test_without_a_daemon_nothing_starts(tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(ConnectionError, match="hush is not running"):
        launch.run(tmp_path, "x", ["touch", str(marker)])
    assert not marker.exists()


def test_the_cli_says_so_in_one_line_and_exits_7(tmp_path):
    marker = tmp_path / "ran"
    done = subprocess.run([sys.executable, "-m", "hush.daemon.cli", "launch", "--state-dir", str(tmp_path),
                           "--app", "x", "--", "touch", str(marker)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 7, done
    assert done.stderr.count("\n") == 1 and "hush launch: not started, hush is not running" in done.stderr
    assert not marker.exists()
    usage = subprocess.run([sys.executable, "-m", "hush.daemon.cli", "launch", "--app", "x"],
                           capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "name the command" in usage.stderr


def test_ip_and_nft_are_found_outside_a_users_path(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert launch.tool("nft") in ("/usr/sbin/nft", "/sbin/nft"), "nftables is not installed (.ci/run installs it)"
    assert launch.tool("ip") is not None, "iproute2 is not installed"


def test_a_port_taken_for_the_other_protocol_picks_new_ports(monkeypatch):
    """The DNS port is the kernel's pick for UDP; TCP may have that number taken (outside a
    namespace of its own: a flaky test once): new ports are picked, nothing is left open."""
    import errno
    import socket

    from hush.daemon.launch import namespace

    real = namespace._listen
    opened: list[socket.socket] = []
    refused = []

    def listen(family, kind, address, port):
        if kind == socket.SOCK_STREAM and port and not refused:
            refused.append(port)
            raise OSError(errno.EADDRINUSE, "Address already in use")
        sock = real(family, kind, address, port)
        opened.append(sock)
        return sock

    monkeypatch.setattr(namespace, "_listen", listen)
    socks = namespace.make_sockets()
    try:
        assert list(socks) == list(namespace.SOCKETS) and refused
        assert socks["dns_tcp4"].getsockname()[1] == socks["dns_udp4"].getsockname()[1]
        assert socks["tcp6"].getsockname()[1] == socks["tcp4"].getsockname()[1]
        assert all(s.fileno() == -1 for s in opened if s not in socks.values())  # the first try's, closed
    finally:
        for s in socks.values():
            s.close()


def test_every_directory_above_the_guarded_paths_is_bound_once_outermost_first():
    from hush.daemon.launch.namespace import _ancestors

    assert _ancestors(["/home/u/.config/hush/policies", "/home/u/.config/hush", "/home/u/.local/state/hush"]) == [
        "/home", "/home/u", "/home/u/.config", "/home/u/.local", "/home/u/.config/hush", "/home/u/.local/state"]
    assert _ancestors(["/etc"]) == []


def test_a_guarded_file_is_protected_by_its_directory_and_refused_directly_in_home(tmp_path):
    """An editor's save outside the launch (a new file renamed over the old) detaches a bind of the
    file itself in every other namespace: a guarded file's directory is made read-only, never the file."""
    from hush.daemon.launch.namespace import LaunchError, plan_guard

    home = tmp_path / "home"
    (home / ".config" / "hush").mkdir(parents=True)
    (home / "lists").mkdir()
    (home / "lists" / "allow.txt").write_text("a.test\n")
    (home / ".config" / "hush" / "config.yaml").write_text("")
    state = home / ".local" / "state" / "hush"
    state.mkdir(parents=True)
    shipped = tmp_path / "usr" / "share" / "hush"
    shipped.mkdir(parents=True)
    (shipped / "list.txt").write_text("")
    guard = {"readonly": [f"{home}/.config/hush", f"{home}/.config/hush/config.yaml", f"{home}/lists/allow.txt",
                          f"{shipped}/list.txt", f"{home}/gone.yaml"],
             "hide": [str(state)]}
    writable = lambda p: not p.startswith(str(tmp_path / "usr"))  # noqa: E731
    above, readonly, hide = plan_guard(guard, {str(home)}, writable)
    assert readonly == [f"{home}/lists", f"{home}/.config/hush"]  # directories only, outermost first
    assert hide == [str(state)]
    h, t = str(home), str(tmp_path)
    assert [p for p in above if p.startswith(t + "/")] == [  # outermost first; the shipped file's too
        h, f"{t}/usr", f"{h}/.config", f"{h}/.local", f"{t}/usr/share", f"{h}/.local/state", str(shipped)]
    assert f"{shipped}/list.txt" not in readonly and str(shipped) not in readonly  # shipped: no read-only bind

    (home / "p.yaml").write_text("")
    for path, why in ((home / "p.yaml", "your home directory"), (tmp_path / "q.yaml", "above your home")):
        path.write_text("")
        with pytest.raises(LaunchError, match=why) as e:
            plan_guard({"readonly": [str(path)]}, {str(home)}, writable)
        assert str(path) in str(e.value) and "directory of its own" in str(e.value) and "\n" not in str(e.value)
    # a file the user can write neither to nor in its directory, directly in home: nothing to bind, no refusal
    assert plan_guard({"readonly": [str(home / "p.yaml")]}, {str(home)}, lambda p: False)[1] == []
