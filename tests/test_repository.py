"""What may never be committed: private keys, databases, logs, runtime state.

A CA private key was committed once (with the audit database and tor's state).
This test reads what git tracks, so it fails the suite the moment it happens again.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN_NAMES = re.compile(
    r"""(^|/)state/                       # a run's state dir
      | \.(db|sqlite3?|db-wal|db-shm)$    # databases
      | \.(log|prof)$                     # logs, profiles
      | \.(p12|pfx|key)$                  # key stores
      | (^|/)mitmproxy-ca\.pem$           # mitmproxy's CA: cert *and* key
    """, re.X)
DASHES = b"-" * 5  # spelled apart so that this file does not match itself
KEY = b" KEY"  # the samples below too: no tracked file may read as a private key, this one included
PRIVATE_KEY = re.compile(DASHES + rb"BEGIN ([A-Z ]+ )?PRIVATE KEY" + DASHES)


def tracked() -> list[str]:
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")  # an sdist or an installed copy: nothing is tracked
    out = subprocess.run([git, "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True)
    return [p for p in out.stdout.decode().split("\0") if p]


def test_no_runtime_state_database_log_or_key_store_is_tracked():
    bad = [p for p in tracked() if FORBIDDEN_NAMES.search(p)]
    assert not bad, f"remove from git (and keep ignored): {bad}"


def test_no_tracked_file_holds_a_private_key():
    bad = []
    for path in tracked():
        file = ROOT / path
        if file.is_file() and PRIVATE_KEY.search(file.read_bytes()):
            bad.append(path)
    assert not bad, f"private key material is committed: {bad}"


def test_the_rules_catch_what_was_once_committed():
    for path in ("state/ca/mitmproxy-ca.pem", "state/audit.db", "state/tor/state", "prof.log",
                 "x/hush.db-wal", "ca/mitmproxy-ca.p12"):
        assert FORBIDDEN_NAMES.search(path), path
    for path in ("daemon/audit/store.py", "docs/audit.md", "policies/signal.yaml", "tests/test_repository.py"):
        assert not FORBIDDEN_NAMES.search(path), path
    assert PRIVATE_KEY.search(b"x\n" + DASHES + b"BEGIN RSA PRIVATE" + KEY + DASHES + b"\nMII")
    assert PRIVATE_KEY.search(DASHES + b"BEGIN PRIVATE" + KEY + DASHES)
    assert not PRIVATE_KEY.search(DASHES + b"BEGIN CERTIFICATE" + DASHES)
