"""``hush launch``: the namespace on the caller's side (namespace.py), the
daemon's side (server.py), and the DNS stub's names (fakedns.py)."""
