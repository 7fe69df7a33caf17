"""A real XMPP setup on loopback for tests: prosody with two accounts, Gajim (Debian's
``gajim``) on a virtual display as an unprivileged user, and a second account that sends
from the test process (slixmpp).

    server = Prosody(user, "127.23.1.7").start()           # c2s on 127.23.1.7:5222
    home = gajim_home(user, server, proxy=("http", "127.0.0.1", 8109))
    with Display(user) as d:
        gajim = start_gajim(d, home, open_chat=server.jid("alice"))
        wait_for(lambda: server.logged_in("bob"))
        send_link(server, "alice", "bob", "http://127.0.0.1:8000/a.png")   # body + XEP-0066 OOB
        wait_for(lambda: history(home, "http://127.0.0.1:8000/a.png"))

Gajim is told where hush is by the account's own proxy entry (``proxy=``): the XMPP stream
and every download of that account go through it.  With ``proxy=None`` Gajim connects
directly — as it does inside ``hush launch --app xmpp -- gajim`` (docs/launch.md), where the
namespace, not a setting, sends everything through hush: ``start_gajim`` takes the command
prefix to run it under (``prefix=["hush", "launch", "--app", "xmpp", "--"]``), and ``Prosody``
one to run in a test's own namespace (``enter=["nsenter", "-t", PID, "-n", "-m", "--"]``).

Why these choices: Gajim 1.7 refuses to run as root, so it runs as ``user`` with a HOME
it owns; its settings are ``~/.config/gajim/settings.sqlite`` (two tables of JSON, the
schema of gajim/common/settings.py ``CREATE_SQL``, user_version 5) with the password in the
settings (``use_keyring`` off) and the plain (unencrypted) stream, which prosody allows
here, so no certificate has to be trusted.  Prosody listens on port 5222 of a loopback
address of its own (the shipped policy tells the stream by its port).
"""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from tests.clients.display import Account, Display
from tests.integration.harness import Hush
from tests.launch.world import _untraversable

REPO = Path(__file__).resolve().parents[2]

DOMAIN = "xmpp.hushtest"
PASSWORD = "hush-test-password"
ACCOUNT = "bob"  # Gajim's account; "alice" sends

PROSODY_CONFIG = """\
-- written by tests/clients/xmpp.py
pidfile = "{dir}/prosody.pid"
data_path = "{dir}/data"
plugin_paths = {{}}
log = {{ {{ levels = {{ min = "info" }}, to = "file", filename = "{dir}/prosody.log" }} }}
interfaces = {{ "{host}" }}
c2s_interfaces = {{ "{host}" }}
c2s_ports = {{ {port} }}
c2s_direct_tls_ports = {{}}
s2s_ports = {{}}
s2s_direct_tls_ports = {{}}
http_ports = {{}}
https_ports = {{}}
admin_socket = "{dir}/admin.sock"
modules_enabled = {{ "roster", "saslauth", "disco", "ping", "presence", "message", "iq" }}
modules_disabled = {{ "s2s", "posix", "tls", "admin_shell", "offline" }}
-- no certificate: the stream is plain on loopback (Gajim's account says so too)
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
storage = "internal"
VirtualHost "{domain}"
"""


