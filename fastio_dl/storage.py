"""Local side: ``.part`` files with a resume sidecar, verification, atomic rename.

A final file name only ever appears through :meth:`PartFile.commit`, after the size and hash
check passed and the bytes were fsynced; until then the bytes live in ``NAME.part``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fastio_dl.blockio import (
    BufferPool,
    DirectFile,
    PieceBuffer,
    SmallWrites,
    StreamWriter,
    in_thread,
)
from fastio_dl.errors import DiskSpaceError, IntegrityError, WriteError, human_bytes
from fastio_dl.hashing import digest_of, hash_file, new_hasher
from fastio_dl.models import PART_SUFFIX, SIDECAR_SUFFIX
from fastio_dl.names import directory_of

DISK_MARGIN = 1024 * 1024


class EmptyAtStart:
    """Which destination directories held nothing when this run first looked into them.

    A file planned into such a directory cannot be there already: whatever this run writes
    there it has reserved and decided on first, and the first look came before any of it.
    So deciding needs no stat of the file. A stat on the event loop of a directory in which
    worker threads are creating files waits behind them: 13% of the main thread in B1.
    """

    def __init__(self) -> None:
        self._known: dict[str, bool] = {}

    def holds_nothing(self, directory: str | Path) -> bool:
        directory = os.fspath(directory)
        if directory not in self._known:
            # The first answer stands: it was read before this run created anything there.
            # Read on the event loop: one directory entry (usually of a directory that does not
            # exist yet) costs less than a thread hop, and the first file of a run waits on it.
            self._known[directory] = _holds_nothing(directory)
        return self._known[directory]

    def exists(self, path: str | Path) -> bool:
        """Whether a planned file is there already: no stat when its directory held nothing.
        On the event loop: one stat at most, where a thread hop per file would cost more."""
        if self.holds_nothing(directory_of(path)):
            return False
        return os.path.exists(path)


def _holds_nothing(directory: str) -> bool:
    try:
        with os.scandir(directory) as entries:
            return next(entries, None) is None
    except FileNotFoundError:
        return True
    except OSError:
        return False  # not a directory, or not readable: look at each file as before


# ----------------------------------------------------------------------------- part files


@dataclass(frozen=True)
class PartMeta:
    """What the sidecar remembers so that the next run can resume safely."""

    node_id: str
    version: str | None
    hash: str | None
    hash_algo: str | None
    size: int


def part_path(final: Path) -> Path:
    return final.with_name(final.name + PART_SUFFIX)


def sidecar_path(final: Path) -> Path:
    return final.with_name(final.name + SIDECAR_SUFFIX)


class Leftovers:
    """A skipped file's ``NAME.part`` and sidecar (a run killed between the rename and the
    sidecar cleanup leaves one), found in one read of its directory, not two failing unlinks.

    This run writes neither for a skipped file (its path is claimed once), so what the
    directory held when first read is what there is to tidy. The last ``KEEP`` directories
    are remembered (files arrive folder by folder), each with its leftover names: usually none.
    """

    KEEP = 64

    def __init__(self) -> None:
        self._found: dict[str, set[str]] = {}  # oldest first

    def drop(self, final: str | os.PathLike[str]) -> None:
        """Remove ``final``'s ``.part`` and sidecar if its directory held them."""
        directory, name = os.path.split(final)
        found = self._found.get(directory)
        if found is None:
            if len(self._found) >= self.KEEP:
                del self._found[next(iter(self._found))]
            found = self._found[directory] = _leftovers_in(directory)
        if not found:
            return
        for leftover in (name + PART_SUFFIX, name + SIDECAR_SUFFIX):
            if leftover in found:
                found.discard(leftover)
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(directory, leftover))


_LEFTOVER_SUFFIXES = (PART_SUFFIX, SIDECAR_SUFFIX)


def _leftovers_in(directory: str) -> set[str]:
    try:
        names = os.listdir(directory or ".")  # names only: no entry objects for a thousand files
    except OSError:
        return set()
    return {name for name in names if name.endswith(_LEFTOVER_SUFFIXES)}


