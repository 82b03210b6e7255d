"""The process: its one event loop, the signals that stop a run, and the exit.

The tuning here (the allocator, the garbage collector, the event loop, the exit) is each a
measured gain for a short-lived process that moves many bytes (figures from tests.benchmarks
quoted at each one); none changes what a run does.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

from fastio_dl.config import uvloop_wanted
from fastio_dl.models import Outcome
from fastio_dl.runner import Stopper

T = TypeVar("T")


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """The one place that starts an event loop (uvloop when installed)."""
    tune_malloc()
    # Everything imported so far lives for the whole run: keep it out of the collector's scans
    # (full collections over typer/pydantic/aiohttp objects showed up in B2 profiles).
    gc.freeze()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(factory())  # type: ignore[arg-type]


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where installed. Measured with tests.benchmarks: B1's event loop spends about 10%
    less CPU (0.73 against 0.80 s), B2 takes about 4% less wall time (0.88 against 0.92 s)."""
    if not uvloop_wanted():
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def tune_malloc() -> None:
    """Keep freed receive buffers in the heap instead of returning them to the OS.

    Bodies arrive as ~256 KiB bytes objects; glibc would mmap/munmap or trim the heap for each
    batch, and re-faulting fresh pages cost up to 40% of wall time on 1 GiB downloads (measured
    with tests.benchmarks B2). Bounded: at most 32 MiB of free heap is kept.
    """
    if sys.platform != "linux":
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
        libc.mallopt(m_arena_max, 2)  # writer threads need no heaps of their own
        libc.mallopt(m_mmap_threshold, 16 * 1024 * 1024)
        libc.mallopt(m_trim_threshold, 32 * 1024 * 1024)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def leave_now(code: object) -> None:
    """End the process at once when the command is over and nothing else runs.

    The interpreter's own teardown (freeing every module and object) took about 20 ms of every
    run (tests.benchmarks B3), and there is nothing left for it to do: the command has closed
    every file it wrote and the engine's threads are gone; the standard streams are flushed
    here. Any doubt (another thread alive, a code that is not a number, a flush that fails)
    leaves the normal way.
    """
    if not (code is None or isinstance(code, int)) or threading.active_count() > 1:
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        return
    os._exit(code or 0)


class Interrupts:
    """What stops a CLI run cleanly: SIGINT or SIGTERM (a second one leaves at once), or
    standard output or error losing its reader (``| head``), as SIGPIPE would."""

    def __init__(self) -> None:
        self.stopper = Stopper()
        self.received: list[int] = []
        self.running = False

    def output_closed(self) -> None:
        if self.running and not self.received:
            self.received.append(signal.SIGPIPE)
            self.stopper.stop("output closed")

    def signalled(self, signum: int) -> None:
        if self.received:
            os._exit(128 + signum)  # second signal: leave at once
        self.received.append(signum)
        self.stopper.stop("interrupted")

    def run(self, job: Callable[[Stopper], Awaitable[T]]) -> T:
        """Run ``job`` in the process's one event loop with the signals wired to the stopper."""

        async def go() -> T:
            loop = asyncio.get_running_loop()
            installed = []
            for signum in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(signum, self.signalled, signum)
                    installed.append(signum)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass  # not the main thread (tests) or not supported
            self.running = True
            try:
                return await job(self.stopper)
            finally:
                self.running = False
                for signum in installed:
                    loop.remove_signal_handler(signum)

        return run_async(go)

    def mark(self, outcome: Outcome) -> Outcome:
        if self.received:
            outcome.interrupted = True
            outcome.signal = self.received[0]
        return outcome
