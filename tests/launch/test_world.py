"""The harness of the launch tests proves itself: the world is closed, names
resolve there as the tests say, origins count, hush runs there as nobody and its
flows reach the origins (direct from hush, or from the private network's exit)."""

import pytest

from .world import ALLOWED_IP, ALLOWED_IP6, BLOCKED_IP, CURL_ARGS, NOBODY, PYTHON, TOR_NAME, tor_config

pytestmark = pytest.mark.integration


def test_world_is_closed(world):
    links = world.run(["ip", "-o", "link"], capture_output=True, text=True)
    assert [link.split(":")[1].strip() for link in links.stdout.splitlines()] == ["lo"]
    routes = world.run(["ip", "route", "get", "1.1.1.1"], capture_output=True, text=True)
    assert routes.returncode != 0  # no route out of the world
    res = world.run(["id", "-u"], capture_output=True, text=True)
    assert res.stdout.strip() == str(NOBODY)


def test_names_resolve_through_the_worlds_hosts_and_dns(world):
    code = ("import socket, sys\n"
            "for n in sys.argv[1:]:\n"
            "    try: print(n, socket.gethostbyname(n))\n"
            "    except OSError as e: print(n, 'error')\n")
    res = world.run([PYTHON, "-c", code, "allowed.test", "dns-allowed.test", TOR_NAME], capture_output=True,
                    text=True)
    assert res.stdout.splitlines() == ["allowed.test 203.0.113.10", "dns-allowed.test 203.0.113.10",
                                       f"{TOR_NAME} error"], res.stderr
    assert "dns-allowed.test" in world.dns.queries and TOR_NAME in world.dns.queries


def test_origins_count_accepts_and_owners(world, far):
    v4, v6 = far.origin(ALLOWED_IP), far.origin(ALLOWED_IP6)
    for url in (v4.url("/a", host="allowed.test"), v6.url("/b")):
        res = world.run(["curl", *CURL_ARGS, url], capture_output=True)
        assert res.returncode == 0, res.stderr
    assert v4.paths == ["/a"] and v6.paths == ["/b"]
    assert len(v4.accepts) == len(v6.accepts) == 1
    assert v4.owners[0] and v6.owners[0]  # curl, found in the world's tables
    udp = far.udp(ALLOWED_IP, 9999)
    world.run([PYTHON, "-c", f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
                             f".sendto(b'x', ('{ALLOWED_IP}', 9999))"])
    from .world import until
    until(lambda: udp.datagrams, 10, "the sink sees a datagram sent in the world")


def test_hush_runs_as_nobody_in_the_world(world, far, whush):
    allowed, blocked = far.origin(ALLOWED_IP), far.origin(BLOCKED_IP)
    port = world.free_port()
    h = whush({"p": f"app: p\nlisten: {port}\ndefault: block\n"
                    "rules:\n  - {match: {host: allowed.test}, action: allow}\n"})
    ok = world.run(["curl", *CURL_ARGS, "-x", f"http://127.0.0.1:{port}", allowed.url("/x", host="allowed.test")],
                   capture_output=True)
    assert ok.returncode == 0, ok.stderr
    no = world.run(["curl", *CURL_ARGS, "-x", f"http://127.0.0.1:{port}", blocked.url("/y", host="blocked.test")],
                   capture_output=True)
    assert no.stdout.startswith(b"Blocked by hush"), no
    assert allowed.owners == [h.pid] and blocked.accepts == []
    assert "blocked.test" not in world.dns.queries  # a blocked name is not resolved
    st = world.run(["stat", "-c", "%u %a", str(h.state)], capture_output=True, text=True)
    assert st.stdout.split() == [str(NOBODY), "700"]


def test_tor_lab_lives_in_the_world(world, far, whush, world_torlab, world_exit_dns):
    origin = far.origin("127.0.0.1")
    port = world.free_port()
    h = whush({"t": f"app: t\nlisten: {port}\ndefault: block\n"
                    f"rules:\n  - {{match: {{host: {TOR_NAME}}}, action: tor}}\n"}, config=tor_config(world_torlab))
    h.wait_tor_ready()
    res = world.run(["curl", *CURL_ARGS, "-x", f"http://127.0.0.1:{port}", origin.url("/t", host=TOR_NAME)],
                    capture_output=True)
    assert res.returncode == 0, (res.stderr, h.log)
    assert origin.owners == [world_torlab.exit_pid]
    assert TOR_NAME in world_exit_dns.queries and TOR_NAME not in world.dns.queries