class DiskSpace:
    """Free space of the destination, re-read at most every ``ttl`` seconds (statvfs per file
    adds up over thousands of small files; reservations cover what changes in between)."""

    def __init__(self, directory: Path, ttl: float = 1.0) -> None:
        self.directory = directory
        self.ttl = ttl
        self._free: int | None = None
        self._read_at = 0.0

    def check(self, needed: int) -> None:
        now = time.monotonic()
        if self._free is None or now - self._read_at > self.ttl:
            try:
                self._free = shutil.disk_usage(self.directory).free
            except OSError:
                return
            self._read_at = now
        _check_free(self._free, needed)


def _check_free(free: int, needed: int) -> None:
    if needed + DISK_MARGIN > free:
        raise DiskSpaceError(
            f"not enough disk space: need {human_bytes(needed)}, have {human_bytes(free)}",
            "free some space or choose another destination with -d",
        )


def _write_error(path: Path, exc: OSError) -> WriteError:
    if exc.errno == errno.ENOSPC:
        return WriteError(f"disk full while writing {path.name}", "free some space, then run again")
    return WriteError(f"cannot write {path}: {exc.strerror or exc}")


def _open_nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o644)


_O_TMPFILE = getattr(os, "O_TMPFILE", 0)
#: Whether this kernel offers what unnamed files need (O_TMPFILE, /proc's descriptor links).
#: Whether they work at a destination is learnt by each run's :class:`Disk`.
UNNAMED_FILES = bool(_O_TMPFILE) and os.path.isdir("/proc/self/fd")


class Disk:
    """How one run writes files: the buffers of its large files (a :class:`BufferPool`),
    whether a small file is fsynced on its own (``sync``; else the run's
    :class:`~fastio_dl.durability.Flusher` syncs them in groups), and whether unnamed files
    work at its destination (``unnamed``, switched off for the rest of the run by the first
    failure). The engine makes one per run and closes it."""

    def __init__(self, *, sync: bool = True, unnamed: bool = UNNAMED_FILES) -> None:
        self.sync = sync
        self.unnamed = unnamed
        self.pool = BufferPool()
        self.small = SmallWrites()  # small files' check and write

    def close(self) -> None:
        self.small.close()
        self.pool.close()

    def write_atomic(self, final: Path, data: bytes) -> None:
        """Write verified bytes and only then give them the final name (one thread hop); with
        ``sync``, fsync them first (without, the Flusher makes them durable in a group).

        Where the system allows, the bytes go into an unnamed file (O_TMPFILE) that is then
        linked in under the final name: one change to the directory instead of two (create
        ``NAME.part``, rename it), and the directory's lock is what concurrent small-file
        writers queue on. A final name that already exists is replaced the classic way, by a
        rename. Plain descriptor calls throughout: on thousands of small files each system
        call counts.
        """
        if self.unnamed:
            try:
                if _write_unnamed(final, data, self.sync):
                    return
            except OSError:
                # Unnamed files, or linking one in through /proc, do not work here (no support
                # in the file system, a sandboxed /proc): .part files from now on. A real disk
                # error (full, read-only) comes again just below and is reported from there.
                self.unnamed = False
        _write_part(final, data, self.sync)


def _write_part(final: Path, data: bytes, sync: bool) -> None:
    """Write ``final`` through ``NAME.part`` and a rename."""
    part = part_path(final)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    try:
        try:
            fd = _open_nofollow(str(part), flags)
        except FileNotFoundError:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd = _open_nofollow(str(part), flags)
        try:
            _fill(fd, data, sync)
        finally:
            os.close(fd)
        os.replace(part, final)
    except OSError as exc:
        with contextlib.suppress(OSError):
            part.unlink()
        raise _write_error(final, exc) from exc


