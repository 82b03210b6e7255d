"""Writing in-order streams and segment pieces: O_DIRECT blocks plus ordinary unaligned ends."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import hashlib
import mmap
import os
import random
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fastio_dl import blockio
from fastio_dl.blockio import ALIGN, BufferPool, DirectFile, PieceBuffer, StreamWriter
from tests.conftest import let_tasks_run


def chunks_of(data: bytes, seed: int) -> list[bytes]:
    rng, out, pos = random.Random(seed), [], 0
    while pos < len(data):
        size = rng.choice([1, 100, 4095, 4096, 4097, 65_536, 300_000, 1_500_000])
        out.append(data[pos : pos + size])
        pos += size
    return out


def record_pwrites(
    monkeypatch: pytest.MonkeyPatch,
    fail: Callable[[int, int], OSError | None] = lambda fd, count: None,
) -> list[tuple[int, int, int]]:
    """Every ``os.pwrite`` blockio makes, as (fd, offset, length); ``fail(fd, calls so far)``
    may turn one into an error (that call is recorded too)."""
    real = os.pwrite
    calls: list[tuple[int, int, int]] = []

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        calls.append((fd, offset, len(data)))
        error = fail(fd, len(calls))
        if error is not None:
            raise error
        return real(fd, data, offset)

    monkeypatch.setattr(blockio.os, "pwrite", pwrite)
    return calls


async def stream_into(path: Path, start: int, chunks: list[bytes], direct: bool) -> DirectFile:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    file = DirectFile(fd, str(path))
    if not direct:
        file.close_direct()
    hasher = hashlib.sha256()
    writer = StreamWriter(file, start, hasher, pool=BufferPool())
    try:
        batch: list[bytes] = []
        for chunk in chunks:
            batch.append(chunk)
            if len(batch) == 5:
                await writer.write(batch)
                batch = []
        await writer.write(batch)
        await writer.finish()
        assert writer.end == start + sum(len(c) for c in chunks)
        assert hasher.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()
    finally:
        writer.close()
        file.close_direct()
        os.close(fd)
    return file


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("start", [0, 700_000, ALIGN, 1])
def test_stream_writer_writes_every_byte_in_place(tmp_path: Path, direct: bool, start: int) -> None:
    data = random.Random(start).randbytes(12_345_679)
    path = tmp_path / "f.part"
    prefix = random.Random(9).randbytes(start)
    path.write_bytes(prefix)  # an earlier run's bytes, kept
    asyncio.run(stream_into(path, start, chunks_of(data, start), direct))
    assert path.read_bytes() == prefix + data


def test_whole_blocks_go_direct_where_the_file_system_allows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    probe = tmp_path / "probe"
    probe.write_bytes(b"")
    fd = blockio.open_direct(str(probe))
    if fd is None:
        pytest.skip("this file system refuses O_DIRECT (the ordinary path is tested above)")
    os.close(fd)
    writes = record_pwrites(monkeypatch)
    path = tmp_path / "f.part"
    path.write_bytes(b"")
    data = random.Random(1).randbytes(9_000_001)
    file = asyncio.run(stream_into(path, 0, chunks_of(data, 1), True))
    assert path.read_bytes() == data
    direct = [w for w in writes if w[0] != file.fd]
    ordinary = [w for w in writes if w[0] == file.fd]
    assert sum(w[2] for w in direct) == 9_000_001 - 9_000_001 % ALIGN
    assert all(offset % ALIGN == 0 and length % ALIGN == 0 for _, offset, length in direct)
    assert ordinary == [(file.fd, 9_000_001 - 9_000_001 % ALIGN, 9_000_001 % ALIGN)]


def test_a_refused_direct_write_falls_back_to_the_ordinary_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f.part"
    path.write_bytes(b"")
    fd = os.open(path, os.O_WRONLY)
    file = DirectFile(fd, str(path))
    if file.direct_fd is None:
        file.direct_fd = os.open(path, os.O_WRONLY)  # stands in for the direct descriptor
    direct = file.direct_fd
    calls = record_pwrites(
        monkeypatch,
        lambda fd, _: OSError(errno.EINVAL, "Invalid argument") if fd == file.direct_fd else None,
    )
    data = random.Random(2).randbytes(6_000_000)

    async def go() -> None:
        writer = StreamWriter(file, 0, None, pool=BufferPool())
        await writer.write(chunks_of(data, 2))
        await writer.finish()
        writer.close()

    asyncio.run(go())
    os.close(fd)
    refused = [call for call in calls if call[0] == direct]
    assert refused and file.direct_fd is None
    assert path.read_bytes() == data


def test_after_a_failed_write_no_later_write_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f.part"
    path.write_bytes(b"")
    calls = record_pwrites(
        monkeypatch,
        lambda fd, count: OSError(errno.ENOSPC, "No space left on device") if count == 2 else None,
    )
    fd = os.open(path, os.O_WRONLY)
    file = DirectFile(fd, str(path))
    file.close_direct()
    data = bytes(30 * 1024 * 1024)

    async def feed(writer: StreamWriter) -> None:
        for i in range(0, len(data), 1024 * 1024):
            await writer.write([data[i : i + 1024 * 1024]])
        await writer.finish()

    async def go() -> None:
        writer = StreamWriter(file, 0, None, pool=BufferPool())
        try:
            with pytest.raises(OSError, match="No space"):
                await feed(writer)
        finally:
            await asyncio.sleep(0.1)  # any stray job would run now
            writer.close()

    asyncio.run(go())
    os.close(fd)
    assert len(calls) == 2  # the failed write was the last one: no hole after it
    assert os.path.getsize(path) < len(data)


@pytest.mark.parametrize("start", [0, 1_500_001, 3 * ALIGN])
def test_piece_buffer_writes_blocks_then_the_tail(tmp_path: Path, start: int) -> None:
    path = tmp_path / "f.part"
    total = start + 3_000_003
    path.write_bytes(bytes(total))
    fd = os.open(path, os.O_WRONLY)
    file = DirectFile(fd, str(path))
    data = random.Random(start).randbytes(3_000_003)
    piece = PieceBuffer(start, len(data), pool=BufferPool())
    try:
        for chunk in chunks_of(data, 3):
            piece.put(chunk)
            if piece.got > 1_000_000 and not piece.written:
                piece.write_out(file, tail=False)
                assert piece.written and (start + piece.written) % ALIGN == 0
        piece.write_out(file, tail=True)
        assert piece.written == len(data) and bytes(piece.data()) == data
    finally:
        piece.release()
        file.close_direct()
        os.close(fd)
    assert path.read_bytes()[start:] == data


def test_the_buffer_pool_keeps_a_bounded_amount() -> None:
    pool = BufferPool()
    taken = [pool.take(size) for size in range(1, 40 * 1024 * 1024, 3 * 1024 * 1024 + 7)]
    assert all(len(b) % (1024 * 1024) == 0 and len(b) >= 1 for b in taken)
    for buffer in taken:
        pool.give_back(buffer)
    assert 0 < pool.kept <= blockio.POOL_BYTES
    rounded = pool.take(5 * 1024 * 1024 + 1)
    assert len(rounded) == 6 * 1024 * 1024  # whole MiB
    pool.give_back(rounded)
    again = pool.take(4 * 1024 * 1024 - 5)  # a pooled size comes back reused
    assert len(again) == 4 * 1024 * 1024  # 3 MiB + 7 bytes was taken first, as 4 MiB
    assert any(again is b for b in taken)
    assert not any(BufferPool().take(4 * 1024 * 1024) is b for b in taken)  # another run's
    pool.give_back(again)
    pool.close()
    assert pool.kept == 0 and all(b.closed for b in taken if b is not again)
    pool.give_back(rounded := pool.take(1))  # given back after the run: unmapped at once
    assert rounded.closed and pool.kept == 0


def _vm_flags(buffer: mmap.mmap | None) -> list[str]:
    """The kernel's VmFlags for the mapping that holds ``buffer`` (/proc/self/smaps)."""
    assert buffer is not None
    address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    mapping = None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                low, high = (int(x, 16) for x in head.split("-"))
                mapping = low <= address < high
            elif head == "VmFlags:" and mapping:
                return line.split()[1:]
    raise AssertionError("buffer not found in /proc/self/smaps")


