"""Segmented downloads: one large file over several ranged connections into one ``.part``.

Terms:

piece
    A byte range ``[start, end, done]`` of the file, fetched by one ranged request (retried and
    resumed on its own); ``done`` bytes of it are on disk. :func:`split_segments` cuts them.
lane
    One of the ``--segments`` connections: it takes pieces in file order until none is left.
window
    How many pieces may be held in memory at once (``--segments + 1``, plus one per handover):
    a lane that runs too far ahead of the hash waits for it.
frontier
    The hash, taking the pieces in file order straight from memory as their bytes arrive; a
    piece leaves memory once it is hashed and on disk.
probe
    On a fresh large file the first lane runs alone for a moment: if it alone moves
    FAST_LINK bytes a second, more connections would only cost CPU, and the file goes on as
    one stream from where it is (FastLinkError).
handover
    When each request waits long for its first bytes, a lane near the end of its piece starts
    its successor, which asks for the next piece early, so no connection idles through a
    request's dead time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from fastio_dl.blockio import ALIGN, PieceBuffer, in_thread
from fastio_dl.config import Settings
from fastio_dl.errors import (
    ApiError,
    FastioDlError,
    IntegrityError,
    ShortReadError,
    TransferError,
    human_bytes,
)
from fastio_dl.events import FileProgress, FileRetry, FileStarted, Notice
from fastio_dl.fetch import Fetcher, FetchState
from fastio_dl.hashing import new_hasher
from fastio_dl.models import PlanItem
from fastio_dl.storage import PartFile

MIN_PIECE = 4 * 1024 * 1024
PIECES_PER_CONNECTION = 8
SEGMENT_BLOCK = 4 * 1024 * 1024  # a piece goes to disk (a resume point) and to the hash
SAVE_EVERY = 0.2  # seconds between sidecar records of piece progress while pieces stream
SEGMENT_MEMORY = 40 * 1024 * 1024  # pieces held in memory per segmented file, at most
PROBE_WAIT = 0.010  # how long the first connection's response may take for its speed to count
PROBE_SECONDS = 0.004  # how long its bytes then flow alone before their speed is judged
FAST_LINK = 100 * 1024 * 1024  # bytes/s one connection must move to make more pointless
PROBE_MIN = 256 * 1024 * 1024  # smaller files finish in seconds on such a link either way
HANDOFF_LATENCY = 0.005  # a piece's request waiting this long (s) is worth asking for early
BURST = 0.002  # bytes within this long (s) of a response's first ones came at once


class FastLinkError(TransferError):
    """The first segment connection alone is fast: the file goes on as one stream."""


class RangeUnsupportedError(TransferError):
    """A ranged request was answered with the whole body: segments are not possible."""


def is_segmentable(settings: Settings, item: PlanItem) -> bool:
    """Whether ``item`` is large enough for ``--segments`` connections."""
    return settings.segments > 1 and item.remote.size >= max(
        settings.segment_threshold, settings.segments
    )


async def fetch_segmented(
    fetcher: Fetcher, item: PlanItem, final: Path, part: PartFile, token: str | None
) -> int:
    """Fetch ``--segments`` byte ranges at once into one preallocated ``.part``.

    The file is cut into pieces that the connections take in file order. A piece arrives
    into memory and goes to disk every 4 MiB (the sidecar records each piece's progress, so
    every piece resumes on its own); the hash takes the pieces in order straight from
    memory. At most one piece more than there are connections is held, plus one for each
    connection handing over to its successor (see hand_off_near_end): memory is bounded.
    """
    remote = item.remote
    size = remote.size
    saved = part.saved_segments()
    segments = split_segments(size, fetcher.settings.segments, saved)
    fetcher.reporter.emit(FileStarted(item.key, str(final), size, sum(seg[2] for seg in segments)))
    state = FetchState(token=token)
    for round_number in range(fetcher.settings.retries + 1):
        await part.open_segmented(segments, fresh=saved is None)
        hasher = new_hasher(remote.hash_algo)
        run = _SegmentedRun(fetcher, item, final, part, segments, state, hasher)
        try:
            await run.run(probe=saved is None and round_number == 0 and size >= PROBE_MIN)
        except FastLinkError:
            await part.keep_prefix(run.prefix, run.hasher)
            raise
        except BaseException:
            with contextlib.suppress(FastioDlError):
                part.save_segments(segments)
            await part.close()  # keep .part and sidecar: the next run resumes the pieces
            raise
        part.set_result(size, hasher)
        try:
            warning = await part.verify()
        except IntegrityError as exc:
            # Which range was wrong is unknown: start the whole file again.
            fetcher.reporter.emit(FileProgress(item.key, -size))
            fetcher.reporter.emit(FileRetry(item.key, str(final), round_number + 1, str(exc), 0.0))
            await part.discard()
            segments, saved = split_segments(size, fetcher.settings.segments, None), None
            if round_number == fetcher.settings.retries:
                raise
            continue
        if warning:
            fetcher.reporter.emit(Notice("warning", f"{final}: {warning}"))
        await part.commit()
        fetcher.learn(state)
        return state.transferred
    raise AssertionError("unreachable")  # pragma: no cover


def split_segments(size: int, count: int, saved: list[list[int]] | None) -> list[list[int]]:
    """Pieces ``[start, end, done]`` covering ``size`` bytes for ``count`` connections: about
    eight per connection, 4 MiB at least (the ramps below excepted), small enough that
    ``count + 1`` of them fit in SEGMENT_MEMORY where 4 MiB allows, never fewer than
    ``count``. An earlier run's progress is kept (a single-stream prefix marks the leading
    pieces done; larger pieces are cut again).

    Connections take pieces in file order, and the hash takes them in file order from memory.
    Equal connections given equal pieces would finish a round of pieces all at once: the hash
    then has a round to catch up on while the memory window holds the connections back. So the
    first ``count`` pieces grow from 1/count of a piece to a whole one (the connections end up
    1/count of a piece apart, and stay so), and the last ``count`` shrink the same way (all
    connections finish together). Files too small for that get whole rounds of equal pieces.
    """
    cap = max(SEGMENT_BLOCK, SEGMENT_MEMORY // (count + 1) // ALIGN * ALIGN)  # whole blocks
    if saved and all(len(seg) == 3 for seg in saved) and len(saved) > 1:
        return [piece for seg in saved for piece in _cut(seg, cap)]
    step = min(max(-(-size // (count * PIECES_PER_CONNECTION)), MIN_PIECE), cap, -(-size // count))
    pieces = -(-size // step)
    if count > 1 and pieces > count:
        # The two ramps hold count + 1 whole pieces between them, in steps of 1/count.
        ramp = list(range(1, count + 1))
        units = [*ramp, *[count] * (pieces - count - 1), *reversed(ramp)]
    else:
        # Whole rounds: no last round where a few connections fetch odd pieces, the rest idle.
        rounds = -(-pieces // count)
        units = [1] * (rounds * count)
    total = sum(units)
    edges, done = [0], 0
    for unit in units[:-1]:
        done += unit
        edge = size * done // total
        if size // len(units) >= 1024 * 1024:
            edge = edge // ALIGN * ALIGN  # whole blocks: pieces can go to disk with O_DIRECT
        if edges[-1] < edge < size:
            edges.append(edge)
    edges.append(size)
    segments = [[first, after - 1, 0] for first, after in itertools.pairwise(edges)]
    prefix = saved[0][2] if saved else 0
    for seg in segments:
        seg[2] = max(0, min(seg[1] - seg[0] + 1, prefix - seg[0]))
    return segments


def _cut(seg: list[int], cap: int) -> list[list[int]]:
    """A saved piece larger than ``cap`` as several, its done bytes a prefix of them."""
    start, end, done = seg
    if end - start + 1 <= cap:
        return [seg]
    pieces = []
    for first in range(start, end + 1, cap):
        last = min(end, first + cap - 1)
        pieces.append([first, last, max(0, min(last - first + 1, start + done - first))])
    return pieces


class _SegmentedRun:
    """One round of a segmented download: connections taking pieces, and the hash frontier."""

    def __init__(
        self,
        fetcher: Fetcher,
        item: PlanItem,
        final: Path,
        part: PartFile,
        segments: list[list[int]],
        state: FetchState,
        hasher: Any,
    ) -> None:
        self.fetcher = fetcher
        self.item = item
        self.final = final
        self.part = part
        self.segments = segments
        self.state = state
        self.hasher = hasher
        self.changed = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []  # the connections
        self.saves: list[asyncio.Future[None]] = []  # whole pieces going to disk
        self.pieces: dict[int, PieceBuffer] = {}
        self.prefix = 0  # after FastLinkError: bytes from zero on disk and in ``hasher``
        self._window = _Window(fetcher.settings.segments + 1)
        self._capacity = ALIGN + max(end - start + 1 for start, end, _ in segments)
        self.todo = collections.deque(
            i for i, (start, end, done) in enumerate(segments) if done < end - start + 1
        )
        # Recent requests: seconds from asking to the first bytes, and how many came at once.
        self._waits: list[tuple[float, int]] = []
        self._probing = False
        self._answered = asyncio.Event()  # while probing: the first response is in
        self._stopping = False

    async def run(self, *, probe: bool = False) -> None:
        """Fetch and hash every piece.

        With ``probe``, the first connection runs alone while its speed is judged (see
        _probe). If it moves FAST_LINK bytes a second, more connections would only cost CPU on
        both ends: what it fetched is hashed (``prefix`` bytes, in ``hasher``) and FastLinkError
        hands the file to one stream. Otherwise the other connections join.
        """
        count = min(self.fetcher.settings.segments, len(self.todo))
        tasks = self.tasks
        self._probing = probe and count > 1
        tasks.append(asyncio.create_task(self._connection()))
        try:
            if self._probing:
                rate = await self._probe()
                self._probing = False
                if rate >= FAST_LINK and not tasks[0].done():
                    await self._stop()
                    await self._hash_prefix()
                    raise FastLinkError(
                        f"one connection moves {human_bytes(int(rate))}/s; one stream from here"
                    )
            tasks += [asyncio.create_task(self._connection()) for _ in range(count - 1)]
            await self._frontier()
            while True:  # a connection may have started its successor meanwhile
                running = [*tasks, *self.saves]
                await asyncio.gather(*running)
                if len(running) == len(tasks) + len(self.saves):
                    break
        except BaseException:
            await self._stop()
            raise
        finally:
            for piece in self.pieces.values():
                piece.release()
            self.pieces.clear()

    async def _probe(self) -> float:
        """The first connection's speed in bytes a second: its bytes over PROBE_SECONDS from
        its response, or 0 when the response takes longer than PROBE_WAIT.

        The window starts at the response, not the request, so a server's wait before it
        answers does not count against the link; and a link whose response is slow is not one
        where a single connection is enough. A server that paces its bytes is found out within
        PROBE_SECONDS of its response (few bytes), not at its first paced bytes.
        """
        answered = asyncio.ensure_future(self._answered.wait())
        try:
            await asyncio.wait(
                [answered, *self.tasks], timeout=PROBE_WAIT, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            answered.cancel()
        if not self._answered.is_set():
            return 0.0
        began, before = time.monotonic(), self.state.transferred
        await asyncio.wait(self.tasks, timeout=PROBE_SECONDS)
        return (self.state.transferred - before) / max(time.monotonic() - began, 1e-3)

    def save(self, job: Awaitable[None]) -> None:
        """Write a whole piece beside the connections (the frontier sees a failure)."""
        self.saves.append(asyncio.ensure_future(job))

    async def _stop(self) -> None:
        """Stop the connections; writes of whole pieces finish: what is on disk is kept."""
        self._stopping = True
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, *self.saves, return_exceptions=True)

    async def _hash_prefix(self) -> None:
        """Hash, from memory, the bytes from zero that the stopped connections left on disk
        with no gap; ``prefix`` says how many."""
        self.prefix = 0
        for index, (start, end, _) in enumerate(self.segments):
            piece = self.pieces.get(index)
            if piece is None or start != self.prefix:
                return
            if self.hasher is not None:
                await in_thread(self.hasher.update, piece.data(piece.written))
            self.prefix += piece.written
            if piece.written < end - start + 1:
                return

    def answered(self) -> None:
        """A piece's response is in; its bytes follow."""
        self._answered.set()

    def heard(self, wait: float, first: int) -> None:
        """A piece's request took ``wait`` seconds from asking to its first ``first`` bytes."""
        self._waits.append((wait, first))
        del self._waits[:-9]

    def hand_off_near_end(self, lane: _Lane, piece: PieceBuffer, flow: _Flow) -> None:
        """Ask for the next piece early when each request waits long for its first bytes.

        Each piece is a request of its own, and a connection would sit idle for that wait
        before every piece. So when what is left of this piece will take about as long to
        arrive as a request's dead time (below), a successor connection asks for the next piece
        now and this one ends with its piece: the successor's first bytes come as this piece's
        last ones do, or just after. The number of connections moving bytes stays
        ``--segments``.
        """
        if self._probing or self._stopping or not self.todo or not self._waits:
            return
        elapsed = time.monotonic() - flow.began - BURST
        if elapsed < 0.02 or not flow.got:
            return  # too early to know this connection's rate
        rate = flow.got / elapsed
        # A request's dead time: its wait, less what its first bytes take at this rate (a
        # server that paces sends its first bytes late, and they were not idle time). The
        # shortest of the last nine: asking too late leaves a connection idle for a moment;
        # asking too early would have more than --segments connections moving bytes.
        dead = min(wait - first / rate for wait, first in self._waits)
        if dead < HANDOFF_LATENCY:
            return  # a short wait costs less than an extra connection
        if piece.length - piece.got <= rate * dead:
            lane.retiring = True
            self._window.widen(1)  # the successor's piece may come before this one is hashed
            self.tasks.append(asyncio.create_task(self._connection()))

    async def _connection(self) -> None:
        # Pieces are taken in file order, so they finish roughly in order and the hash keeps
        # pace; the window stops a connection that runs too far ahead of the hash.
        todo, lane = self.todo, _Lane()
        try:
            while todo and not lane.retiring:
                await self._window.acquire()
                if not todo:
                    self._window.release()
                    return
                index = todo.popleft()
                start, end, _ = self.segments[index]
                piece = self.pieces[index] = PieceBuffer(
                    start, end - start + 1, self._capacity, pool=self.part.disk.pool
                )
                await self._fetch_piece(self.segments[index], piece, lane)
        finally:
            if lane.retiring:
                self._window.widen(-1)

    async def _frontier(self) -> None:
        """Hash the pieces in file order from memory, the current one as its bytes arrive."""
        for index, (start, end, _) in enumerate(self.segments):
            length = end - start + 1
            hashed = 0
            while True:
                piece = self.pieces.get(index)
                if piece is not None and self.hasher is not None:
                    ready = piece.got - hashed
                    if ready >= SEGMENT_BLOCK or (ready and piece.got == length):
                        view = piece.data()[hashed:]
                        await in_thread(self.hasher.update, view)
                        hashed += len(view)
                        continue
                hashed_all = piece is None or hashed == length or self.hasher is None
                if self.segments[index][2] >= length and hashed_all:
                    break
                tasks: list[asyncio.Future[Any]] = [*self.tasks, *self.saves]
                failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
                if failed:
                    raise failed[0].exception()  # type: ignore[misc]
                if all(t.done() for t in tasks):
                    raise ShortReadError(f"bytes {start}-{end} never arrived")
                self.changed.clear()
                waiter = asyncio.ensure_future(self.changed.wait())
                await asyncio.wait(
                    [waiter, *[t for t in tasks if not t.done()]],
                    return_when=asyncio.FIRST_COMPLETED,
                )
                waiter.cancel()
            piece = self.pieces.pop(index, None)
            if piece is None:  # finished by an earlier run: read it back
                if self.hasher is not None:
                    await in_thread(self.part.hash_range, self.hasher, start, end + 1)
                continue
            piece.release()
            self._window.release()

    async def _fetch_piece(self, seg: list[int], piece: PieceBuffer, lane: _Lane) -> None:
        """One piece into memory (and to disk every 4 MiB), resumed and retried on its own."""
        item, part, fetcher = self.item, self.part, self.fetcher
        remote = item.remote
        label = f"{self.final} [bytes {seg[0]}-{seg[1]}]"
        if seg[2]:
            await part.read_piece(piece, seg[2])  # an earlier run's bytes: the hash needs them
        # The timing of this piece's current request, for hand_off_near_end.
        flow = _Flow()

        async def put(batch: list[bytes]) -> None:
            now = time.monotonic()
            if not flow.began:
                flow.began = now
            size = 0
            for chunk in batch:
                piece.put(chunk)
                size += len(chunk)
            if now - flow.began <= BURST:
                flow.first += size  # came all at once: the rate is what follows
            else:
                if not flow.got:  # the first bytes after the burst: the wait is known
                    self.heard(flow.began - flow.asked, flow.first)
                flow.got += size
            if not lane.retiring:
                self.hand_off_near_end(lane, piece, flow)
            if piece.got < piece.length and piece.got - piece.written >= SEGMENT_BLOCK:
                await self._save_piece(seg, piece, tail=False)

        async for attempt in fetcher.retry.retrying(fetcher.report_retry(item.key, label)):
            with attempt:
                start = seg[0] + piece.got
                if start > seg[1]:
                    break
                try:
                    flow.reset()
                    async with fetcher.client.open_read(
                        remote.context,
                        remote.context_id,
                        remote.node_id,
                        token=self.state.token,
                        start=start,
                        end=seg[1],
                        version_id=remote.read_version,
                    ) as stream:
                        self.answered()
                        cr = stream.content_range
                        if stream.status != 206 or cr is None:
                            raise RangeUnsupportedError("the server ignores Range")
                        if cr.start != start:
                            raise ShortReadError(
                                f"asked for bytes from {start}, got from {cr.start}"
                            )
                        too_much = "the server sent more than the range asked for"
                        room = piece.length - piece.got
                        try:
                            await fetcher.pump(item, stream, self.state, room, 0, put, too_much)
                        finally:
                            if piece.got < piece.length:
                                # What arrived is kept on disk: a retry or the next run resumes.
                                await self._save_piece(seg, piece, tail=True)
                except ApiError as exc:
                    await fetcher.after_read_error(item, self.state, exc)
                if piece.got < piece.length:
                    raise ShortReadError(f"range ended after {piece.got} of {piece.length} bytes")
        # A whole piece goes to disk while its connection already asks for the next one.
        self.save(self._save_piece(seg, piece, tail=True))

    async def _save_piece(self, seg: list[int], piece: PieceBuffer, *, tail: bool) -> None:
        await self.part.write_piece(piece, tail=tail)
        if piece.written != seg[2]:
            seg[2] = piece.written
            self.part.save_segments(self.segments, every=SAVE_EVERY)
        self.changed.set()


class _Window:
    """How many pieces may be in memory: ``base``, plus one per connection handing over to a
    successor (until its last piece is in)."""

    def __init__(self, base: int) -> None:
        self.base = base
        self.extra = 0
        self.held = 0
        self._changed = asyncio.Event()

    async def acquire(self) -> None:
        while self.held >= self.base + self.extra:
            self._changed.clear()
            await self._changed.wait()
        self.held += 1

    def release(self) -> None:
        self.held -= 1
        self._changed.set()

    def widen(self, by: int) -> None:
        self.extra += by
        self._changed.set()


class _Flow:
    """One ranged request of a piece: when it was ``asked`` for, when its first bytes came
    (``began``; 0: not yet), how many came in that first burst (``first``) and how many since
    (``got``, for the rate)."""

    __slots__ = ("asked", "began", "first", "got")

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.asked, self.began = time.monotonic(), 0.0
        self.first = self.got = 0


class _Lane:
    """One of a segmented download's connections; ``retiring`` once it started its successor."""

    __slots__ = ("retiring",)

    def __init__(self) -> None:
        self.retiring = False
