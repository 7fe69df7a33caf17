"""Cap: a rule's ``max_bytes`` limits what a site may send back.

Mysk's 2020 study found server-side preview fetchers downloading gigabytes;
Signal Desktop caps preview HTML at 1000 KiB itself.  For a flow whose rule
has ``max_bytes``, the response is streamed (never buffered) and cut at the
cap: the app gets the first ``max_bytes`` bytes, the connection to the site is
closed, and the audit records ``truncated``.
"""

from __future__ import annotations

from mitmproxy import http

from hush.addons.notes import notes


class Cap:
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        n = notes(flow)
        decision = n.decision
        cap = decision.rule.max_bytes if decision is not None and decision.rule else None
        if cap is None or flow.response is None:
            return
        seen = 0
        n.bytes_down = 0

        def stream(chunk: bytes) -> bytes:
            nonlocal seen
            if not chunk:
                return chunk
            room = max(cap - seen, 0)
            seen += len(chunk)
            n.bytes_down = min(seen, cap)
            if seen > cap and not n.truncated:
                n.truncated = True
                if flow.killable:
                    flow.kill()  # stop reading from the site: close the connection
            return chunk[:room]

        flow.response.stream = stream


addons = [Cap()]
