"""How well the event loop keeps up, for ``hush status`` and the benchmarks.

Every flow of every app is served on one event loop, so anything that holds
it holds them all.  A probe wakes every ``PERIOD``; how late it wakes is how
long something kept the loop busy.  The longest such stall is kept, and one
over ``WARN`` is logged.

The usual cause, measured (bench/held_flows.py), is Python's full garbage
collection: it walks every tracked object, ~0.65 µs each, and each held flow
keeps ~165 of them alive inside mitmproxy, so with thousands of flows held a
full pass takes hundreds of ms.  Full passes are timed through
``gc.callbacks`` so that ``hush status`` can say so.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger("hush.loop")

PERIOD = 0.1
WARN = 0.25


class LoopWatch:
    def __init__(self, period: float = PERIOD, warn: float = WARN):
        self.period = period
        self.warn = warn
        self.max_stall = 0.0  # seconds, since start
        self.last_warned: tuple[float, float] | None = None  # (wall time, seconds)
        self.gc_full = 0
        self.gc_full_max = 0.0
        self.gc_full_total = 0.0
        self._gc_started: float | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        gc.callbacks.append(self._gc)
        self._task = asyncio.ensure_future(self._probe())

    def stop(self) -> None:
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)
        if self._task is not None:
            self._task.cancel()

    def _gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started is not None and info.get("generation") == 2:
            took = time.perf_counter() - self._gc_started
            self.gc_full += 1
            self.gc_full_total += took
            self.gc_full_max = max(self.gc_full_max, took)

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.period)
            self.observe(loop.time() - before - self.period)

    def observe(self, stall: float) -> None:
        self.max_stall = max(self.max_stall, stall)
        if stall >= self.warn:
            self.last_warned = (time.time(), stall)
            log.warning("the event loop was held for %.0f ms: every app's flows waited (longest full garbage "
                        "collection so far %.0f ms; many held flows make it longer)", stall * 1000,
                        self.gc_full_max * 1000)

    def status(self) -> dict:
        return {
            "max_stall_ms": round(self.max_stall * 1000, 1),
            "last_warning": {"at": self.last_warned[0], "stall_ms": round(self.last_warned[1] * 1000, 1)}
            if self.last_warned else None,
            "gc_full": self.gc_full,
            "gc_full_max_ms": round(self.gc_full_max * 1000, 1),
            "gc_full_total_ms": round(self.gc_full_total * 1000, 1),
        }