class Prosody:
    """prosody 0.12 on ``host:port`` with a config and data in a directory ``user`` owns,
    run as ``user`` (no root needed, nothing of the system's prosody used); two accounts,
    registered with ``prosodyctl`` before it starts."""

    def __init__(self, user: Account, host: str, port: int = 5222, accounts: Sequence[str] = ("alice", "bob"),
                 domain: str = DOMAIN, enter: Sequence[str] = ()):
        self.user, self.host, self.port, self.domain = user, host, port, domain
        self.enter = list(enter)  # a prefix that runs prosody elsewhere: nsenter into a test's namespace
        self.accounts = list(accounts)
        self.dir = user.owned_dir("hush-prosody-")
        self.config = self.dir / "prosody.cfg.lua"
        self.proc: subprocess.Popen | None = None

    def jid(self, name: str) -> str:
        return f"{name}@{self.domain}"

    def _as_user(self) -> list[str]:
        return [*self.enter, "setpriv", "--pdeathsig", "KILL", "--reuid", str(self.user.uid),
                "--regid", str(self.user.gid), "--clear-groups", "--"]

    def start(self, timeout: float = 20) -> Prosody:
        self.config.write_text(PROSODY_CONFIG.format(dir=self.dir, host=self.host, port=self.port,
                                                     domain=self.domain))
        (self.dir / "data").mkdir(mode=0o700)
        self.user.chown_tree(self.dir)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.dir)}
        for name in self.accounts:
            res = subprocess.run([*self._as_user(), "prosodyctl", "--config", str(self.config), "register", name,
                                  self.domain, PASSWORD], capture_output=True, text=True, timeout=30, env=env)
            assert res.returncode == 0, f"prosodyctl register {name}: {res.stdout}{res.stderr}"
        with open(self.dir / "stdout.log", "wb") as out:
            self.proc = subprocess.Popen([*self._as_user(), "prosody", "--config", str(self.config), "-F"],
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        listening = f"Activated service 'c2s' on [{self.host}]:{self.port}"  # (its log; works in any netns)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prosody exited with {self.proc.returncode}:\n{self.logs()}")
            if listening in self.log:
                return self
            time.sleep(0.1)
        raise AssertionError(f"prosody not listening on {self.host}:{self.port} after {timeout}s:\n{self.logs()}")

    @property
    def log(self) -> str:
        try:
            return (self.dir / "prosody.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def logs(self) -> str:
        out = []
        for name in ("stdout.log", "prosody.log"):
            path = self.dir / name
            if path.exists():
                out.append(f"--- prosody {name} ---\n{path.read_text(errors='replace')[-6000:]}")
        return "\n".join(out)

    def logged_in(self, name: str) -> bool:
        """Whether a client has authenticated as ``name`` (prosody logs it at info)."""
        return f"Authenticated as {self.jid(name)}" in self.log

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


# -- hush as the client's user -----------------------------------------------------------

class UserHush(Hush):
    """``hush run`` as ``user`` (tests/integration/harness.py's Hush otherwise): hush serves
    only its own uid (``hush_same_user_only``), and Gajim cannot run as root — so the daemon
    runs as Gajim's user, as it would on a desktop.  Its state and policies are in a
    directory that user owns; the test (root) reads the audit and logs.

    Directories that user cannot traverse on the way to the interpreter or the repository
    (``/root``, where pyenv lives on these machines) are replaced, in a mount namespace of
    the daemon's own, by a tmpfs holding only those paths (as tests/launch/world.py does)."""

    def __init__(self, user: Account, policies: dict[str, str], config: str | None = None):
        self.user = user
        self.dir = user.owned_dir("hush-daemon-")
        self.state = self.dir / "state"
        self.policies = self.dir / "policies"
        self.policies.mkdir()
        for name, text in policies.items():
            (self.policies / f"{name}.yaml").write_text(textwrap.dedent(text))
        self.log_path = self.dir / "hush.log"
        argv = [sys.executable, "-m", "hush.daemon.cli", "run", "--policies", str(self.policies),
                "--state-dir", str(self.state)]
        if config is not None:
            (self.dir / "config.yaml").write_text(textwrap.dedent(config))
            argv += ["--config", str(self.dir / "config.yaml")]
        user.chown_tree(self.dir)
        stash = Path(tempfile.mkdtemp(prefix="hush-stash-"))  # root's, 0700: mount points only
        self._stash = stash
        q = shlex.quote
        lines = ["set -e"]
        needed = [sys.executable, os.path.realpath(sys.executable), sys.base_prefix, sys.prefix, str(REPO)]
        for i, (parent, children) in enumerate(sorted(_untraversable(needed).items(), key=lambda kv: len(kv[0]))):
            moves = []
            for j, child in enumerate(sorted(children)):
                src, tmp = Path(parent) / child, stash / f"{i}-{j}"
                lines.append(f"mkdir {q(str(tmp))}" if src.is_dir() else f"touch {q(str(tmp))}")
                lines.append(f"mount --bind {q(str(src))} {q(str(tmp))}")
                moves.append((tmp, src))
            lines.append(f"mount -t tmpfs -o mode=0755 hush-clients {q(parent)}")
            for tmp, src in moves:
                lines.append(f"mkdir {q(str(src))}" if src.is_dir() else f"touch {q(str(src))}")
                lines.append(f"mount --move {q(str(tmp))} {q(str(src))}")
        lines.append(f"exec setpriv --pdeathsig TERM --reuid {user.uid} --regid {user.gid} --clear-groups -- "
                     + " ".join(q(a) for a in argv))
        cmd = ["setpriv", "--pdeathsig", "TERM", "--", "unshare", "--mount", "--propagation", "private", "--",
               "sh", "-c", "\n".join(lines)]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.dir), "LANG": "C.UTF-8",
               "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        with open(self.log_path, "wb") as log:  # the daemon writes to its own copy of the descriptor
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=env, cwd=self.dir)  # setpriv, unshare and sh exec: this is hush

    def audit(self) -> list[dict]:
        """Every audit row written so far, read-only (a reader as root must not create the
        database's -wal/-shm files: the daemon's user could not open them then)."""
        path = self.state / "audit.db"
        if not path.exists():
            return []
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        except sqlite3.OperationalError:
            return []
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute("SELECT * FROM records ORDER BY id")]
        except sqlite3.OperationalError:  # not created yet
            return []
        finally:
            conn.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.stop()  # SIGTERM: the audit is written
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self._stash, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)


