"""Large downloads on their way to disk: whole aligned blocks with O_DIRECT.

A large download written through the page cache costs the kernel a copy and a fresh page for
every 4 KiB, dirties memory that the fsync before the rename then has to wait for, and evicts
whatever the user had cached. Whole aligned blocks written with ``O_DIRECT`` go from a reused
buffer to the device instead. The unaligned ends (the start of a resumed file, the last bytes of
a file, what is flushed at an interruption) go through the ordinary descriptor. Where the file
system refuses ``O_DIRECT`` (at open or at the first write), everything goes through the
ordinary descriptor, as before.

:class:`StreamWriter` carries one in-order stream (and its hash); :class:`PieceBuffer` holds the
next bytes of one connection of a segmented download, and :class:`BackReader` reads that file
back in order for its hash. Buffers come from a run's :class:`BufferPool`: on some machines
touching fresh memory costs more than the copy into it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import mmap
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from fastio_dl.errors import IntegrityError

T = TypeVar("T")

ALIGN = 4096  # the strictest usual O_DIRECT alignment (4Kn devices); 512-byte ones accept it
CAPACITY = 5 * 1024 * 1024  # one write batch (4 MiB and a network chunk) fits in one buffer
READ_BLOCK = 2 * 1024 * 1024  # what BackReader reads at a time
O_DIRECT = getattr(os, "O_DIRECT", 0)
FADV_DONTNEED = getattr(os, "POSIX_FADV_DONTNEED", None) if hasattr(os, "posix_fadvise") else None
POOL_BYTES = 64 * 1024 * 1024  # kept between uses, at most, over all sizes
_GRAIN = 1024 * 1024  # sizes are rounded up to this, so that buffers fit more pieces
#: Private anonymous memory. mmap's default (MAP_SHARED) is shared memory, which the kernel
#: never backs with huge pages.
_MAP_FLAGS = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)


class BufferPool:
    """Buffers kept between uses (fresh memory costs more than a copy into reused memory), at
    most ``limit`` bytes over all sizes. A run owns one and closes it at its end: two runs in
    one process share no buffers and no counts."""

    def __init__(self, limit: int = POOL_BYTES) -> None:
        self.limit = limit
        self.kept = 0  # bytes kept now
        self._free: dict[int, list[mmap.mmap]] = {}
        self._lock = threading.Lock()

    def take(self, size: int = CAPACITY, *, huge: bool = False) -> mmap.mmap:
        """A page-aligned buffer of at least ``size`` bytes (whole MiB), reused when possible;
        ``huge``: in 2 MiB pages where the kernel gives them (see _advise_huge)."""
        size = -(-size // _GRAIN) * _GRAIN
        buffer = None
        with self._lock:
            free = self._free.get(size)
            if free:
                self.kept -= size
                buffer = free.pop()
        if buffer is None:
            buffer = mmap.mmap(-1, size, flags=_MAP_FLAGS) if _MAP_FLAGS else mmap.mmap(-1, size)
        if huge:
            _advise_huge(buffer)
        return buffer

    def give_back(self, buffer: mmap.mmap) -> None:
        with self._lock:
            if self.kept + len(buffer) <= self.limit:
                self._free.setdefault(len(buffer), []).append(buffer)
                self.kept += len(buffer)
                return
        _unmap(buffer)

    def close(self) -> None:
        """Unmap the buffers kept; one given back later is unmapped at once."""
        with self._lock:
            kept = [buffer for free in self._free.values() for buffer in free]
            self._free.clear()
            self.kept = self.limit = 0
        for buffer in kept:
            _unmap(buffer)


def _unmap(buffer: mmap.mmap) -> None:
    with contextlib.suppress(BufferError):  # a view still alive: the collector frees it later
        buffer.close()


def _advise_huge(buffer: mmap.mmap) -> None:
    """Ask for transparent huge pages: Linux backs the aligned 2 MiB stretches of a private
    mapping advised MADV_HUGEPAGE with them (THP "always" or "madvise", the usual settings).
    One page fault and one TLB entry per 2 MiB instead of per 4 KiB, while the network and the
    hash fill and read the buffer again and again.

    Only the one-stream ring asks (measured with tests.benchmarks B2, 1 GiB, three A/B rounds
    of alternating runs: 2 to 6% less wall time). Piece buffers do not: B3 gained nothing, and
    a huge page is resident as a whole (its nine piece buffers went from 81 to 90 MB).
    """
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is not None and _MAP_FLAGS:
        with contextlib.suppress(OSError):  # a kernel built without THP refuses the advice
            buffer.madvise(advice)


async def settled(job: asyncio.Future[T]) -> T:
    """Await ``job``; when cancelled, still wait for it to end before re-raising: worker
    threads behind it may be using a buffer or a descriptor that the caller releases next."""
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        await asyncio.wait([job])
        raise


async def in_thread(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``asyncio.to_thread`` that, when cancelled, still waits for the thread to end."""
    return await settled(asyncio.ensure_future(asyncio.to_thread(func, *args, **kwargs)))


