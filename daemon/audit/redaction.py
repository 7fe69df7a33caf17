"""How much of a URL the local audit keeps (``audit.redaction``): the names,
apart from :mod:`hush.daemon.audit.store` so that reading the config imports
no SQLite (the CLI's commands start fast)."""

REDACTIONS = ("full", "no-query", "site")
DEFAULT_REDACTION = "site"