# -- Gajim -------------------------------------------------------------------------------

def gajim_settings(server: Prosody, account: str, proxy: tuple[str, str, int] | None,
                   open_chat: str | None = None) -> tuple[dict, dict]:
    """(app settings by name, the account's settings) as Gajim 1.7 stores them."""
    proxies = {}
    account_settings: dict = {
        "active": True,
        "name": account,
        "hostname": server.domain,
        "password": PASSWORD,
        "savepass": True,
        "resource": "gajim",
        "use_custom_host": True,
        "custom_host": server.host,
        "custom_port": server.port,
        "custom_type": "PLAIN",
        "use_plain_connection": True,
        "confirm_unencrypted_connection": False,
        "autoconnect": True,
        "restore_last_status": False,
        "last_status": "online",
        "send_os_info": False,
        "request_user_data": False,
        "account_label": "hush test",
    }
    if proxy is not None:
        kind, host, port = proxy
        proxies["hush"] = {"type": kind, "host": host, "port": port, "useauth": False, "user": "", "pass": ""}
        account_settings["proxy"] = "hush"
    chats = []
    if open_chat is not None:  # listed in the workspace, so `gajim xmpp:JID` selects it
        chats.append({"account": account, "jid": {"__type": "JID", "value": open_chat}, "type": "chat",
                      "pinned": False, "position": -1})
    app = {
        "use_keyring": False,
        "check_for_update": False,
        "show_trayicon": False,
        "enable_file_preview": True,
        "is_window_visible": True,
        "show_main_window_on_startup": "always",
        "workspace_order": ["9b7c4e2a-hush-test"],
    }
    workspaces = {"9b7c4e2a-hush-test": {"name": "hush", "color": "", "avatar_sha": "", "chats": chats}}
    return {"app": app, "proxies": proxies, "workspaces": workspaces}, {
        "account": account_settings, "contact": {}, "group_chat": {}}


