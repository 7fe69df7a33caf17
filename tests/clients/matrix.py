"""A Matrix homeserver (Synapse) on loopback and a real Matrix client (NeoChat
23.01, Debian's ``neochat``) driven through hush, for tests/clients/test_neochat.py.

Usage (what the test's fixtures do)::

    world = World(tmp)                       # names, trust store, mount namespace recipe
    synapse = Synapse(world)                 # sqlite, url previews on, log to synapse.log
    alice = synapse.register("alice")        # via the admin shared secret
    hush = HushIn(world, policies, config)   # ``hush run`` inside the namespace
    world.trust(hush.ca_cert)                # NeoChat must trust hush's CA (Qt reads /etc/ssl/certs)
    display = Display(size=NeoChat.SCREEN).start()  # tests/clients/display.py
    neochat = NeoChat(world, display, proxy_port)    # or launch=hush.state: under hush launch

Facts this is built on (measured here, issue 15):

- Qt never proxies ``localhost`` or loopback literals, so the homeserver has a
  name.  Every process of the test that needs it (Synapse, hush, NeoChat) runs
  in its own private mount namespace (``unshare -m``, as root) whose
  ``/etc/hosts`` names the homeserver — and every prefix of its name, because
  NeoChat looks the server of the Matrix ID up at each keystroke (``https://h/``,
  ``https://hs/``, …), so without hush's debounce each of them would reach the
  homeserver and be counted there.
- Qt ignores ``SSL_CERT_FILE``: the namespace's ``/etc/ssl/certs`` is a
  directory of the test's own holding the test CA (Synapse's and the test
  site's certificates) and, once hush has made it, hush's CA.
- NeoChat's proxy is ``[NetworkProxy]`` in ``~/.config/neochatrc``
  (``ProxyType=1`` is HTTP).  It runs as root here (it does not refuse), under
  Xvfb and a private session bus; it keeps its access token in the Secret
  Service, so an unlocked gnome-keyring of its own runs beside it.
- The homeserver's ``server_name`` has no port, so the client finds it at
  ``https://NAME/.well-known/matrix/client``: Synapse listens with TLS on port
  443 of a loopback address of its own (root binds it), and a second, plain
  listener on 127.0.0.1 serves the test's own client-server API calls.

Everything runs on 127.0.0.0/8; the namespace only changes what these processes
see in /etc, never the host's files.  ``hush launch --app element -- neochat``
makes the proxy setting unnecessary, but hush itself still resolves the
homeserver's name (the launch's fake DNS hands it the name, not an address), so
the hosts file and the trust store are needed either way:
``NeoChat(..., launch=state_dir)`` runs it so.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import trustme
from PIL import Image, ImageGrab  # Pillow: a dependency of matrix-synapse[url-preview]

from tests.clients.display import Display
from tests.integration.harness import Hush, free_port, wait_for

SERVER_NAME = "hs.hushtest"
SITE_NAME = "site.hushtest"  # the test site whose link is sent into the room
PASSWORD = "correct horse battery staple"
SYNAPSE = [sys.executable, "-m", "synapse.app.homeserver"]
TOKEN = "HUSH_TEST_NEOCHAT"


def prefixes(name: str) -> list[str]:
    """Every host NeoChat asks while the server part of a Matrix ID is typed:
    ``h``, ``hs``, ``hs.``, ``hs.h``, … (a trailing dot is the same host)."""
    return sorted({name[:i].rstrip(".") for i in range(1, len(name) + 1)} - {""}, key=len)


def free_loopback_443() -> str:
    """A 127.x.y.z whose port 443 is free (Synapse's TLS listener; the test runs as root)."""
    for _ in range(50):
        addr = f"127.{random.randint(64, 250)}.{random.randint(1, 250)}.{random.randint(2, 250)}"
        with socket.socket() as s:
            try:
                s.bind((addr, 443))
            except OSError:
                continue
            return addr
    raise AssertionError("no loopback address with a free port 443")


class World:
    """The names and the trust store the test's processes see: a hosts file and
    a certificate directory, bind-mounted over /etc/hosts and /etc/ssl/certs in
    a private mount namespace of each process started through :meth:`wrap`."""

    def __init__(self, tmp: Path):
        if os.geteuid() != 0:
            raise AssertionError("the NeoChat test needs root: unshare -m and port 443 (CI runs as root)")
        self.dir = tmp
        self.address = free_loopback_443()
        self.ca = trustme.CA()
        self.ca_file = tmp / "test-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.hosts = tmp / "hosts"
        lines = ["127.0.0.1 localhost", "::1 localhost", f"127.0.0.1 {SITE_NAME}"]
        lines += [f"{self.address} {name}" for name in prefixes(SERVER_NAME)]
        self.hosts.write_text("\n".join(lines) + "\n")
        self.certs = tmp / "certs"
        self.certs.mkdir()
        self.trust(self.ca_file)

    def trust(self, pem: Path) -> None:
        """Add a CA to the namespace's /etc/ssl/certs (live: the directory is bind-mounted)."""
        name = hashlib.sha256(pem.read_bytes()).hexdigest()[:12]
        shutil.copy(pem, self.certs / f"{name}.pem")
        subprocess.run(["openssl", "rehash", str(self.certs)], check=True, capture_output=True, timeout=30)
        bundle = b"".join(p.read_bytes() for p in sorted(self.certs.glob("*.pem")))
        (self.certs / "ca-certificates.crt").write_bytes(bundle)

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run in a private mount namespace with the world's /etc/hosts and /etc/ssl/certs
        (``unshare`` and ``sh`` exec it: the process started is ``argv`` itself)."""
        script = 'mount --bind "$1" /etc/hosts && mount --bind "$2" /etc/ssl/certs && shift 2 && exec "$@"'
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh",
                str(self.hosts), str(self.certs), *argv]

    def tls_context(self, *names: str) -> ssl.SSLContext:
        """A server context with a certificate for ``names``, from the test CA."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(*names).configure_cert(ctx)
        return ctx


def stop_group(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM to the process group ``proc`` leads, SIGKILL if it has not gone within ``timeout``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError):  # whatever of the group is left (dbus-daemon, children)
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


class Synapse:
    """Synapse in the world's namespace: TLS on ``world.address:443`` (the name
    clients use), plain HTTP on 127.0.0.1 for the test's own API calls; sqlite;
    url previews on, with the test site's loopback address allowed; its log in
    ``synapse.log``, every request logged (``Processed request: … "GET /path"``)."""

    def __init__(self, world: World):
        self.world = world
        self.dir = world.dir / "synapse"
        self.dir.mkdir()
        self.port = free_port()
        self.secret = hashlib.sha256(os.urandom(16)).hexdigest()
        self.log_path = self.dir / "synapse.log"
        cert = world.ca.issue_cert(*prefixes(SERVER_NAME), world.address)
        cert.cert_chain_pems[0].write_to_path(str(self.dir / "tls.crt"))
        for pem in cert.cert_chain_pems[1:]:
            pem.write_to_path(str(self.dir / "tls.crt"), append=True)
        cert.private_key_pem.write_to_path(str(self.dir / "tls.key"))
        (self.dir / "log.yaml").write_text(textwrap.dedent(f"""\
            version: 1
            formatters:
              precise: {{format: '%(asctime)s - %(name)s - %(levelname)s - %(request)s - %(message)s'}}
            handlers:
              file: {{class: logging.FileHandler, formatter: precise, filename: {self.log_path}}}
            loggers:
              synapse.storage.SQL: {{level: WARNING}}
            root: {{level: INFO, handlers: [file]}}
            disable_existing_loggers: false
            """))
        many = {"per_second": 1000, "burst_count": 1000}
        config = {
            "server_name": SERVER_NAME,
            "public_baseurl": f"https://{SERVER_NAME}/",
            "serve_client_wellknown": True,
            "pid_file": str(self.dir / "homeserver.pid"),
            "listeners": [
                {"port": 443, "bind_addresses": [world.address], "type": "http", "tls": True,
                 "resources": [{"names": ["client", "media"], "compress": False}]},
                {"port": self.port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
                 "resources": [{"names": ["client", "media"], "compress": False}]},
            ],
            "tls_certificate_path": str(self.dir / "tls.crt"),
            "tls_private_key_path": str(self.dir / "tls.key"),
            "database": {"name": "sqlite3", "args": {"database": str(self.dir / "homeserver.db")}},
            "log_config": str(self.dir / "log.yaml"),
            "media_store_path": str(self.dir / "media"),
            "signing_key_path": str(self.dir / "signing.key"),
            "registration_shared_secret": self.secret,
            "report_stats": False,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "url_preview_enabled": True,
            "url_preview_ip_range_blacklist": ["10.0.0.0/8"],
            "url_preview_ip_range_whitelist": ["127.0.0.0/8"],
            "rc_message": many, "rc_registration": many, "rc_joins": {"local": many, "remote": many},
            "rc_login": {"address": many, "account": many, "failed_attempts": many},
            "rc_admin_redaction": many,
        }
        self.config = self.dir / "homeserver.yaml"
        self.config.write_text(json.dumps(config, indent=1))  # JSON is YAML
        env = {**os.environ, "SYNAPSE_ASYNC_IO_REACTOR": "0"}
        subprocess.run(world.wrap([*SYNAPSE, "-c", str(self.config), "--generate-keys"]), check=True,
                       capture_output=True, timeout=120, cwd=self.dir, env=env)
        with open(self.dir / "stderr", "wb") as stderr:  # Synapse writes to its own copy of the descriptor
            self.proc = subprocess.Popen(world.wrap([*SYNAPSE, "-c", str(self.config)]), cwd=self.dir, env=env,
                                         stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        wait_for(self._up, timeout=90, interval=0.2, message="Synapse to answer /_matrix/client/versions")

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"synapse exited {self.proc.returncode}:\n{(self.dir / 'stderr').read_text()}"
                                 f"\n{self.log[-3000:]}")
        try:
            self.api("GET", "/_matrix/client/versions")
        except OSError:
            return False
        return True

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def requests(self, fragment: str) -> list[str]:
        """The request lines Synapse logged whose path contains ``fragment`` (both listeners)."""
        return [line for line in self.log.splitlines() if "Processed request" in line and fragment in line]

    def api(self, method: str, path: str, body: dict | None = None, token: str | None = None) -> dict:
        """A client-server API call on the plain listener (the test's own, not through hush)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode())
        req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=30) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{method} {path}: {e.code} {e.read()[:500]!r}") from None

    def status(self, path: str, token: str) -> int:
        """The HTTP status of a GET on the plain listener (404: Synapse does not serve the path)."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}",
                                     headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=30) as resp:
                return resp.status
        except urllib.error.HTTPError as e:
            return e.code

    def register(self, user: str) -> str:
        """Register ``user`` (password PASSWORD) with the admin shared secret; its access token."""
        nonce = self.api("GET", "/_synapse/admin/v1/register")["nonce"]
        mac = hmac.new(self.secret.encode(), b"\0".join([nonce.encode(), user.encode(), PASSWORD.encode(),
                                                           b"notadmin"]), hashlib.sha1).hexdigest()
        return self.api("POST", "/_synapse/admin/v1/register",
                        {"nonce": nonce, "username": user, "password": PASSWORD, "admin": False, "mac": mac,
                         "inhibit_login": False})["access_token"]

    def stop(self) -> None:
        stop_group(self.proc, timeout=15)


