import json
import os
import socket

from hush.daemon.cli.main import main
from hush.daemon.exitstatus import ExitStatus


def test_doctor_on_a_broken_setup(tmp_path, capsys, monkeypatch):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "a.yaml").write_text(f"app: a\nlisten: {port}\ndefault: tor\n")
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    (state / "audit.db").write_text("")
    os.chmod(state / "audit.db", 0o644)
    config = tmp_path / "config.yaml"
    config.write_text("tor:\n  binary: /nonexistent/tor\n")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")

    code = main(["doctor", "--policies", str(policies), "--state-dir", str(state), "--config", str(config), "--json"])
    taken.close()
    out = json.loads(capsys.readouterr().out)
    assert out["schema"] == "hush.doctor/1" and out["ok"] is False
    assert all(set(f) == {"level", "check", "message", "fix"} for f in out["findings"])
    findings = {(f["check"], f["level"]): f for f in out["findings"]}
    assert code == ExitStatus.ERROR
    assert "no '/nonexistent/tor' is installed" in findings[("tor", "fail")]["message"]
    assert f"127.0.0.1:{port} (a) is taken by another program" == findings[("ports", "fail")]["message"]
    assert findings[("state", "fail")]["fix"] in (f"chmod 700 {state}", f"chmod 600 {state / 'audit.db'}")
    assert "bypass hush" in findings[("proxy-env", "warn")]["message"]
    assert findings[("python", "ok")]


def test_doctor_table_on_a_good_setup(tmp_path, capsys, monkeypatch):
    policies = tmp_path / "policies"
    policies.mkdir()
    port = socket.socket()
    port.bind(("127.0.0.1", 0))
    free = port.getsockname()[1]
    port.close()
    (policies / "a.yaml").write_text(f"app: a\nlisten: {free}\ndefault: allow\n")
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free}")
    assert main(["doctor", "--policies", str(policies), "--state-dir", str(tmp_path / "s"), "--table"]) == 0
    out = capsys.readouterr().out
    assert f"✓ ports: 127.0.0.1:{free} (a) is free" in out
    assert f"✓ proxy-env: HTTP_PROXY=http://127.0.0.1:{free} points at a hush listener" in out


def test_doctor_reports_policy_errors(tmp_path, capsys):
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "a.yaml").write_text("app: a\nlisten: 1\ndefault: nope\n")
    assert main(["doctor", "--policies", str(policies), "--state-dir", str(tmp_path), "--table"]) == ExitStatus.ERROR
    out = capsys.readouterr().out
    assert f"✗ policies: 1 error(s) in {policies}:\n{policies}/a.yaml:3:10: unknown action 'nope'" in out