def gajim_home(user: Account, server: Prosody, proxy: tuple[str, str, int] | None, account: str = ACCOUNT,
               open_chat: str | None = None) -> Path:
    """A HOME for Gajim, owned by ``user``, with ``~/.config/gajim/settings.sqlite`` made
    as Gajim makes it (its schema and user_version) holding one account on ``server``."""
    home = user.owned_dir("hush-gajim-home-")
    config = home / ".config" / "gajim"
    config.mkdir(parents=True)
    (home / ".local" / "share" / "gajim").mkdir(parents=True)
    (home / ".cache").mkdir()
    settings, account_settings = gajim_settings(server, account, proxy, open_chat)
    con = sqlite3.connect(config / "settings.sqlite")
    con.executescript("""
        CREATE TABLE settings (name TEXT UNIQUE, settings TEXT);
        CREATE TABLE account_settings (account TEXT UNIQUE, settings TEXT);
        PRAGMA user_version=5;
    """)
    for name in ("app", "soundevents", "status_presets", "proxies", "plugins", "workspaces"):
        con.execute("INSERT INTO settings(name, settings) VALUES (?, ?)", (name, json.dumps(settings.get(name, {}))))
    con.execute("INSERT INTO account_settings(account, settings) VALUES (?, ?)",
                (account, json.dumps(account_settings)))
    con.commit()
    con.close()
    user.chown_tree(home)
    return home


def start_gajim(display: Display, home: Path, open_chat: str | None = None,
                prefix: Sequence[str] = (), as_user: bool = True) -> subprocess.Popen:
    """Gajim on ``display`` as the display's user, with ``home``; ``open_chat`` (a JID
    listed by ``gajim_home(open_chat=…)``) selected at start, so what arrives in it is
    shown — and its previews fetched — at once.  ``prefix`` runs it under a wrapper
    (``hush launch --app xmpp --``); ``as_user=False`` starts the prefix as the caller (root),
    for a prefix that switches user itself (``nsenter … setpriv --reuid …``)."""
    env = {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_RUNTIME_DIR": str(home),
        "LANG": "C.UTF-8",
        "GDK_BACKEND": "x11",
        "NO_PROXY": "", "no_proxy": "", "http_proxy": "", "https_proxy": "",
    }
    args = [f"xmpp:{open_chat}"] if open_chat else []
    return display.spawn([*prefix, "gajim", "--verbose", *args], env=env, log="gajim.log",
                         user=True if as_user else None)


def history(home: Path, text: str) -> bool:
    """Whether Gajim's own history database holds a message containing ``text``
    (``~/.local/share/gajim/logs.db``, table ``logs``): it received and stored it."""
    path = home / ".local" / "share" / "gajim" / "logs.db"
    if not path.exists():
        return False
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        rows = con.execute("SELECT message FROM logs WHERE message LIKE ?", (f"%{text}%",)).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return False
    finally:
        con.close()
    return bool(rows)


# -- the sender --------------------------------------------------------------------------

def send_link(server: Prosody, sender: str, to: str, url: str, timeout: float = 20) -> None:
    """Log in as ``sender`` (slixmpp, plain stream, directly to prosody) and send ``to`` a
    message whose body is ``url`` and which carries the same URL as an XEP-0066
    out-of-band tag — what Gajim (and Conversations, Dino) send for a shared file, and what
    makes Gajim download it."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(asyncio.wait_for(_send(server, sender, to, url), timeout))
        except BaseException as e:  # handed to the caller
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)  # slixmpp wants its own event loop
    t.start()
    t.join(timeout + 5)
    if t.is_alive():
        raise AssertionError(f"the sender did not finish within {timeout}s")
    if errors:
        raise AssertionError(f"the sender failed: {errors[0]!r}") from errors[0]


async def _send(server: Prosody, sender: str, to: str, url: str) -> None:
    import slixmpp

    client = slixmpp.ClientXMPP(f"{server.jid(sender)}/sender", PASSWORD)
    client.register_plugin("xep_0066")
    client.plugin["feature_mechanisms"].unencrypted_plain = True
    client.enable_starttls = False
    client.enable_direct_tls = False
    client.enable_plaintext = True
    ready = asyncio.get_running_loop().create_future()
    client.add_event_handler("session_start", lambda _: ready.done() or ready.set_result(True))
    client.add_event_handler("failed_auth", lambda _: ready.done() or ready.set_exception(
        AssertionError(f"prosody refused {sender}'s password")))
    client.connect(host=server.host, port=server.port)
    await ready
    msg = client.make_message(mto=server.jid(to), mbody=url, mtype="chat")
    msg["oob"]["url"] = url
    msg.send()
    await asyncio.sleep(0.3)  # let the stanza leave before the stream closes
    client.disconnect()
    await client.disconnected
