"""How well the event loop keeps up, for ``hush status`` and the benchmarks,
and the garbage collector kept from holding it.

Every flow of every app is served on one event loop, so anything that holds
it holds them all.  A probe wakes every ``PERIOD``; how late it wakes is how
long something kept the loop busy.  The longest such stall is kept (since
start, and per second for the last ``RECENT`` seconds, so that a benchmark
can ask about a window of its own), and one over ``WARN`` is logged.

The usual cause, measured (bench/held_flows.py), is Python's full garbage
collection: it walks every tracked object, ~0.65 µs each, and each held flow
keeps hundreds of them alive inside mitmproxy (an intercepted TLS flow more),
so with 1,000 flows held one full pass took 120–260 ms.  Full passes are
timed through ``gc.callbacks`` so that ``hush status`` can say so.

With ``freeze_survivors`` (the daemon's setting) what survives a full
collection is moved to the permanent generation (``gc.freeze()``): it is
long-lived (held flows, connections, caches), and the next full collection
walks only what was promoted since, not every held flow again.  Frozen
objects are still freed by reference counting when they die; only reference
cycles among them wait for a *thaw* (``gc.unfreeze()``, a full collection,
``gc.freeze()``), done when ``idle()`` says no client connection is open —
then the pass holds no one up — and only once the frozen set has grown by a
quarter since the last one (or, connections open or not, once it is four
times its size after start-up: that pass is a stall, logged and reported).
Full collections come more often (``FULL_EVERY``), so each walks only the
batch of objects promoted since the last one.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger("hush.loop")

PERIOD = 0.1
WARN = 0.25
RECENT = 120  # seconds of per-second maxima kept for status()
THAW_GROWTH = 1.25  # thaw once the frozen set is this many times what the last thaw left …
THAW_MIN_OBJECTS = 20_000  # … and at least this many objects larger
THAW_MIN_INTERVAL = 30.0  # seconds between thaws
THAW_FORCED = 4.0  # … and even with connections open once it is this many times larger (a stall, reported)
# With freeze_survivors, the oldest generation's threshold is 1 instead of Python's 10: a full
# collection comes every other time the middle generation would be collected, and walks only what was
# promoted since the last one, not a burst of newly held flows at once (bench/held_flows.py, 1,000
# held: longest full collection 28 ms; 61 ms with 2; 154 ms as Python has it).
FULL_EVERY = 1
# … and the middle generation's is 4 instead of Python's 10: each middle collection, and the full one
# that follows every other, walks a smaller batch (bench/held_flows.py, 1,000 held: longest full
# collection 6–8 ms instead of 21–30 ms).
MIDDLE_EVERY = 4


class LoopWatch:
    def __init__(self, period: float = PERIOD, warn: float = WARN, freeze_survivors: bool = False,
                 idle: Callable[[], bool] | None = None):
        self.period = period
        self.warn = warn
        self.freeze_survivors = freeze_survivors
        self.idle = idle
        self.max_stall = 0.0  # seconds, since start
        self.last_warned: tuple[float, float] | None = None  # (wall time, seconds)
        self.gc_full = 0
        self.gc_full_max = 0.0
        self.gc_full_total = 0.0
        self.thaws = 0
        self.thaw_max = 0.0
        self._frozen_base = 0  # frozen objects after the last thaw (or at start)
        self.frozen = 0  # frozen objects when last counted
        self._last_thaw = 0.0
        self._last_count = 0.0
        self._recent: collections.deque[tuple[int, float]] = collections.deque(maxlen=RECENT)  # (second, stall)
        self._gc_started: float | None = None
        self._thawing = False
        self._thresholds: tuple[int, int, int] | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        gc.callbacks.append(self._gc)
        self._frozen_base = self.frozen = gc.get_freeze_count()
        self._last_thaw = self._last_count = time.monotonic()
        if self.freeze_survivors:
            self._thresholds = gc.get_threshold()
            gc.set_threshold(self._thresholds[0], MIDDLE_EVERY, FULL_EVERY)
        self._task = asyncio.ensure_future(self._probe())

    def stop(self) -> None:
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)
        if self._thresholds is not None:
            gc.set_threshold(*self._thresholds)
            self._thresholds = None
        if self._task is not None:
            self._task.cancel()

    def freeze(self) -> None:
        """Start-up is over: what exists now lives as long as the daemon (modules, policies,
        mitmproxy's state), out of the collector's way; later thaws are measured from here."""
        gc.freeze()
        self._frozen_base = self.frozen = gc.get_freeze_count()
        self._last_thaw = self._last_count = time.monotonic()
        # what status reports is the loop while it serves: start-up's own passes held no app up
        self.max_stall, self.gc_full, self.gc_full_max, self.gc_full_total = 0.0, 0, 0.0, 0.0
        self._recent.clear()

    def _gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_started is not None and info.get("generation") == 2:
            took = time.perf_counter() - self._gc_started
            if self._thawing:
                return  # timed by thaw()
            self.gc_full += 1
            self.gc_full_total += took
            self.gc_full_max = max(self.gc_full_max, took)
            if self.freeze_survivors:
                gc.freeze()  # what survived a full pass is long-lived: the next one need not walk it again

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.period)
            self.observe(loop.time() - before - self.period)
            if self.freeze_survivors and self.idle is not None:
                self.maybe_thaw()

    def observe(self, stall: float) -> None:
        self.max_stall = max(self.max_stall, stall)
        second = int(time.time())
        if self._recent and self._recent[-1][0] == second:
            if stall > self._recent[-1][1]:
                self._recent[-1] = (second, stall)
        else:
            self._recent.append((second, stall))
        if stall >= self.warn:
            self.last_warned = (time.time(), stall)
            log.warning("the event loop was held for %.0f ms: every app's flows waited (longest full garbage "
                        "collection so far %.0f ms; many held flows make it longer)", stall * 1000,
                        self.gc_full_max * 1000)

    def maybe_thaw(self) -> bool:
        """Thaw (collect the frozen objects' cycles) if the frozen set grew enough and nothing is
        connected.  Counting the frozen set walks it (``gc.get_freeze_count()``: ~5 ms for 400,000
        objects), so it is counted once a ``THAW_MIN_INTERVAL``: counted whenever nothing was connected, it
        was counted on nearly every 100 ms probe under an app that opens one connection after another
        (each one closed before the next), a walk of the loop's time every time."""
        now = time.monotonic()
        if now - self._last_thaw < THAW_MIN_INTERVAL:
            return False
        if now - self._last_count >= THAW_MIN_INTERVAL:
            self._last_count = now
            self.frozen = gc.get_freeze_count()
        frozen = self.frozen
        if frozen < max(self._frozen_base * THAW_GROWTH, self._frozen_base + THAW_MIN_OBJECTS):
            return False
        forced = frozen >= max(self._frozen_base, THAW_MIN_OBJECTS) * THAW_FORCED
        if not forced and not (self.idle is not None and self.idle()):
            return False
        took = self.thaw()
        if forced:  # connections were open: they waited, and status says so
            log.warning("collected the garbage among %d frozen objects with connections open (%.0f ms)",
                        frozen, took * 1000)
            self.observe(took)
        return True

    def thaw(self) -> float:
        """Unfreeze, collect everything, freeze again: the seconds it took."""

        start = time.perf_counter()
        self._thawing = True
        try:
            gc.unfreeze()
            gc.collect()
            gc.freeze()
        finally:
            self._thawing = False
        took = time.perf_counter() - start
        self.thaws += 1
        self.thaw_max = max(self.thaw_max, took)
        self._frozen_base = self.frozen = gc.get_freeze_count()
        self._last_thaw = self._last_count = time.monotonic()
        return took

    def recent_max_stall(self, since: float) -> float:
        """The longest stall (seconds) in the whole seconds from ``since`` (wall time) on, as far as kept."""
        first = int(since)
        return max((stall for second, stall in self._recent if second >= first), default=0.0)

    def status(self) -> dict:
        return {
            "max_stall_ms": round(self.max_stall * 1000, 1),
            "last_warning": {"at": self.last_warned[0], "stall_ms": round(self.last_warned[1] * 1000, 1)}
            if self.last_warned else None,
            "gc_full": self.gc_full,
            "gc_full_max_ms": round(self.gc_full_max * 1000, 1),
            "gc_full_total_ms": round(self.gc_full_total * 1000, 1),
            "gc_frozen": self.frozen,  # when last counted (counting walks them all)
            "gc_thaws": self.thaws,
            "gc_thaw_max_ms": round(self.thaw_max * 1000, 1),
            # [second (wall time), longest stall in it (ms)] for the last RECENT seconds
            "recent_stalls_ms": [[second, round(stall * 1000, 1)] for second, stall in self._recent],
        }
