from pathlib import Path

from hush.daemon import paths


def test_state_dir_precedence(monkeypatch, tmp_path, _isolated_home):
    assert paths.state_dir(None) == _isolated_home / ".local/state/hush"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert paths.state_dir(None) == tmp_path / "xdg" / "hush"
    assert paths.state_dir(None, Path("/from/config")) == Path("/from/config")
    monkeypatch.setenv("STATE_DIRECTORY", "/run/systemd/state:/other")
    assert paths.state_dir(None, Path("/from/config")) == Path("/run/systemd/state")
    monkeypatch.setenv("HUSH_STATE_DIR", "/env")
    assert paths.state_dir(None) == Path("/env")
    assert paths.state_dir("/flag") == Path("/flag")


def test_policies_precedence(monkeypatch, tmp_path, _isolated_home):
    assert paths.policies(None) == paths.shipped_policies()
    assert (paths.shipped_policies() / "signal.yaml").exists()
    user = _isolated_home / ".config" / "hush" / "policies"
    user.mkdir(parents=True)
    assert paths.policies(None) == user
    assert paths.policies(None, Path("/cfg")) == Path("/cfg")
    monkeypatch.setenv("HUSH_POLICIES", "/env")
    assert paths.policies(None) == Path("/env")
    assert paths.policies("/flag") == Path("/flag")


def test_config_file(monkeypatch, _isolated_home):
    assert paths.config_file(None) is None
    default = _isolated_home / ".config" / "hush" / "config.yaml"
    default.parent.mkdir(parents=True)
    default.write_text("log_level: info\n")
    assert paths.config_file(None) == default
    monkeypatch.setenv("HUSH_CONFIG", "/env.yaml")
    assert paths.config_file(None) == Path("/env.yaml")
    assert paths.config_file("/flag.yaml") == Path("/flag.yaml")
