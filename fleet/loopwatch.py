"""How long the event loop is held: every callback the controller's loop runs (a coroutine's
step, a request's handler, a scheduler pass, an SSH packet) is timed, and those that held the
loop for ``HOLD_MIN`` or more are counted by duration in ``fleet_event_loop_hold_seconds``.
While one callback runs, nothing else does (no request is answered, no lease is renewed), so
this is the figure behind DESIGN's rule that nothing holds the loop longer than 50 ms.

asyncio has no hook for this outside its debug mode (which costs far more: it tracks where
every coroutine came from). fleet wraps ``asyncio.events.Handle._run``, the one method that
runs every callback of a stock asyncio loop, once per process: two clock reads per callback
(about 0.2 us), measured against the work of the callbacks themselves (tens of us each).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("fleet.loop")

HOLD_MIN = 0.005  # shorter holds are the loop's normal work, not counted
REPORT_OVER = 0.5  # a hold this long is logged with what held the loop (at most every 10 s)

Observer = Callable[[float, Any], None]
_observers: list[Observer] = []
_installed = False


def watch(observer: Observer) -> Callable[[], None]:
    """Call ``observer(seconds, handle)`` for every callback that holds the loop ``HOLD_MIN``
    or longer, in any loop of this process. Returns the function that stops it."""
    _install()
    _observers.append(observer)

    def stop() -> None:
        if observer in _observers:
            _observers.remove(observer)

    return stop


def _install() -> None:
    global _installed
    if _installed:
        return
    original = asyncio.events.Handle._run
    clock = time.perf_counter

    def timed_run(handle: asyncio.Handle) -> None:
        start = clock()
        original(handle)
        took = clock() - start
        if took >= HOLD_MIN:
            for observer in tuple(_observers):
                observer(took, handle)

    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign, assignment]
    _installed = True


def watch_gc(observer: Callable[[int, float], None]) -> Callable[[], None]:
    """Call ``observer(generation, seconds)`` after every garbage collection of this process
    that took ``HOLD_MIN`` or more (a full collection walks every tracked object: with tens
    of thousands of queued jobs and a thousand SSH connections, hundreds of milliseconds).
    Returns the function that stops it."""
    started = [0.0]
    clock = time.perf_counter

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = clock()
            return
        took = clock() - started[0]
        if took >= HOLD_MIN:
            observer(info.get("generation", -1), took)

    gc.callbacks.append(callback)

    def stop() -> None:
        if callback in gc.callbacks:
            gc.callbacks.remove(callback)

    return stop


class Reporter:
    """Logs a hold over ``REPORT_OVER`` with its callback, at most once per ``every`` seconds
    (a flood of slow callbacks is one problem, not a thousand lines)."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last = float("-inf")

    def __call__(self, took: float, handle: Any) -> None:
        if took < REPORT_OVER:
            return
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            log.warning("the event loop was held %.0f ms by %s", took * 1000, describe(handle))


def describe(handle: Any) -> str:
    """What a callback was, in words: a task's step names the task and where its coroutine
    now waits (the code that held the loop ran up to there); anything else, its repr."""
    task = getattr(getattr(handle, "_callback", None), "__self__", None)
    if isinstance(task, asyncio.Task):
        coro = task.get_coro()
        frame = getattr(coro, "cr_frame", None)
        where = f" at {frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else ""
        return f"task {task.get_name()} ({getattr(coro, '__qualname__', coro)}{where})"
    return repr(handle)

