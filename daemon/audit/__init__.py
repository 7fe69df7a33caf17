"""The audit: the store (schema, the writer thread), the queries the CLI and
the report read, and the HTML report."""
