from pathlib import Path

import pytest

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
    cfg, env, flag = (tmp_path / name for name in ("cfg", "env", "flag"))
    for d in (cfg, env, flag):
        d.mkdir()
    assert paths.policies(None, cfg) == cfg
    monkeypatch.setenv("HUSH_POLICIES", str(env))
    assert paths.policies(None, cfg) == env
    assert paths.policies(str(flag), cfg) == flag


@pytest.mark.parametrize("source", ["--policies", "$HUSH_POLICIES", "policies in the config"])
def test_a_policy_directory_named_but_missing_is_one_line(monkeypatch, tmp_path, source):
    missing = tmp_path / "nope"
    if source == "$HUSH_POLICIES":
        monkeypatch.setenv("HUSH_POLICIES", str(missing))
    with pytest.raises(FileNotFoundError) as e:
        paths.policies(str(missing) if source == "--policies" else None, missing)
    assert str(e.value) == f"the policy directory {missing} does not exist (from {source})"


def test_config_file(monkeypatch, _isolated_home):
    assert paths.config_file(None) is None
    default = _isolated_home / ".config" / "hush" / "config.yaml"
    default.parent.mkdir(parents=True)
    default.write_text("log_level: info\n")
    assert paths.config_file(None) == default
    monkeypatch.setenv("HUSH_CONFIG", "/env.yaml")
    assert paths.config_file(None) == Path("/env.yaml")
    assert paths.config_file("/flag.yaml") == Path("/flag.yaml")