def test_install_unit(tmp_path, capsys):
    assert main(["install-unit", "--dir", str(tmp_path)]) == 0
    unit = (tmp_path / "hush.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    binary = exec_start.split("=", 1)[1].split()[0]
    assert os.access(binary, os.X_OK) and binary.endswith("/hush")
    assert "%h/.local/bin" not in unit
    assert "systemctl --user daemon-reload" in capsys.readouterr().out


def test_launch_checks_tools_and_namespaces(monkeypatch, tmp_path):
    from hush.daemon.cli import doctor

    ok = doctor.check_launch(tool=lambda name: f"/usr/sbin/{name}", try_namespaces=lambda: None)
    assert ok[0].level == "ok" and len(ok) == 2
    scope = tmp_path / "ptrace_scope"
    assert doctor.check_ptrace(scope).level == "warn"  # no Yama at all
    scope.write_text("0\n")
    assert doctor.check_ptrace(scope).level == "warn"
    scope.write_text("1\n")
    assert doctor.check_ptrace(scope).level == "ok"
    [tools, userns] = doctor.check_launch(tool=lambda name: None, try_namespaces=lambda: "Operation not permitted")
    assert tools.level == "fail" and "ip and nft" in tools.message and "nftables" in tools.fix
    assert userns.level == "fail" and "Operation not permitted" in userns.message
    restricted = tmp_path / "apparmor"
    restricted.write_text("1\n")
    monkeypatch.setattr(doctor, "APPARMOR_USERNS", restricted)
    [_, userns] = doctor.check_launch(tool=lambda name: None, try_namespaces=lambda: "Permission denied")
    assert "AppArmor" in userns.fix
    # and for real, here: the tests' machine can (hush launch's tests depend on it)
    assert doctor._try_namespaces() is None


def _status(started=1000.0, **tor):
    base = {"state": "bootstrapping", "ready": False, "reason": "tor 4242 started", "bootstrap": 14,
            "bootstrap_tag": "handshake", "bootstrap_summary": "Handshaking with a relay", "mode": "launch",
            "restarts": 0}
    return {"running": True, "started": started, "tor": {**base, **tor}}


def test_doctor_asks_the_daemon_how_its_tor_is_doing():
    from hush.daemon.cli.doctor import check_tor_running

    nine_minutes = 1000.0 + 9 * 60
    stuck = check_tor_running(_status(), now=nine_minutes)
    assert (stuck.level, stuck.check) == ("fail", "tor")
    assert stuck.message.startswith("bootstrap stuck at 14% (handshake: Handshaking with a relay) for 9 minutes: "
                                    "relays are reached but the TLS handshake")
    assert "clock" in stuck.fix and "bridges" in stuck.fix
    young = check_tor_running(_status(), now=1030.0)
    assert young.level == "warn" and young.message.startswith("still bootstrapping, at 14% (handshake: ") and \
        "after 30s" in young.message
    ready = check_tor_running(_status(state="ready", ready=True, bootstrap=100), now=nine_minutes)
    assert ready.level == "ok" and ready.message.startswith("ready: bootstrapped 100%")
    assert check_tor_running({"running": True, "tor": {"state": "off"}}).level == "ok"
    down = check_tor_running(_status(state="down", reason="tor exited (code 1)", restarts=3), now=nine_minutes)
    assert down.level == "fail" and down.message.startswith("down: tor exited (code 1) (last at 14% (handshake: ")
    assert "restarted 3 times" in down.message
    no_circuit = check_tor_running(_status(bootstrap=100, bootstrap_tag="done", bootstrap_summary="Done"),
                                   now=nine_minutes)
    assert no_circuit.message.startswith("bootstrapped 100% but no circuit is established for 9 minutes: ")


def test_each_bootstrap_phase_says_what_a_stall_there_usually_means():
    from hush.daemon.cli.doctor import stuck_phase

    assert "network" in stuck_phase(5)[0] and "bridges" in stuck_phase(5)[1]  # conn: no relay reached
    assert "clock" in stuck_phase(14)[0] and "timedatectl" in stuck_phase(14)[1]  # handshake
    assert "clock skew" in stuck_phase(40)[0]  # loading_status: a consensus not yet (or no longer) valid
    assert "descriptors" in stuck_phase(60)[0]
    assert "circuits" in stuck_phase(95)[0]
    assert "not begun" in stuck_phase(0)[0]


def test_doctor_json_schema_on_a_good_setup(tmp_path, capsys):
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "a.yaml").write_text("app: a\nlisten: 1\ndefault: allow\n")
    main(["doctor", "--policies", str(policies), "--state-dir", str(tmp_path / "s"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert list(out) == ["schema", "ok", "findings"] and out["schema"] == "hush.doctor/1"
    assert {"check": "ship", "level": "ok", "fix": None,
            "message": "audit records are not shipped (no audit.ship in the config)"} in out["findings"]


def _config(tmp_path, text):
    from hush.daemon.config import parse_config

    return parse_config(str(tmp_path / "c.yaml"), text)


def test_check_ship_without_a_daemon(tmp_path):
    from hush.daemon.cli.doctor import check_ship

    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    port = listening.getsockname()[1]
    [ok] = check_ship(_config(tmp_path, f"audit: {{ship: {{syslog: 'tcp://127.0.0.1:{port}'}}}}\n"))
    assert ok.level == "ok" and ok.message == f"syslog tcp://127.0.0.1:{port} (site) can be reached"
    listening.close()
    [down] = check_ship(_config(tmp_path, f"audit: {{ship: {{syslog: 'tcp://127.0.0.1:{port}'}}}}\n"))
    assert down.level == "warn" and down.message == (f"syslog tcp://127.0.0.1:{port}: cannot connect (connection "
                                                     "refused); records would be dropped (counted) until it is")
    [nojournal] = check_ship(_config(tmp_path, f"audit: {{ship: {{journald: {tmp_path}/none}}}}\n"))
    assert nojournal.level == "warn" and f"no journal socket at {tmp_path}/none" in nojournal.message
    _, full = check_ship(_config(tmp_path, "audit: {ship: {syslog: 'udp://127.0.0.1:9'}, ship_redaction: full}\n"))
    assert full.level == "warn" and "every link" in full.message and full.fix == "use site or hash (docs/fleet.md)"


def test_check_ship_asks_the_running_daemon(tmp_path):
    from hush.daemon.cli.doctor import check_ship

    config = _config(tmp_path, "audit: {ship: {syslog: 'tcp://127.0.0.1:9'}}\n")
    status = {"audit": {"ship": {"target": "syslog tcp://127.0.0.1:9", "connected": False, "shipped": 3,
                                 "dropped": 7, "last_error": "connect: Connection refused"}}}
    [f] = check_ship(config, status, probe=False)
    assert f.level == "warn" and f.message == ("syslog tcp://127.0.0.1:9: 3 shipped, 7 dropped, not connected; "
                                               "last error: connect: Connection refused")
    status["audit"]["ship"].update(connected=True, dropped=0)
    [f] = check_ship(config, status, probe=False)
    assert f.level == "ok" and f.message == "syslog tcp://127.0.0.1:9 (site): 3 shipped, none dropped"


def test_a_missing_policy_directory_is_one_finding_among_the_others(tmp_path, capsys):
    """doctor goes on after a policy directory that does not exist: it says so as a failed check
    with its fix, and still checks the rest (hush run stops there; a check-up should not)."""
    code = main(["doctor", "--policies", str(tmp_path / "nosuch"), "--state-dir", str(tmp_path / "s"), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == ExitStatus.ERROR and report["ok"] is False
    [policies] = [f for f in report["findings"] if f["check"] == "policies"]
    assert policies["level"] == "fail"
    assert f"{tmp_path / 'nosuch'} does not exist (from --policies)" in policies["message"]
    assert {"python", "config", "tor", "state"} <= {f["check"] for f in report["findings"]}
