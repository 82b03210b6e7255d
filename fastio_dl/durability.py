"""Durability: when written files are on disk, and what waits for that.

A small file gets its final name without an fsync of its own; a :class:`Flusher` makes the
files written so far durable in groups (one syncfs(2) per file system) and only then lets their
records be committed and their reports go out. With ``--fsync each`` (or where syncfs(2) is
missing) every file is fsynced before it gets its name.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastio_dl.names import directory_of

FLUSH_FILES = 2048  # files per group sync, at most (a group also ends after FLUSH_SECONDS)
FLUSH_SECONDS = 0.25
FLUSH_BACKLOG = 4 * FLUSH_FILES  # files waiting for a sync before writers are held back


@functools.cache  # what the C library offers: looked up once, the same answer for every run
def _libc_syncfs() -> Any:
    """libc's syncfs(2) (Linux): one call writes a whole file system's dirty data to disk."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def syncfs(fd: int) -> None:
    """syncfs(2) on ``fd``'s file system; OSError when it fails or does not exist here."""
    function = _libc_syncfs()
    if function is None:
        raise OSError(errno.ENOSYS, "syncfs is not available on this system")
    if function(fd) != 0:
        import ctypes

        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def has_syncfs() -> bool:
    return _libc_syncfs() is not None


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Flusher:
    """Makes written files durable in groups, and only then runs what waited for that.

    Per-file fsync is what small files cost most (the B7 profile: most thread time). So with
    ``each`` False, a small file gets its final name without an fsync of its own, and
    :meth:`add` queues what must wait until it is durable (sync's state record, the file's
    report). Every FLUSH_FILES files or FLUSH_SECONDS, one syncfs(2) per file system written to
    puts every byte and every name written so far on disk; then the records staged before that
    sync started are committed (``take`` hands them over) and the reports go out. A crash can
    lose a file that was linked but not yet synced, never one that a state record claims: the
    next run finds it untracked and hashes it before trusting it.

    A file whose bytes were fsynced before it got its name (every file over 1 MiB, and every
    file with ``each`` True) needs only its name made durable: the group fsyncs its directory
    instead of syncing the whole file system, which would also write out whatever other
    programs left dirty there (a large download beside another large write paid for both).
    The records and reports are grouped either way (one state transaction per group). Where
    syncfs(2) is missing, ``each`` is the only mode (see :func:`has_syncfs`).
    """

    def __init__(
        self,
        dest: Path,
        *,
        each: bool,
        take: Callable[[], Callable[[], None] | None],
    ) -> None:
        self.dest = dest
        self.each = each
        self._take = take
        self._pending: list[Callable[[str | None], None]] = []
        self._device_of: dict[str, int] = {}  # each directory written to: its file system
        # This group's work: a directory on each file system holding bytes not yet synced, and
        # the directories of files whose bytes are synced but whose names are not.
        self._devices: dict[int, str] = {}
        self._dirs: set[str] = set()
        self._due = asyncio.Event()  # a group is full, or the run ends
        self._wake = asyncio.Event()  # something is pending
        self._drained = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def add(
        self, path: Path, done: Callable[[str | None], None], *, synced: bool = False
    ) -> None:
        """Call ``done(None)`` once ``path`` (written, named) is durable, or ``done(error)``.
        ``synced``: its bytes were fsynced before it got its name; only the name is left."""
        directory = directory_of(path)
        if synced or self.each:
            self._dirs.add(directory)
        else:
            device = self._device_of.get(directory)
            if device is None:
                try:
                    device = self._device_of[directory] = os.stat(directory).st_dev
                except OSError:
                    device = -1  # gone already: the destination's file system stands in
            if device not in self._devices:
                self._devices[device] = str(self.dest) if device == -1 else directory
        self._pending.append(done)
        self._wake.set()
        if len(self._pending) >= FLUSH_FILES:
            self._due.set()
        while len(self._pending) >= FLUSH_BACKLOG and self._task is not None:
            # Held back (already queued: a cancel here loses nothing) while a slow disk syncs.
            self._drained.clear()
            await self._drained.wait()

    def nudge(self) -> None:
        """Records were staged without a file of ours (an adopted one): sync them soon."""
        self._wake.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            await self._wake.wait()
            deadline = loop.time() + FLUSH_SECONDS
            while not self._closing and not self._due.is_set():
                left = deadline - loop.time()
                if left <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._due.wait(), left)
            await self.flush()

    async def flush(self) -> None:
        """Sync what was written so far, commit the staged records, run the waiting calls."""
        self._wake.clear()
        self._due.clear()
        waiting, self._pending = self._pending, []
        commit = self._take()  # taken before the sync: every record it holds is covered
        devices, self._devices = list(self._devices.values()), {}
        dirs, self._dirs = sorted(self._dirs), set()
        error = None
        if waiting or commit is not None:
            try:
                if devices or dirs:
                    await asyncio.to_thread(_make_durable, devices, dirs)
                if commit is not None:
                    commit()
            except OSError as exc:
                error = f"could not make the file durable on disk: {exc.strerror or exc}"
            except Exception as exc:  # sqlite3.Error: the state database refused the records
                error = f"could not record the file in the sync state: {exc}"
        for done in waiting:
            done(error)
        self._drained.set()

    async def close(self) -> None:
        """Flush what is left and stop."""
        self._closing = True
        self._due.set()
        self._wake.set()
        if self._task is not None:
            task, self._task = self._task, None
            await task
        await self.flush()


def _make_durable(devices: list[str], dirs: list[str]) -> None:
    """syncfs(2) the file system of each of ``devices``; fsync each of ``dirs`` on another."""
    synced: set[int] = set()
    for directory in devices:
        fd = os.open(directory, os.O_RDONLY)
        try:
            device = os.fstat(fd).st_dev
            if device not in synced:
                syncfs(fd)
                synced.add(device)
        finally:
            os.close(fd)
    for directory in dirs:
        try:
            fd = os.open(directory, os.O_RDONLY)
        except FileNotFoundError:
            continue  # removed since (an emptied folder): no name in it left to keep
        try:
            if os.fstat(fd).st_dev not in synced:
                os.fsync(fd)
        finally:
            os.close(fd)
