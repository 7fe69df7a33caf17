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
    findings = {(f["check"], f["level"]): f for f in json.loads(capsys.readouterr().out)}
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