class SmallWrites:
    """Short jobs (a small file's check and write) for one run, on a few threads of its own.

    ``asyncio.to_thread`` per small file (a task, three futures, an executor hand-off, one
    wake-up of the event loop per file) was most of the event loop's own cost per file after
    the HTTP client. Here the loop appends a job to a queue, waking a thread only if one
    sleeps, and a thread hands back everything it finished in one call
    (tests.benchmarks B7, 5,000 files of 64 KiB). Jobs run in the order they come.
    """

    THREADS = 2  # hashing and creating files overlap across directories and cores
    GRAB = 4  # jobs a thread takes at once: fewer hand-backs, yet every thread gets work

    def __init__(self) -> None:
        self._jobs: collections.deque[tuple[Callable[[], Any], asyncio.Future[Any]]] = (
            collections.deque()
        )
        self._ready = threading.Condition()
        self._idle = 0  # threads waiting for a job
        self._threads: list[threading.Thread] = []
        self._closed = False

    async def run(self, job: Callable[[], T]) -> T:
        """``job()`` on one of the threads; when cancelled, still waits for it to end."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()
        with self._ready:
            if self._closed:
                raise RuntimeError("small writes are closed")
            self._jobs.append((job, done))
            if self._idle:
                self._ready.notify()
            elif len(self._threads) < self.THREADS:
                thread = threading.Thread(
                    target=self._work, args=(loop,), name="fastio-dl-small", daemon=True
                )
                self._threads.append(thread)
                thread.start()
        return await settled(done)

    def _work(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            with self._ready:
                while not self._jobs and not self._closed:
                    self._idle += 1
                    self._ready.wait()
                    self._idle -= 1
                if not self._jobs:
                    return
                grab = [self._jobs.popleft() for _ in range(min(self.GRAB, len(self._jobs)))]
            results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
            for job, done in grab:
                try:
                    results.append((done, job(), None))
                except BaseException as exc:  # handed to the awaiting task, whatever it is
                    results.append((done, None, exc))
            try:
                loop.call_soon_threadsafe(_hand_back, results)
            except RuntimeError:
                return  # the loop is closed: nobody waits any more

    def close(self) -> None:
        """Let the threads finish the jobs queued, then end them."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        for thread in self._threads:
            thread.join()
        self._threads.clear()


