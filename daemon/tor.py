"""hush's tor: launched and supervised with stem, or attached to a running one.

::

    manager = TorManager(TorConfig(), state_dir)
    await manager.start()        # returns at once; tor bootstraps in the background
    manager.ready                # bootstrapped 100% and a circuit established
    manager.tunnel_address       # tor's HTTPTunnelPort, e.g. ("127.0.0.1", 41234)
    await manager.newnym()
    await manager.stop()

stem is blocking and thread-based: every stem call runs in a thread
(``asyncio.to_thread``) and stem's event callbacks hand back to the event
loop with ``call_soon_threadsafe``.  A tor hush launched that dies is launched
again, with a backoff that doubles up to a minute; while it is down
``ready`` is False and every Tor-routed flow is refused at once.

Stopping (``stopping()`` as soon as the daemon is asked to stop, then
``stop()``) is quiet and final: a launch in progress is waited for and torn
down, nothing is restarted, tor's control connection closing is expected, and
the one line logged is ``tor stopped``.  The tor hush launches does not get
the terminal's Ctrl-C (SIGINT is blocked in it): hush stops it, after its own
flows.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from hush.daemon.torconfig import TorConfig, control_port_file, read_control_port

if TYPE_CHECKING:
    from stem.control import Controller

__all__ = ["TorConfig", "control_port_file", "read_control_port"]  # re-exported: where they lived

log = logging.getLogger("hush.tor")

_KV = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')

PROBE_TIMEOUT = 5.0


def probe(target: str, timeout: float = PROBE_TIMEOUT) -> None:
    """Does ``target`` answer like tor's control port?  stem reads without a
    timeout: pointed at something that never answers (a web server waiting for
    the rest of a request, hush's own listener), it would wait forever, and a
    stopping daemon with it.  So ask PROTOCOLINFO first, with a deadline.

    :raises stem.SocketError: if it does not answer, or not like tor
    """
    import stem

    family, address = ((socket.AF_UNIX, target) if target.startswith("/") else
                       (socket.AF_INET6 if ":" in target.rpartition(":")[0] else socket.AF_INET,
                        (target.rpartition(":")[0].strip("[]") or "127.0.0.1", int(target.rpartition(":")[2]))))
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            deadline = time.monotonic() + timeout  # for the whole exchange, not per read
            s.settimeout(timeout)
            s.connect(address)
            s.sendall(b"PROTOCOLINFO 1\r\n")
            reply = b""
            while b"\n" not in reply and len(reply) < 512:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                s.settimeout(left)
                chunk = s.recv(512)
                if not chunk:
                    break
                reply += chunk
    except TimeoutError as e:
        raise stem.SocketError(f"{target} did not answer within {timeout:.0f}s: not tor's control port?") from e
    except OSError as e:
        raise stem.SocketError(f"cannot reach {target}: {e.strerror or e}") from e
    if not reply.startswith((b"250-PROTOCOLINFO", b"250 PROTOCOLINFO", b"5")):  # 5xx: tor, refusing
        raise stem.SocketError(f"{target} does not answer like tor's control port")


def open_controller(target: str, password: str | None = None) -> Controller:
    """An authenticated stem Controller: how the daemon and ``hush tor`` both reach tor.

    :param target: ``HOST:PORT`` (no host: 127.0.0.1) or a unix socket's path
    :param password: the control password; without one, cookie or no authentication
    :raises stem.SocketError: if nothing answers at ``target``, or not like tor
    """
    from stem.control import Controller

    probe(target)
    if target.startswith("/"):
        controller = Controller.from_socket_file(target)
    else:
        host, _, port = target.rpartition(":")
        controller = Controller.from_port(address=host or "127.0.0.1", port=int(port))
    if password:
        controller.authenticate(password=password)
    else:
        controller.authenticate()
    return controller


@dataclasses.dataclass(frozen=True)
class Bootstrap:
    progress: int
    tag: str
    summary: str


def parse_bootstrap(text: str) -> Bootstrap:
    """``NOTICE BOOTSTRAP PROGRESS=50 TAG=loading_descriptors SUMMARY="Loading relay descriptors"``
    (a ``status/bootstrap-phase`` reply or a STATUS_CLIENT event) → Bootstrap."""
    fields = {k: v.strip('"') for k, v in _KV.findall(text)}
    try:
        progress = int(fields.get("PROGRESS", "0"))
    except ValueError:
        progress = 0
    return Bootstrap(progress, fields.get("TAG", ""), fields.get("SUMMARY", ""))


def torrc_dict(lines: tuple[str, ...] | list[str]) -> dict[str, str | list[str]]:
    """torrc lines → stem's config dict (repeated keys become lists)."""
    out: dict[str, str | list[str]] = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if key in out:
            prev = out[key]
            out[key] = (prev if isinstance(prev, list) else [prev]) + [value.strip()]
        else:
            out[key] = value.strip()
    return out


@dataclasses.dataclass
class Circuit:
    id: str
    path: tuple[tuple[str, str], ...]  # (fingerprint, nickname), guard first

    @property
    def exit(self) -> tuple[str, str] | None:
        return self.path[-1] if self.path else None


StreamCallback = Callable[[int, str, "Circuit | None"], None]


class TorManager:
    def __init__(self, config: TorConfig, state_dir: Path):
        self.config = config
        self.state_dir = Path(state_dir)
        self.state = "off"  # off | starting | bootstrapping | ready | down
        self.reason = "not started"
        self.bootstrap = Bootstrap(0, "", "")
        self.circuit_established = False
        self.tunnel_address: tuple[str, int] | None = None
        self.socks_address: tuple[str, int] | None = None
        self.control_address: str | None = None
        self.pid: int | None = None
        self.restarts = 0
        self.stream_callbacks: list[StreamCallback] = []
        self.state_callbacks: list[Callable[[], None]] = []  # on the loop, after state or progress changes
        self._circuits: dict[str, Circuit] = {}
        self._stream_ports: dict[str, int] = {}
        self._controller = None
        self._process: subprocess.Popen | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._lost: asyncio.Event | None = None
        self._stopping = False
        self._wake: asyncio.Event | None = None
        self._last_logged = -1

    # -- state ---------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return (
            self.state == "ready"
            and self.tunnel_address is not None
            and self._controller is not None
            and (self._process is None or self._process.poll() is None)
        )

    def status(self) -> dict:
        return {
            "state": self.state,
            "ready": self.ready,
            "reason": self.reason,
            "bootstrap": self.bootstrap.progress,
            "bootstrap_tag": self.bootstrap.tag,
            "bootstrap_summary": self.bootstrap.summary,
            "circuit_established": self.circuit_established,
            "mode": self.config.mode,
            "pid": self.pid,
            "control": self.control_address,
            "http_tunnel": _fmt(self.tunnel_address),
            "socks": _fmt(self.socks_address),
            "restarts": self.restarts,
        }

    def circuit(self, circ_id: str) -> Circuit | None:
        return self._circuits.get(circ_id)

    def _set(self, state: str, reason: str) -> None:
        if self._stopping and state != "off":
            return  # stopping: no more "down", "starting" or "bootstrapping" news
        changed = (state, reason) != (self.state, self.reason)
        if changed:
            (log.warning if state == "down" else log.info)("tor %s: %s", state, reason)
        self.state, self.reason = state, reason
        if changed:
            self._changed()

    def _changed(self) -> None:
        for callback in list(self.state_callbacks):
            try:
                callback()
            except Exception:
                log.exception("tor state callback failed")

    # -- life ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start supervising; returns at once."""
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._wake = asyncio.Event()
        self._set("starting", "launching tor" if self.config.mode == "launch" else "attaching")
        self._task = asyncio.ensure_future(self._supervise())

    def stopping(self) -> None:
        """The daemon is stopping (on the loop, synchronous): from now on tor's going away
        is expected, nothing is restarted and no state but ``off`` is reported."""
        self._stopping = True
        if self._lost is not None:
            self._lost.set()
        if self._wake is not None:
            self._wake.set()

    async def stop(self) -> None:
        """Stop supervising and stop tor (if hush launched it); logs ``tor stopped`` if it was started."""
        self.stopping()
        started = self.state != "off"
        if self._task:
            # A launch or attach in progress runs in a thread, which cannot be cancelled:
            # wait for it, so that the tor it starts is torn down here, not left behind.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        await asyncio.to_thread(self._teardown)
        self.state, self.reason = "off", "stopped"
        self._changed()
        if started:
            log.info("tor stopped")

    async def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping:
            self._lost = asyncio.Event()
            started = time.monotonic()
            try:
                await asyncio.to_thread(self._connect)
                await self._lost.wait()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._set("down", f"{type(e).__name__}: {e}")
            await asyncio.to_thread(self._teardown)
            if self._stopping:
                return
            if time.monotonic() - started > 60:
                backoff = 1.0  # it ran a while: start over with a short wait
            self.restarts += 1
            self._set("down", f"{self.reason}; retrying in {backoff:.0f}s")
            if self._wake is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), backoff)  # woken by stopping()
            if self._stopping:
                return
            backoff = min(backoff * 2, 60.0)
            self._set("starting", "launching tor again" if self.config.mode == "launch" else "attaching again")

    def _lose(self, reason: str) -> None:
        """From any thread: tor or its control connection is gone."""

        def lost():
            if self.state != "off" and not self._stopping:
                self._set("down", reason)
            if self._lost is not None:
                self._lost.set()

        self._to_loop(lost)

    def _to_loop(self, callback: Callable[..., None], *args) -> None:
        """From any thread: ``callback(*args)`` on the event loop (dropped before ``start``)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(callback, *args)

    # -- in a thread: stem ---------------------------------------------------------------

    def _connect(self) -> None:
        from stem.control import EventType

        controller = self._launch() if self.config.mode == "launch" else self._attach()
        self._controller = controller
        controller.add_status_listener(self._on_control_state)
        controller.add_event_listener(self._on_status_client, EventType.STATUS_CLIENT)
        controller.add_event_listener(self._on_circ, EventType.CIRC)
        controller.add_event_listener(self._on_stream, EventType.STREAM)
        self.tunnel_address = _first_listener(controller, "httptunnel")
        self.socks_address = _first_listener(controller, "socks")
        if self.tunnel_address is None:
            raise RuntimeError("tor has no HTTPTunnelPort (add 'HTTPTunnelPort auto' to its torrc)")
        for circ in controller.get_circuits([]):
            self._circuits[circ.id] = Circuit(circ.id, tuple(circ.path))
        self._refresh(controller)

    def _launch(self) -> Controller:
        import stem.process

        binary = shutil.which(self.config.binary) or self.config.binary
        port_file = control_port_file(self.state_dir)
        data = port_file.parent
        data.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(data, 0o700)
        port_file.unlink(missing_ok=True)
        # A stream tor cannot attach (e.g. the exit died while the client still has its
        # circuits) waits SocksTimeout, 120 s by default: previews should fail sooner.
        config = {"SocksTimeout": "20", **torrc_dict(self.config.torrc)}
        config.update({
            "DataDirectory": str(data),
            "ControlPort": "auto",
            "ControlPortWriteToFile": str(port_file),
            "ControlPortFileGroupReadable": "0",
            "CookieAuthentication": "1",
            "SocksPort": "127.0.0.1:auto",
            "HTTPTunnelPort": "127.0.0.1:auto",
        })
        # completion_percent=0: return as soon as tor runs; bootstrap progress
        # then comes as events.  (stem's own timeout needs the main thread.)
        # SIGINT blocked in this thread while tor is started: tor inherits the mask, so
        # a Ctrl-C in hush's terminal stops hush, which then stops tor after its flows.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self._process = stem.process.launch_tor_with_config(
                config, tor_cmd=binary, completion_percent=0, take_ownership=True, timeout=None)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self.pid = self._process.pid
        watcher = _thread(self._watch_process, self._process)
        watcher.start()
        for _ in range(100):
            if port_file.exists() and port_file.read_text().strip():
                break
            time.sleep(0.05)
        self.control_address = read_control_port(port_file)
        controller = open_controller(self.control_address)
        self._set("bootstrapping", f"tor {self.pid} started")
        return controller

    def _attach(self) -> Controller:
        target = self.config.attach_to
        controller = open_controller(target, self.config.password)
        self.control_address = target
        self.pid = int(controller.get_info("process/pid", "0")) or None
        self._set("bootstrapping", f"attached to {target}")
        return controller

    def _watch_process(self, process: subprocess.Popen) -> None:
        code = process.wait()
        if not self._stopping:
            self._lose(f"tor {process.pid} exited with {code}")

    def _teardown(self) -> None:
        controller, self._controller = self._controller, None
        process, self._process = self._process, None
        self.tunnel_address = self.socks_address = None
        self.circuit_established = False
        if controller is not None:
            with contextlib.suppress(Exception):
                controller.close()
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()

    def _refresh(self, controller) -> None:
        phase = controller.get_info("status/bootstrap-phase", "")
        established = controller.get_info("status/circuit-established", "0") == "1"
        self._to_loop(self._update, parse_bootstrap(phase), established)

    # -- stem callbacks (stem's threads) → the loop -------------------------------------

    def _on_control_state(self, controller, state, timestamp) -> None:
        from stem.control import State

        if state == State.CLOSED and not self._stopping:
            self._lose("the control connection to tor closed")

    def _on_status_client(self, event) -> None:
        action = getattr(event, "action", "")
        if action == "BOOTSTRAP":
            args = event.keyword_args
            phase = Bootstrap(int(args.get("PROGRESS", 0)), args.get("TAG", ""), args.get("SUMMARY", ""))
            self._to_loop(self._update, phase, None)
        elif action in ("CIRCUIT_ESTABLISHED", "CIRCUIT_NOT_ESTABLISHED"):
            self._to_loop(self._update, None, action == "CIRCUIT_ESTABLISHED")

    def _on_circ(self, event) -> None:
        self._to_loop(self.circ_event, str(event.id), str(event.status), tuple(event.path))

    def _on_stream(self, event) -> None:
        self._to_loop(
            self.stream_event, str(event.id), str(event.status), event.circ_id, event.source_port)

    # -- on the loop -------------------------------------------------------------------

    def _update(self, phase: Bootstrap | None, established: bool | None) -> None:
        if self._stopping:
            return  # progress of a tor being stopped is nobody's news
        if phase is not None and phase.progress >= self.bootstrap.progress:
            self.bootstrap = phase
            if phase.progress != self._last_logged:
                self._last_logged = phase.progress
                log.info("tor bootstrapped %d%% (%s): %s", phase.progress, phase.tag, phase.summary)
                self._changed()
        if established is not None:
            self.circuit_established = established
        if self._controller is None or self.state in ("off", "down"):
            return
        if self.bootstrap.progress >= 100 and self.circuit_established:
            self._set("ready", "bootstrapped, circuits established")
        elif self.state == "ready":
            self._set("bootstrapping", "no circuit established")

    def circ_event(self, circ_id: str, status: str, path: tuple) -> None:
        if status in ("CLOSED", "FAILED"):
            self._circuits.pop(circ_id, None)
        else:
            self._circuits[circ_id] = Circuit(circ_id, tuple((fp, nick) for fp, nick in path))

    def stream_event(self, stream_id: str, status: str, circ_id: str | None, source_port: int | None) -> None:
        """tor names our end of a stream (SOURCE_ADDR) only when it is NEW, and
        its circuit once it is attached: match them by stream id."""
        if status == "NEW" and source_port:
            self._stream_ports[stream_id] = int(source_port)
            if len(self._stream_ports) > 10000:  # streams that never succeeded
                self._stream_ports.pop(next(iter(self._stream_ports)))
            return
        if status in ("CLOSED", "FAILED", "DETACHED"):
            self._stream_ports.pop(stream_id, None)
            return
        if status != "SUCCEEDED" or not circ_id:
            return
        source_port = self._stream_ports.pop(stream_id, None)
        if source_port is None:
            return
        circuit = self._circuits.get(str(circ_id))
        for callback in list(self.stream_callbacks):
            try:
                callback(source_port, str(circ_id), circuit)
            except Exception:
                log.exception("stream callback failed")

    async def newnym(self) -> None:
        """SIGNAL NEWNYM: new circuits for new streams (tor rate-limits it to one per 10 s)."""
        from stem import Signal

        controller = self._controller
        if controller is None:
            raise RuntimeError(f"tor is not running ({self.reason})")
        await asyncio.to_thread(controller.signal, Signal.NEWNYM)


def _first_listener(controller, kind: str) -> tuple[str, int] | None:
    try:
        listeners = controller.get_listeners(kind, [])
    except Exception:
        listeners = []
    for host, port in listeners:
        return (host, int(port))
    return None


def _thread(target, *args):
    import threading

    return threading.Thread(target=target, args=args, daemon=True, name="hush-tor-watch")


def _fmt(address: tuple[str, int] | None) -> str | None:
    return f"{address[0]}:{address[1]}" if address else None