def _write_unnamed(final: Path, data: bytes, sync: bool) -> bool:
    """Write ``final`` through an unnamed file; False when its directory does not exist yet."""
    try:
        fd = os.open(directory_of(final), os.O_WRONLY | _O_TMPFILE, 0o644)
    except FileNotFoundError:
        return False
    try:
        _fill(fd, data, sync)
        # linkat(2) following /proc's link to the open file: a src_dir_fd makes Python call
        # linkat (with AT_SYMLINK_FOLLOW) rather than link(2); the path is absolute anyway.
        source = f"/proc/self/fd/{fd}"
        try:
            os.link(source, final, src_dir_fd=fd, follow_symlinks=True)
        except FileExistsError:
            part = part_path(final)
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            os.link(source, part, src_dir_fd=fd, follow_symlinks=True)
            try:
                os.replace(part, final)
            except OSError:
                with contextlib.suppress(OSError):
                    part.unlink()
                raise
    finally:
        os.close(fd)
    return True


def _fill(fd: int, data: bytes, sync: bool) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    if sync:
        os.fsync(fd)


class MemoryPart:
    """A small file's bytes, kept in memory until verified, then written in one step.

    Same interface as :class:`PartFile`; no sidecar (re-fetching a small file costs less than
    tracking it), so an interrupted small file simply starts again on the next run.
    """

    def __init__(self, final: Path, meta: PartMeta, disk: Disk) -> None:
        self.final = final
        self.meta = meta
        self.disk = disk
        self._chunks: list[bytes] = []  # the body as it came (no copy until it is written)
        self._size = 0
        self.is_open = False
        self._digest: tuple[int, str | None] | None = None  # (length hashed, digest)
        self._done = False  # verified and written
        self.committed = False  # the final name is in place (set by the writing thread)
        self._warning: str | None = None

    @property
    def path(self) -> Path:
        """Where a ``.part`` would be (a small file never has one of its own)."""
        return part_path(self.final)

    @property
    def offset(self) -> int:
        return self._size

    def resumable_offset(self) -> int:
        return 0

    async def open(self, offset: int) -> None:
        if offset == 0:
            self._chunks, self._size = [], 0
        self._digest = None
        self.is_open = True

    async def write(self, chunks: list[bytes]) -> None:
        self._chunks += chunks
        self._size += sum(map(len, chunks))
        self._digest = None

    async def close(self) -> None:
        self.is_open = False

    async def verify(self) -> str | None:
        """Check size and hash and, when they pass, write the file, in one job on the run's
        small-write threads (hand-offs, not bytes, are what small files cost)."""
        if not self._done:
            # A cancel waits for the job to end, so ``committed`` is then the truth.
            self._warning = await self.disk.small.run(self._verify_and_write)
            self._done = True
        return self._warning

    def _verify_and_write(self) -> str | None:
        warning = _verify(self.offset, self.meta, self._cached_digest)
        self.disk.write_atomic(self.final, self._body())
        self.committed = True
        return warning

    def _body(self) -> bytes:
        """The body in one piece (joined once: a body that came in one chunk is not copied)."""
        if len(self._chunks) != 1:
            self._chunks = [b"".join(self._chunks)]
        return self._chunks[0]

    def _cached_digest(self) -> str | None:
        # verify() runs after the last attempt and again before commit: hash only once.
        if self._digest is None:
            self._digest = (self._size, digest_of(self.meta.hash_algo, self._body()))
        return self._digest[1]

    async def commit(self) -> None:
        await self.verify()  # verify() writes; a no-op when it already ran

    async def discard(self) -> None:
        self._chunks, self._size = [], 0


def _verify(offset: int, meta: PartMeta, digest: Any) -> str | None:
    """Size, then hash; a warning (not a failure) when the hash cannot be checked."""
    if offset != meta.size:
        raise IntegrityError(f"size mismatch: got {offset} bytes, the API announced {meta.size}")
    value = digest()
    if value is None:
        algo = meta.hash_algo or "none"
        return f"hash not verified (algorithm {algo!r} {'unknown' if meta.hash else 'and no hash'})"
    if meta.hash and value != meta.hash.lower():
        raise IntegrityError(
            f"{meta.hash_algo} mismatch: got {value[:16]}..., expected {meta.hash.lower()[:16]}..."
        )
    if not meta.hash:
        return "hash not verified (the API gave no hash)"
    return None