@pytest.mark.skipif(sys.platform != "linux", reason="/proc/self/smaps and THP are Linux's")
def test_the_stream_ring_asks_for_huge_pages_and_pieces_do_not() -> None:
    pool = BufferPool()
    slot = blockio._Slot(pool)  # one of StreamWriter's ring buffers
    piece = PieceBuffer(0, 3 * 1024 * 1024, pool=pool)
    try:
        slot_flags, piece_flags = _vm_flags(slot._buffer), _vm_flags(piece._buffer)
        # private memory: shared memory never gets transparent huge pages
        assert "sh" not in slot_flags and "sh" not in piece_flags
        if os.path.exists("/sys/kernel/mm/transparent_hugepage/enabled"):
            assert "hg" in slot_flags  # MADV_HUGEPAGE
        assert "hg" not in piece_flags
    finally:
        slot.release()
        piece.release()


def test_a_write_cancelled_mid_way_leaves_exactly_the_bytes_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f.part"
    path.write_bytes(b"")
    real = DirectFile.write_region
    disk_free = threading.Event()  # the disk takes no write until the feeder is cancelled

    def slow(self: DirectFile, base: int, start: int, region: memoryview) -> None:
        disk_free.wait(10)
        real(self, base, start, region)

    monkeypatch.setattr(DirectFile, "write_region", slow)
    data = random.Random(4).randbytes(40_000_000)
    fd = os.open(path, os.O_WRONLY)
    file = DirectFile(fd, str(path))
    hasher = hashlib.sha256()

    async def go() -> int:
        writer = StreamWriter(file, 0, hasher, pool=BufferPool())
        taken = asyncio.Event()

        async def feed() -> None:
            for i in range(0, len(data), 1_000_003):
                await writer.write([data[i : i + 1_000_003]])
                taken.set()

        task = asyncio.ensure_future(feed())
        await asyncio.wait_for(taken.wait(), 10)
        await let_tasks_run()  # the feeder gets ahead of the disk and waits for a buffer
        task.cancel()
        disk_free.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        await writer.finish()  # what an interrupted transfer does before it closes
        writer.close()
        return writer.end

    taken = asyncio.run(go())
    file.close_direct()
    os.close(fd)
    assert 0 < taken < len(data)
    assert path.read_bytes() == data[:taken]
    assert hasher.hexdigest() == hashlib.sha256(data[:taken]).hexdigest()