class HushIn(Hush):
    """``hush run`` (tests/integration/harness.py's Hush) inside the world's
    namespace: it resolves the homeserver's names from the world's hosts file."""

    port = 0  # the element policy's listener, as the test set it

    def __init__(self, world: World, tmp: Path, policies: dict[str, str], config: str):
        self.dir = tmp
        self.state = tmp / "state"
        self.policies = tmp / "policies"
        self.policies.mkdir(exist_ok=True)
        for name, text in policies.items():
            (self.policies / f"{name}.yaml").write_text(text)
        (tmp / "config.yaml").write_text(textwrap.dedent(config))
        self.log_path = tmp / "hush.log"
        cmd = [sys.executable, "-m", "hush.daemon.cli", "run", "--policies", str(self.policies),
               "--state-dir", str(self.state), "--config", str(tmp / "config.yaml")]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(world.wrap(cmd), stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})


class NeoChat:
    """NeoChat on ``display`` (tests/clients/display.py: Xvfb and a private
    session bus, every process killed at its end), with its own HOME and an
    unlocked keyring, hush's listener as its HTTP proxy — in the world's
    namespace.  ``launch=STATE_DIR`` runs it under ``hush launch --app element``
    instead (no proxy setting)."""

    SCREEN = "1024x700x24"  # the display's size these positions are for (the window's default size)
    MATRIX_ID_FIELD = (502, 407)
    FIRST_ROOM = (62, 98)
    FIRST_ROOM_AVATAR = (24, 104)

    def __init__(self, world: World, display: Display, proxy_port: int | None, launch: Path | None = None,
                 name: str = "neochat"):
        self.display = display
        self.home = world.dir / f"{name}-home"
        config = self.home / ".config"
        config.mkdir(parents=True)
        settings = ["[General]", "ShowLinkPreview=true", ""]
        if proxy_port is not None:
            settings += ["[NetworkProxy]", "ProxyType=1", "ProxyHost=127.0.0.1", f"ProxyPort={proxy_port}", ""]
        (config / "neochatrc").write_text("\n".join(settings))
        runtime = self.home / "runtime"
        runtime.mkdir(mode=0o700)
        self.token = f"{name}-{os.urandom(4).hex()}"  # finds its processes, the keyring daemon included
        env = {"HOME": str(self.home), "XDG_RUNTIME_DIR": str(runtime), "QT_QPA_PLATFORM": "xcb",
               "LANG": "C.UTF-8", "QT_QUICK_BACKEND": "software", "LIBGL_ALWAYS_SOFTWARE": "1", TOKEN: self.token}
        # the access token goes to the Secret Service: an unlocked keyring of its own on the display's
        # bus (which activates nothing), or gnome-keyring would ask for a new keyring's password
        keyring = 'printf %s hush | gnome-keyring-daemon --unlock --components=secrets >/dev/null && exec neochat'
        cmd = ["sh", "-c", keyring]
        if launch is not None:
            cmd = [sys.executable, "-m", "hush.daemon.cli", "--state-dir", str(launch), "launch", "--app", "element",
                   "--", *cmd]
        self.log_path = display.dir / f"{name}.log"
        self.proc = display.spawn(world.wrap(cmd), env=env, log=self.log_path.name, user=None)
        self.window = ""

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def xdotool(self, *args: str) -> str:
        return self.display.xdotool(*args)

    def _alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"neochat exited {self.proc.returncode}:\n{self.log[-3000:]}")

    def wait_window(self, timeout: float = 60) -> str:
        def find() -> str:
            self._alive()
            return self.xdotool("search", "--onlyvisible", "--class", "neochat").split("\n")[0]
        self.window = wait_for(find, timeout=timeout, interval=0.3, message="NeoChat's window")
        return self.window

    def wait_login_page(self, timeout: float = 60) -> None:
        """Until the login page is drawn: its Matrix ID field is white (the window shows the page's
        grey background before its QML has loaded, and a click then is lost)."""
        def drawn() -> bool:
            self._alive()
            x, y = self.MATRIX_ID_FIELD
            return screen(self.display).getpixel((x + 88, y)) == (255, 255, 255)
        wait_for(drawn, timeout=timeout, interval=0.3, message="NeoChat's login page")

    def type(self, text: str, delay_ms: int = 250) -> None:
        """Type ``text`` at a human pace (``delay_ms`` between keystrokes) into the focused field."""
        self.xdotool("type", "--delay", str(delay_ms), text)

    def key(self, *keys: str) -> None:
        self.xdotool("key", "--delay", "100", *keys)

    def click(self, x: int, y: int) -> None:
        self.xdotool("mousemove", str(x), str(y), "click", "1")

    def type_matrix_id(self, mxid: str) -> None:
        """Type ``mxid`` into the login page's Matrix ID field, a keystroke every 250 ms.

        Up to the first character of the server part first, until NeoChat logs its lookup (``Sent GET
        https://h/.well-known/…``): with no window manager, a click may come before the field takes
        keys (the previous window's focus reverts to nothing), so that part is cleared and typed again;
        then the rest, at the same pace (a wait over the debounce's quiet time would let the first
        lookup leave)."""
        user, server = mxid.split(":", 1)
        sent = f"Sent GET https://{server[0]}/.well-known/matrix/client"
        for _ in range(3):
            self.xdotool("windowfocus", "--sync", self.window)
            self.click(*self.MATRIX_ID_FIELD)
            time.sleep(0.3)
            self.key("ctrl+a", "BackSpace")
            self.type(f"{user}:{server[0]}")
            deadline = time.monotonic() + 5
            while sent not in self.log and time.monotonic() < deadline:
                time.sleep(0.05)
            if sent in self.log:
                break
        else:
            raise AssertionError(f"NeoChat did not take the typed Matrix ID:\n{self.log[-3000:]}")
        self.type(server[1:])

    def log_in(self, password: str) -> None:
        """After :meth:`type_matrix_id`: continue to the password page and log in."""
        self.key("Return")
        time.sleep(1.5)
        self.type(password, delay_ms=20)
        self.key("Return")

    def open_first_room(self, timeout: float = 30) -> None:
        """Click the first room of the list once it is drawn (its avatar, a coloured disc, is there)."""
        def drawn() -> bool:
            self._alive()
            colour = screen(self.display).getpixel(self.FIRST_ROOM_AVATAR)
            return max(colour) - min(colour) > 60
        wait_for(drawn, timeout=timeout, interval=0.3, message="NeoChat's room list")
        self.click(*self.FIRST_ROOM)

    def stop(self) -> None:
        """Its processes, the keyring daemon (which leaves NeoChat's process group) included."""
        stop_group(self.proc)
        for pid in pids_with(self.token):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not pids_with(self.token), timeout=10, message=f"{self.token}'s processes to go")


def pids_with(token: str) -> list[int]:
    """The processes whose environment carries ``TOKEN=token``."""
    needle = f"{TOKEN}={token}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(pid))
        except OSError:  # gone, or a zombie
            continue
    return found


def screen(display: Display) -> Image.Image:
    """What the display shows now (Pillow reads the X server)."""
    return ImageGrab.grab(xdisplay=display.env["DISPLAY"])
