"""A client of the live view that runs as another local user (``hushdev``, uid 1001,
created if missing: tests/clients/display.py ``Account``), through ``setpriv``.

It opens ``count`` connections, sends ``data`` on each (or nothing: idle), reports
on one line of JSON how many the server closed and what it answered, and keeps its
sockets open until its stdin closes, so the owner can be served while they are held.
"""

from __future__ import annotations

import json
import shutil
import subprocess

from tests.clients.display import Account

CLIENT = r"""
import json, socket, sys, time
host, port, count, data = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), bytes.fromhex(sys.argv[4])
socks, closed, answered = [], 0, b""
for _ in range(count):
    s = socket.create_connection((host, port), timeout=5)
    try:
        if data:
            s.sendall(data)
        socks.append(s)
    except (ConnectionResetError, BrokenPipeError):  # closed by the server already
        closed += 1
deadline = time.monotonic() + 5
for s in socks:
    s.settimeout(max(0.05, deadline - time.monotonic()))
    try:
        got = s.recv(65536)
        answered += got
        closed += not got
    except ConnectionResetError:
        closed += 1
    except TimeoutError:
        pass
print(json.dumps({"uid": __import__("os").getuid(), "closed": closed, "answered": answered.decode("latin-1")}),
      flush=True)
sys.stdin.read()
"""


def other_user() -> Account:
    return Account.of("hushdev", 1001)


def start(host: str, port: int, count: int, data: bytes = b"") -> subprocess.Popen:
    """The client, running as hushdev; read its report with :func:`report`, end it with :func:`end`."""
    user = other_user()
    python = shutil.which("python3", path="/usr/bin:/bin") or "python3"  # the venv's may be root's alone
    argv = ["setpriv", "--reuid", str(user.uid), "--regid", str(user.gid), "--clear-groups",
            python, "-c", CLIENT, host, str(port), str(count), data.hex()]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd="/")


def report(proc: subprocess.Popen) -> dict:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"the other user's client said nothing: {proc.stderr.read() if proc.stderr else ''}")
    return json.loads(line)


def end(proc: subprocess.Popen) -> None:
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
