"""The control socket: one line in, one JSON line out; owner-only; `hush status` is its client."""

import asyncio
import json
import logging
import os
import socket
import stat

import pytest

from hush.daemon.control import (
    AlreadyRunning,
    ControlServer,
    StateLock,
    holder,
    lock_path,
    locked,
    request,
    socket_path,
)


def serving(state_dir, commands, client):
    """Start a control server in ``state_dir``, run the blocking ``client()`` against it, stop it."""
    async def main():
        server = ControlServer(socket_path(state_dir), commands)
        assert await server.start()
        try:
            return await asyncio.to_thread(client)
        finally:
            await server.stop()

    return asyncio.run(main())


def test_a_command_is_answered_with_its_json(tmp_path):
    calls = []

    def status():
        calls.append("status")
        return {"running": True, "held": 3}

    reply = serving(tmp_path, {"status": status}, lambda: request(tmp_path))
    assert reply == {"running": True, "held": 3} and calls == ["status"]
    assert not socket_path(tmp_path).exists()  # stop() removes it


def test_an_unknown_command_names_the_known_ones(tmp_path):
    commands = {"status": dict, "newnym": dict}
    reply = serving(tmp_path, commands, lambda: request(tmp_path, "reboot"))
    assert reply == {"error": "unknown command; try: status, newnym"}


def test_a_large_reply_arrives_whole(tmp_path):
    big = {"rows": ["x" * 100] * 5000}  # ~0.5 MB: many reads on the client's side
    assert serving(tmp_path, {"status": lambda: big}, lambda: request(tmp_path)) == big


def test_the_socket_is_owner_only_and_a_stale_one_is_replaced(tmp_path):
    path = socket_path(tmp_path)
    path.write_text("left by a daemon that was killed")

    def check():
        mode = os.stat(path).st_mode
        return stat.S_ISSOCK(mode), stat.S_IMODE(mode), request(tmp_path)

    is_socket, mode, reply = serving(tmp_path, {"status": lambda: {"ok": 1}}, check)
    assert is_socket and mode == 0o600 and reply == {"ok": 1}


def test_a_command_that_raises_is_logged_and_the_server_goes_on(tmp_path, caplog):
    def broken():
        raise RuntimeError("boom")

    def client():
        with socket.socket(socket.AF_UNIX) as s:  # the raw protocol: the reply is nothing, then EOF
            s.settimeout(10)
            s.connect(str(socket_path(tmp_path)))
            s.sendall(b"broken\n")
            first = s.recv(100)
        return first, request(tmp_path, "status")

    with caplog.at_level(logging.ERROR, logger="hush"):
        first, after = serving(tmp_path, {"broken": broken, "status": lambda: {"ok": 1}}, client)
    assert first == b"" and after == {"ok": 1}
    assert "control socket request failed" in caplog.text and "boom" in caplog.text


def test_a_client_that_sends_nothing_and_leaves_does_not_stop_the_server(tmp_path):
    def client():
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(socket_path(tmp_path)))  # and close at once, without a line
        return request(tmp_path)

    assert serving(tmp_path, {"status": lambda: {"ok": 1}}, client) == {"ok": 1}


def test_a_path_too_long_for_a_unix_socket_is_refused_with_a_warning(tmp_path, caplog):
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    server = ControlServer(socket_path(deep), {})
    with caplog.at_level(logging.WARNING, logger="hush"):
        assert asyncio.run(server.start()) is False
    assert "longer than 107 bytes" in caplog.text and not socket_path(deep).exists()
    asyncio.run(server.stop())  # nothing started: nothing to stop, no error


def test_request_without_a_daemon_says_so(tmp_path):
    with pytest.raises(ConnectionError, match="hush is not running with --state-dir"):
        request(tmp_path)
    socket_path(tmp_path).touch()  # a file, but nobody listening
    with pytest.raises(ConnectionError):
        request(tmp_path)


def test_the_reply_is_one_json_line(tmp_path):
    def client():
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(socket_path(tmp_path)))
            s.sendall(b"status\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return data

    data = serving(tmp_path, {"status": lambda: {"a": [1, 2], "b": None}}, client)
    assert data.endswith(b"\n") and data.count(b"\n") == 1 and json.loads(data) == {"a": [1, 2], "b": None}


def test_a_command_may_answer_later(tmp_path):
    async def reload():
        await asyncio.sleep(0)
        return {"ok": True}

    assert serving(tmp_path, {"reload": reload}, lambda: request(tmp_path, "reload")) == {"ok": True}


def test_the_state_lock_is_exclusive_and_names_its_holder(tmp_path):
    first = StateLock(tmp_path)
    first.acquire()
    try:
        assert lock_path(tmp_path).read_text() == f"{os.getpid()}\n"
        assert stat.S_IMODE(os.stat(lock_path(tmp_path)).st_mode) == 0o600
        assert locked(tmp_path)
        with pytest.raises(AlreadyRunning) as e:
            StateLock(tmp_path).acquire()  # flock: another open file description, refused
        assert str(e.value) == f"hush is already running with this state dir (pid {os.getpid()})"
    finally:
        first.release()
    assert not locked(tmp_path)
    second = StateLock(tmp_path)
    second.acquire()  # free again, and the pid written anew
    second.release()


def test_no_lock_file_is_not_locked(tmp_path):
    assert not locked(tmp_path)


def test_the_holder_is_read_when_written_or_unknown(tmp_path):
    path = lock_path(tmp_path)
    path.write_text("")
    assert holder(path, wait=0) is None
    path.write_text("4242\n")
    assert holder(path, wait=0) == 4242


def test_stop_without_a_daemon_says_so(tmp_path):
    from hush.daemon.control import stop

    with pytest.raises(ConnectionError, match="hush is not running with --state-dir"):
        stop(tmp_path)


def test_stop_asks_and_waits_until_the_lock_is_released(tmp_path):
    from hush.daemon.control import stop

    lock = StateLock(tmp_path)
    lock.acquire()

    def stopping():
        asyncio.get_running_loop().call_later(0.05, lock.release)  # the daemon ends a little later
        return {"stopping": True, "pid": 4242}

    assert serving(tmp_path, {"stop": stopping}, lambda: stop(tmp_path)) == 4242
    assert not locked(tmp_path)