def _takes_direct_reads(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDONLY | blockio.O_DIRECT) if blockio.O_DIRECT else None
    except OSError:
        return False
    if fd is not None:
        os.close(fd)
    return fd is not None


@pytest.mark.parametrize("how", ["o_direct", "page-cache", "o_direct-refused-at-read"])
async def test_the_hash_reads_back_in_order_to_any_offset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    data = random.Random(3).randbytes(9 * 1024 * 1024 + 4321)
    path = tmp_path / "f.part"
    path.write_bytes(data)
    direct = how == "o_direct" and _takes_direct_reads(path)
    if how == "page-cache":
        monkeypatch.setattr(blockio, "O_DIRECT", 0)
    elif how == "o_direct-refused-at-read":
        if not _takes_direct_reads(path):
            pytest.skip("this file system refuses O_DIRECT at open already")
        real = os.preadv

        def refuse_direct(fd: int, buffers: list[memoryview], at: int) -> int:
            if fcntl.fcntl(fd, fcntl.F_GETFL) & blockio.O_DIRECT:
                raise OSError(errno.EINVAL, "Invalid argument")
            return real(fd, buffers, at)

        monkeypatch.setattr(os, "preadv", refuse_direct)
    reader = blockio.BackReader(path, BufferPool())
    hasher = hashlib.sha256()
    try:
        for stop in (1, 4095, 4097, 5 * 1024 * 1024 + 3, 9 * 1024 * 1024, len(data)):
            await reader.advance(hasher, stop)
            assert reader.hashed == stop
            assert hasher.copy().hexdigest() == hashlib.sha256(data[:stop]).hexdigest()
        assert reader._direct is direct
    finally:
        reader.close()


# ----------------------------------------------------------------------------- small writes


def test_small_writes_hand_back_each_result_or_error_to_its_caller() -> None:
    writes = blockio.SmallWrites()

    def job(n: int) -> int:
        if n == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return n * n

    async def main() -> list[object]:
        return await asyncio.gather(
            *[writes.run(lambda n=n: job(n)) for n in range(8)], return_exceptions=True
        )

    results = asyncio.run(main())
    writes.close()
    assert results[:3] == [0, 1, 4] and results[4:] == [16, 25, 36, 49]
    assert isinstance(results[3], OSError) and results[3].errno == errno.ENOSPC
    assert len(writes._threads) == 0  # closed: its threads ended
    with pytest.raises(RuntimeError):
        asyncio.run(writes.run(lambda: 1))


def test_a_cancelled_small_write_is_awaited_to_its_end() -> None:
    """A cancel must not return while the thread may still be writing: the caller reads
    ``committed`` right after to learn whether the final name is in place."""
    writes = blockio.SmallWrites()
    ended = threading.Event()

    def slow() -> None:
        time.sleep(0.2)
        ended.set()

    async def main() -> bool:
        task = asyncio.ensure_future(writes.run(slow))
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return ended.is_set()

    assert asyncio.run(main()) is True
    writes.close()
