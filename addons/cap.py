"""Cap: a rule's ``max_bytes`` limits what a site may send back.

Mysk's 2020 study found server-side preview fetchers downloading gigabytes;
Signal Desktop caps preview HTML at 1000 KiB itself.  For a flow whose rule
has ``max_bytes``, the response is streamed (never buffered) and cut at the
cap: the app gets the first ``max_bytes`` bytes, the connection to the site is
closed, and the audit records ``truncated``.
"""

from __future__ import annotations

from mitmproxy import http


class Cap:
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        decision = flow.metadata.get("hush.decision")
        cap = getattr(decision.rule, "max_bytes", None) if decision is not None and decision.rule else None
        if cap is None:
            return
        seen = 0
        flow.metadata["hush.bytes_down"] = 0

        def stream(chunk: bytes) -> bytes:
            nonlocal seen
            if not chunk:
                return chunk
            room = max(cap - seen, 0)
            seen += len(chunk)
            flow.metadata["hush.bytes_down"] = min(seen, cap)
            if seen > cap and not flow.metadata.get("hush.truncated"):
                flow.metadata["hush.truncated"] = True
                if flow.killable:
                    flow.kill()  # stop reading from the site: close the connection
            return chunk[:room]

        flow.response.stream = stream


addons = [Cap()]