def _hand_back(results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for done, value, error in results:
        if done.cancelled():
            continue
        if error is None:
            done.set_result(value)
        else:
            done.set_exception(error)


def open_direct(path: str) -> int | None:
    """A second, ``O_DIRECT`` descriptor for ``path``, or None where that is not available."""
    if not O_DIRECT:
        return None
    try:
        return os.open(path, os.O_WRONLY | O_DIRECT | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None  # EINVAL: this file system does not do O_DIRECT


class DirectFile:
    """A file open twice: ordinary, and with ``O_DIRECT`` where the file system allows it."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.direct_fd = open_direct(path)

    def close_direct(self) -> None:
        if self.direct_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.direct_fd)
            self.direct_fd = None

    def write_region(self, base: int, start: int, region: memoryview) -> None:
        """Write ``region`` at file offset ``base + start``; ``base`` is a multiple of ALIGN and
        the region's memory sits at ``start`` of an aligned buffer, so aligned file offsets are
        aligned addresses. Whole blocks go direct, the unaligned ends through the page cache."""
        stop = start + len(region)
        first = min(stop, -(-start // ALIGN) * ALIGN)
        last = max(first, stop - stop % ALIGN)
        direct = self.direct_fd
        if direct is None or last == first:
            self._pwrite(self.fd, base + start, region)
            return
        if start < first:
            self._pwrite(self.fd, base + start, region[: first - start])
        try:
            self._pwrite(direct, base + first, region[first - start : last - start])
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            # This file system accepts O_DIRECT at open but not these writes: stop using it.
            self.close_direct()
            self._pwrite(self.fd, base + first, region[first - start : last - start])
        if last < stop:
            self._pwrite(self.fd, base + last, region[last - start :])

    def _pwrite(self, fd: int, at: int, data: memoryview) -> None:
        done = 0
        while done < len(data):
            written = os.pwrite(fd, data[done:], at + done)
            if written <= 0:
                raise OSError(errno.EIO, "write made no progress")
            done += written
        if fd == self.fd and FADV_DONTNEED is not None and self.direct_fd is None:
            # Through the page cache: start writeback now (Linux queues dirty pages on
            # DONTNEED), so the fsync before the rename has little left and the cache stays small.
            os.posix_fadvise(fd, at, len(data), FADV_DONTNEED)


class _Held:
    """A pooled buffer and a view of it, until release()."""

    def __init__(self, size: int, pool: BufferPool, *, huge: bool = False) -> None:
        self._pool = pool
        self._buffer: mmap.mmap | None = pool.take(size, huge=huge)
        self.view = memoryview(self._buffer)

    def release(self) -> None:
        if self._buffer is not None:
            self.view.release()
            self._pool.give_back(self._buffer)
            self._buffer = None


class PieceBuffer(_Held):
    """One segment piece in memory: ``length`` bytes for file offset ``start`` on, placed so
    that aligned file offsets are aligned addresses. ``got`` bytes arrived, ``written`` of them
    are on disk."""

    def __init__(self, start: int, length: int, capacity: int = 0, *, pool: BufferPool) -> None:
        self.start = start
        self.lead = start % ALIGN
        self.length = length
        # Pieces of one file ask for one capacity, so a buffer freed by any of them fits the
        # next (memory a piece does not fill is never touched).
        super().__init__(max(self.lead + length, capacity), pool)
        self.got = 0
        self.written = 0

    def put(self, chunk: bytes | memoryview) -> None:
        at = self.lead + self.got
        self.view[at : at + len(chunk)] = chunk
        self.got += len(chunk)

    def data(self, stop: int | None = None) -> memoryview:
        return self.view[self.lead : self.lead + (self.got if stop is None else stop)]

    def write_out(self, file: DirectFile, *, tail: bool) -> None:
        """Write the bytes not on disk yet (in a worker thread): whole blocks only, or all."""
        base = self.start - self.lead
        stop = self.lead + self.got
        if not tail:
            stop -= (base + stop) % ALIGN
        begin = self.lead + self.written
        if stop > begin:
            file.write_region(base, begin, self.view[begin:stop])
            self.written = stop - self.lead


class _Slot(_Held):
    """One buffer of the ring and the jobs still reading it."""

    def __init__(self, pool: BufferPool) -> None:
        super().__init__(CAPACITY, pool, huge=True)
        self.pending: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        pending, self.pending = self.pending, None
        if pending is not None:
            await settled(pending)  # the buffer is not reused before its jobs end


class StreamWriter:
    """Writes and hashes bytes handed over in order, from file offset ``at`` on.

    Bytes are copied (a short memcpy on the event loop) into one of two buffers. Index 0 of
    the current buffer stands for file offset ``base`` (a multiple of ALIGN), so aligned file
    offsets are aligned addresses too; ``[head, fill)`` holds bytes not yet sent on. Whole
    aligned blocks go to two chains of worker-thread jobs, one writing and one hashing, each
    a single call that releases the GIL; both chains keep file order. While they work on one
    buffer the event loop receives into the other. Callers run one coroutine at a time.
    """

    SLOTS = 2

    def __init__(self, file: DirectFile, at: int, hasher: Any, *, pool: BufferPool) -> None:
        self.file = file
        self.hasher = hasher
        self._slots = [_Slot(pool) for _ in range(self.SLOTS)]
        self._current = 0
        self.base = at - at % ALIGN
        self.head = self.fill = at % ALIGN
        self._last_write: asyncio.Future[None] | None = None
        self._last_hash: asyncio.Future[None] | None = None

    @property
    def end(self) -> int:
        """The file offset after the last byte handed over."""
        return self.base + self.fill

    async def write(self, chunks: Iterable[bytes]) -> None:
        """Take ``chunks``: whole aligned blocks start on their way, an unaligned tail waits."""
        slot = self._slots[self._current]
        await slot.wait()
        for chunk in chunks:
            pos, size = 0, len(chunk)
            while pos < size:
                view = self._slots[self._current].view
                take = min(len(view) - self.fill, size - pos)
                view[self.fill : self.fill + take] = chunk[pos : pos + take]
                self.fill += take
                pos += take
                if self.fill == len(view):
                    await self._send(self.fill - self.fill % ALIGN)
        await self._send(self.fill - self.fill % ALIGN)

    async def flush(self) -> None:
        """Wait for every job in flight (a write error is raised here)."""
        pending = [slot.pending for slot in self._slots if slot.pending is not None]
        for slot in self._slots:
            slot.pending = None
        if pending:
            await settled(asyncio.ensure_future(_all_of(pending)))

    async def finish(self) -> None:
        """Write everything held, the unaligned tail too; more bytes may follow later."""
        await self._send(self.fill)
        await self.flush()

    def close(self) -> None:
        """Release the buffers (after flush; bytes still held are dropped)."""
        for slot in self._slots:
            slot.release()

    # -- inner workings
    async def _send(self, stop: int) -> None:
        """Start ``[head, stop)`` of the current buffer on its way; move on to the next buffer
        with what is left (under ALIGN bytes), once that buffer's earlier jobs are done."""
        start = self.head
        if stop <= start:
            return
        slot = self._slots[self._current]
        region = slot.view[start:stop]
        write = _after(self._last_write, self.file.write_region, self.base, start, region)
        self._last_write = write
        jobs = [write]
        if self.hasher is not None:
            self._last_hash = _after(self._last_hash, self.hasher.update, region)
            jobs.append(self._last_hash)
        slot.pending = asyncio.ensure_future(_all_of(jobs))
        cut = stop - stop % ALIGN
        self._current = (self._current + 1) % len(self._slots)
        following = self._slots[self._current]
        try:
            await following.wait()
        finally:
            # Also after a cancel or a failed write: wait() returns only once that buffer's
            # jobs have ended, and the layout must move with _current or later bytes would be
            # taken from the wrong buffer.
            tail = self.fill - cut
            following.view[:tail] = slot.view[cut : self.fill]
            self.base += cut
            self.head = stop - cut
            self.fill = tail


def _after(
    previous: asyncio.Future[None] | None, func: Callable[..., object], *args: Any
) -> asyncio.Future[None]:
    """``func(*args)`` in a worker thread once ``previous`` (the same chain's last job) ended."""

    async def job() -> None:
        if previous is not None:
            await asyncio.wait([previous])
            if previous.cancelled():
                raise asyncio.CancelledError
            previous.result()  # after a failed write, no later one may run (no holes)
        await asyncio.to_thread(func, *args)

    return asyncio.ensure_future(job())


async def _all_of(jobs: list[asyncio.Future[None]]) -> None:
    """Wait for every job (unlike gather, also after one failed), then raise the first error."""
    await asyncio.wait(jobs)
    for job in jobs:
        job.result()


class BackReader:
    """Feeds a file's bytes to a hash in file order, as far as it is told they are written:
    read into two buffers in turn (one is read while the other is hashed), with O_DIRECT where
    the file system takes it (no page cache is filled or evicted), else through the cache,
    dropped after. A segmented download's hash, behind connections writing far apart."""

    def __init__(self, path: Path, pool: BufferPool) -> None:
        self.path = path
        self.hashed = 0  # bytes from zero fed to the hash
        self._pool = pool
        self._buffers = [pool.take(READ_BLOCK), pool.take(READ_BLOCK)]
        self._views = [memoryview(b) for b in self._buffers]
        self._fd: int | None = None
        self._direct = bool(O_DIRECT)  # until the file system refuses it

    def close(self) -> None:
        for view in self._views:
            view.release()
        for buffer in self._buffers:
            self._pool.give_back(buffer)
        self._views, self._buffers = [], []
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    async def advance(self, hasher: Any, stop: int) -> None:
        """Feed bytes ``[hashed, stop)`` to ``hasher``."""
        if stop <= self.hashed:
            return
        at, which = self.hashed, 0
        pending: asyncio.Future[memoryview] | None = asyncio.ensure_future(
            asyncio.to_thread(self._read, which, at, stop)
        )
        try:
            while pending is not None:
                data = await settled(pending)
                pending = None
                if at + len(data) < stop:
                    which ^= 1
                    pending = asyncio.ensure_future(
                        asyncio.to_thread(self._read, which, at + len(data), stop)
                    )
                await in_thread(hasher.update, data)
                at = self.hashed = at + len(data)
                data.release()
        finally:
            if pending is not None:
                await asyncio.wait([pending])  # a buffer is not given back while being read

    def _open(self) -> int:
        if self._fd is None:
            flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
            if self._direct:
                try:
                    self._fd = os.open(self.path, flags | O_DIRECT)
                except OSError:
                    self._direct = False  # EINVAL: this file system does not do O_DIRECT
            if self._fd is None:
                self._fd = os.open(self.path, flags)
        return self._fd

    def _read(self, which: int, at: int, stop: int) -> memoryview:
        """Up to READ_BLOCK bytes from ``at`` (before ``stop``), in a worker thread."""
        fd = self._open()
        base = at - at % ALIGN if self._direct else at
        want = min(READ_BLOCK, stop - base)
        if self._direct:
            want = -(-want // ALIGN) * ALIGN  # whole blocks (the last may end past the file)
        view = self._views[which][:want]
        try:
            got = os.preadv(fd, [view], base)
        except OSError as exc:
            if exc.errno != errno.EINVAL or not self._direct:
                raise
            # This file system takes O_DIRECT at open but not these reads: read through the cache.
            os.close(fd)
            self._fd, self._direct = None, False
            view.release()
            return self._read(which, at, stop)
        finally:
            view.release()
        end = min(stop, base + want)
        if got < end - base:
            raise IntegrityError(f"{self.path.name} is shorter than expected")
        if not self._direct and FADV_DONTNEED is not None:
            os.posix_fadvise(fd, base, got, FADV_DONTNEED)
        return self._views[which][at - base : end - base]
