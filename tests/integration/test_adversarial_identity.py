"""Issue 11, class 12: on a shared listener the app is the executable, not a name
the process gives itself.

Two policies share one listener: ``strict`` (identify ``strictcli``, blocks
with 451) and ``lax`` (identify ``laxcli``, allows).  The clients are copies
of the Python interpreter named ``strictcli`` and ``laxcli`` running a small
script, so each can spoof what a process can spoof: its ``comm``
(``prctl(PR_SET_NAME)``), the name it was started under (a symlink), and a
socket it shares with another app's process.  hush identifies by
``/proc/PID/exe`` of every process holding the socket; when they disagree it
fails closed.  Each test checks the origin's accepts and the audit.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from .harness import free_port

pytestmark = pytest.mark.integration

CLIENT = textwrap.dedent("""\
    import ctypes, os, socket, subprocess, sys

    proxy_port, url, comm, share_with = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    if comm != "-":
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_NAME = 15
        assert libc.prctl(PR_SET_NAME, comm.encode(), 0, 0, 0) == 0
        assert open("/proc/self/comm").read().strip() == comm[:15]
    s = socket.socket()
    child = None
    if share_with != "-":  # another executable holds the same socket (inherited before connect)
        child = subprocess.Popen([share_with, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE,
                                 pass_fds=[s.fileno()])
    s.connect(("127.0.0.1", proxy_port))
    host = url.split("/")[2]
    s.sendall(f"GET {url} HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n".encode())
    head = b""
    while b"\\r\\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    s.close()
    if child is not None:
        child.stdin.close()
        child.wait()
    print(head.split(b" ")[1].decode() if head.startswith(b"HTTP/") else "closed")
""")


@pytest.fixture
def clients(tmp_path):
    """Executables ``strictcli``, ``laxcli`` and ``othercli`` (copies of this Python)."""
    real = os.path.realpath(sys.executable)
    out = {}
    for name in ("strictcli", "laxcli", "othercli"):
        path = tmp_path / "bin" / name
        path.parent.mkdir(exist_ok=True)
        shutil.copy(real, path)
        out[name] = path
    (tmp_path / "client.py").write_text(CLIENT)
    out["script"] = tmp_path / "client.py"
    return out


@pytest.fixture
def shared(hush):
    port = free_port()
    h = hush({
        "strict": f"app: strict\nlisten: {port}\nidentify: {{process: [strictcli]}}\n"
                  "default: {action: block, status: 451}\n",
        "lax": f"app: lax\nlisten: {port}\nidentify: {{process: [laxcli]}}\ndefault: allow\n",
    })
    h.port = port
    return h


def run(clients, exe, h, url, comm="-", share_with="-", argv0=None):
    res = subprocess.run([str(argv0 or clients[exe]), str(clients["script"]), str(h.port), url, comm,
                          str(clients[share_with]) if share_with != "-" else "-"],
                         capture_output=True, timeout=60, env={"PATH": os.environ.get("PATH", "")})
    assert res.returncode == 0, res.stderr
    return res.stdout.decode().strip()


def test_the_real_apps_are_told_apart(shared, clients, origin):
    assert run(clients, "laxcli", shared, origin.url("/lax")) == "200"
    assert run(clients, "strictcli", shared, origin.url("/strict")) == "451"
    assert run(clients, "othercli", shared, origin.url("/other")) == "502"  # named by no policy: fail closed
    assert [r.path for r in origin.requests] == ["/lax"] and len(origin.accepts) == 1
    shared.stop()
    rows = [(r["app"], r["decision"], r["process"], os.path.basename(r["exe"] or "")) for r in shared.audit()]
    assert rows == [("lax", "allow", "laxcli", "laxcli"), ("strict", "block", "strictcli", "strictcli"),
                    (None, "block", "othercli", "othercli")]


@pytest.mark.parametrize("comm", ["laxcli", "laxcli\u200b", "lax"])
def test_a_process_that_renames_itself_is_still_its_executable(shared, clients, origin, comm):
    # prctl(PR_SET_NAME): /proc/PID/comm now says laxcli; the executable is strictcli
    assert run(clients, "strictcli", shared, origin.url("/spoofed"), comm=comm) == "451"
    assert origin.accepts == []
    shared.stop()
    [row] = shared.audit()
    assert (row["app"], row["decision"], row["process"]) == ("strict", "block", "strictcli")
    assert row["exe"] == str(clients["strictcli"])


def test_an_unnamed_process_that_renames_itself_is_refused(shared, clients, origin):
    assert run(clients, "othercli", shared, origin.url("/spoofed"), comm="laxcli") == "502"
    assert origin.accepts == []
    shared.stop()
    [row] = shared.audit()
    assert (row["app"], row["decision"], row["process"]) == (None, "block", "othercli")
    assert row["note"].endswith(f"{clients['othercli']} is named by no policy"), row["note"]


def test_a_symlink_named_after_the_lax_app_is_its_target(shared, clients, origin, tmp_path):
    # started as .../laxcli -> strictcli: comm is the link's name, exe the file it runs
    link = tmp_path / "links" / "laxcli"
    link.parent.mkdir()
    os.symlink(clients["strictcli"], link)
    assert run(clients, "strictcli", shared, origin.url("/linked"), argv0=link) == "451"
    assert origin.accepts == []
    shared.stop()
    [row] = shared.audit()
    assert (row["app"], row["process"], row["exe"]) == ("strict", "strictcli", str(clients["strictcli"]))


@pytest.mark.parametrize("exe, share_with", [
    ("strictcli", "laxcli"),  # the strict app hands its socket to a lax process
    ("laxcli", "strictcli"),  # ... or the other way round: which one writes is not known
    ("laxcli", "othercli"),  # a process no policy names holds the lax app's socket
])
def test_a_socket_held_by_processes_of_two_apps_fails_closed(shared, clients, origin, exe, share_with):
    assert run(clients, exe, shared, origin.url("/shared"), share_with=share_with) == "502"
    assert origin.accepts == []
    shared.stop()
    [row] = shared.audit()
    assert (row["app"], row["decision"], row["ip_exposed"]) == (None, "block", 0)
    assert {os.path.basename(p) for p in row["exe"].split(", ")} == {exe, share_with}
    assert row["note"].startswith("fail-closed: no policy identifies the process on this shared listener: "
                                  "the socket is held by processes of different apps"), row["note"]


def test_two_processes_of_the_same_app_may_share_a_socket(shared, clients, origin):
    assert run(clients, "laxcli", shared, origin.url("/both"), share_with="laxcli") == "200"
    assert [r.path for r in origin.requests] == ["/both"]
    shared.stop()
    [row] = shared.audit()
    assert (row["app"], row["decision"], row["process"]) == ("lax", "allow", "laxcli")