class PartFile:
    """``NAME.part`` plus its sidecar: resumable bytes that become ``NAME`` only when verified.

    Writes are pipelined (see :class:`~fastio_dl.blockio.StreamWriter`): a batch is written and
    hashed in worker threads while the event loop receives the next one. At most one batch is in
    flight, so memory stays flat whatever the file size.
    """

    def __init__(self, final: Path, meta: PartMeta, disk: Disk) -> None:
        self.final = final
        self.meta = meta
        self.disk = disk  # its buffer pool serves this file's stream and pieces
        self.path = part_path(final)
        self.sidecar = sidecar_path(final)
        self.offset = 0  # bytes handed to write(), in order
        self._hasher: Any = None
        self._fd: int | None = None
        self._file: DirectFile | None = None
        self._saved_at = 0.0  # when save_segments last wrote the sidecar
        self._handed_over: tuple[int, Any] | None = None  # (size, hasher) from keep_prefix()
        self._writer: StreamWriter | None = None  # the single stream's writer (open())
        self.committed = False  # the final name is in place

    def resumable_offset(self) -> int:
        """Bytes of an earlier ``.part`` that can be kept (0 if the remote changed)."""
        try:
            saved = json.loads(self.sidecar.read_text(encoding="utf-8"))
            size = self.path.stat().st_size
        except (OSError, ValueError):
            return 0
        if saved != asdict(self.meta) or size > self.meta.size:
            return 0
        return size

    def _write_meta(self) -> None:
        """The sidecar of a one-stream ``.part``: which remote bytes it holds (no pieces)."""
        self.sidecar.write_text(json.dumps(asdict(self.meta)), encoding="utf-8")

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    async def open(self, offset: int) -> None:
        """Open for writing at ``offset`` (0 truncates) and hash the kept prefix."""
        await self.close()
        self._hasher = new_hasher(self.meta.hash_algo)
        handed, self._handed_over = self._handed_over, None
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            algo = (self.meta.hash_algo or "").lower()
            if handed is not None and offset == handed[0] and offset > 0:
                self._hasher = handed[1]  # keep_prefix() hashed these bytes from memory
            elif offset > 0 and self._hasher is not None:
                self._hasher, offset = await asyncio.to_thread(hash_file, self.path, algo, offset)
            if offset == 0:
                self._write_meta()
            self._fd = _open_nofollow(str(self.path), os.O_WRONLY | os.O_CREAT)
            os.ftruncate(self._fd, offset)
        except OSError as exc:
            raise _write_error(self.path, exc) from exc
        self._file = DirectFile(self._fd, str(self.path))
        self._writer = StreamWriter(self._file, offset, self._hasher, pool=self.disk.pool)
        self.offset = offset

    async def write(self, chunks: list[bytes]) -> None:
        """Queue ``chunks`` at the current offset; waits only for the previous batch."""
        writer = self._writer
        if writer is None or writer.end != self.offset:
            raise WriteError(f"{self.path} is not open at byte {self.offset}")
        try:
            await writer.write(chunks)
        except OSError as exc:
            raise _write_error(self.path, exc) from exc
        finally:
            self.offset = writer.end  # what the writer took, also when cut short

    async def flush(self) -> None:
        """Wait for the batch in flight; its write error, if any, is raised here."""
        if self._writer is not None:
            await self._mapped(self._writer.flush())

    async def settle(self) -> None:
        """Write every byte handed over so far, the unaligned tail included."""
        if self._writer is not None:
            await self._mapped(self._writer.finish())

    async def _mapped(self, step: Awaitable[None]) -> None:
        try:
            await step
        except OSError as exc:
            raise _write_error(self.path, exc) from exc

    async def close(self) -> None:
        try:
            await self.settle()
        finally:
            if self._writer is not None:
                writer, self._writer = self._writer, None
                writer.close()
            if self._file is not None:
                file, self._file = self._file, None
                file.close_direct()
            if self._fd is not None:
                fd, self._fd = self._fd, None
                with contextlib.suppress(OSError):
                    os.close(fd)

    async def verify(self) -> str | None:
        """Check size and hash; return a warning when the hash cannot be checked."""
        await self.settle()
        hasher = self._hasher
        return _verify(
            self.offset, self.meta, lambda: None if hasher is None else hasher.hexdigest()
        )

    async def commit(self) -> None:
        """fsync, then atomically rename over the final name and drop the sidecar."""
        try:
            await self.settle()
            if self._fd is not None:
                await asyncio.to_thread(os.fsync, self._fd)
            await self.close()
            # in_thread: a cancel waits for the rename, so ``committed`` is then the truth.
            await in_thread(os.replace, self.path, self.final)
            self.committed = True
        except OSError as exc:
            raise _write_error(self.final, exc) from exc
        with contextlib.suppress(OSError):
            self.sidecar.unlink()

    # -- segmented downloads: ranges written in place into one preallocated file

    def saved_segments(self) -> list[list[int]] | None:
        """Segments ``[start, end, done]`` of an earlier segmented run of the same remote bytes;
        a single-stream ``.part`` of the same remote counts as a done prefix."""
        try:
            saved = json.loads(self.sidecar.read_text(encoding="utf-8"))
            size = self.path.stat().st_size
        except (OSError, ValueError):
            return None
        segments = saved.pop("segments", None) if isinstance(saved, dict) else None
        if saved != asdict(self.meta):
            return None
        if segments is None:
            return [[0, self.meta.size - 1, min(size, self.meta.size)]] if size else None
        return [list(map(int, seg)) for seg in segments]

    async def open_segmented(self, segments: list[list[int]], fresh: bool) -> None:
        await self.close()
        try:
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self._fd = _open_nofollow(str(self.path), os.O_WRONLY | os.O_CREAT)
            if fresh:
                os.ftruncate(self._fd, 0)
            if hasattr(os, "posix_fallocate") and self.meta.size:
                # Reserve the blocks now: a full disk fails here, not half-way through.
                os.posix_fallocate(self._fd, 0, self.meta.size)
            else:
                os.ftruncate(self._fd, self.meta.size)
        except OSError as exc:
            raise _write_error(self.path, exc) from exc
        self._file = DirectFile(self._fd, str(self.path))
        self.save_segments(segments)

    def save_segments(self, segments: list[list[int]], *, every: float = 0.0) -> None:
        """Record each piece's progress in the sidecar (skipped if the last record is younger
        than ``every`` seconds: progress only decides where a killed run resumes)."""
        now = time.monotonic()
        if every and now - self._saved_at < every:
            return
        self._saved_at = now
        record = {**asdict(self.meta), "segments": segments}
        tmp = self.sidecar.with_name(self.sidecar.name + ".tmp")
        try:
            tmp.write_text(json.dumps(record), encoding="utf-8")
            os.replace(tmp, self.sidecar)
        except OSError as exc:
            raise _write_error(self.sidecar, exc) from exc

    async def keep_prefix(self, size: int, hasher: Any) -> None:
        """Turn a segmented ``.part`` into a one-stream one holding its first ``size`` bytes,
        already hashed into ``hasher`` (the next open(size) goes on from there), then close."""
        try:
            if self._fd is not None:
                os.ftruncate(self._fd, size)
            self._write_meta()
        except OSError as exc:
            raise _write_error(self.path, exc) from exc
        finally:
            await self.close()
        self._handed_over = (size, hasher)

    async def write_piece(self, piece: PieceBuffer, *, tail: bool) -> None:
        """Write a segment buffer's bytes not on disk yet: whole blocks, or all with ``tail``."""
        file = self._file
        if file is None:
            raise WriteError(f"{self.path} is closed")
        await self._mapped(in_thread(piece.write_out, file, tail=tail))

    def set_result(self, size: int, hasher: Any) -> None:
        """Record what a segmented download verified, for verify() and commit()."""
        self.offset = size
        self._hasher = hasher

    async def discard(self) -> None:
        """Remove the partial and its sidecar (the remote changed or the bytes were wrong)."""
        with contextlib.suppress(Exception):
            await self.close()
        for path in (self.path, self.sidecar):
            with contextlib.suppress(OSError):
                path.unlink()
