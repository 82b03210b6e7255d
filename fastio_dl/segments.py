"""Segmented downloads: one large file over several ranged connections into one ``.part``.

Terms:

span
    A byte range ``[start, end, done]`` of the file that a connection asks for with one
    request (``Range: bytes=start-end``) and streams to disk; its first ``done`` bytes are on
    disk. The sidecar records every span, so each resumes where it stopped (one request more,
    as does a retry). :func:`plan_spans` cuts them.
lane
    One of the ``--segments`` connections. It takes the planned spans in file order; when none
    is left, it steals the back half of the span with the most bytes still to come, if that
    half is STEAL_MIN or more: that span's lane stops reading at the new end (dropping its
    connection), and the thief asks for the half. A lane's bytes pass through one buffer of
    ``block`` bytes on their way to disk, so memory does not grow with the spans.
ramp
    A fresh file's plan: one span per lane, a step longer from each lane to the next, then one
    more per lane, a step shorter from each to the next. Equal lanes finish their first spans
    one step apart and in file order, and all finish their second spans together.
hash
    The hash reads the ``.part`` back, in file order, as far as the bytes on disk have no gap
    (O_DIRECT: no page cache; two buffers, one read while the other is hashed). A lane ahead
    of it waits for nothing. Thanks to the ramp it catches up on one first span at a time
    while the others still move, and what it reads after the last byte arrived is the second
    spans but the first (75 MiB of a 1 GiB file over 8 lanes).
probe
    On a fresh large file the first lane runs alone for a moment: if it alone moves FAST_LINK
    bytes a second, more connections would only cost CPU, and the file goes on as one stream
    from where it is (FastLinkError).
throttle
    A 429 from ``/read/``: the file opens no further connections and steals no more. The lane
    that met it hands its span to the lanes still reading (they take it when their own is
    done, as one request with the planned spans after it); the last lane keeps it. Every later
    request of the file waits out the limit at the client's rate gate, as API calls do.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import itertools
import time
from pathlib import Path
from typing import Any

from fastio_dl.blockio import ALIGN, BackReader, BufferPool, PieceBuffer
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

RAMP = 6  # a fresh plan's step: a lane's share of the file / (RAMP * lanes)
MIN_STEP = 256 * 1024  # smaller steps: one equal span per lane (the hash catches up at once)
STEAL_MIN = 4 * 1024 * 1024  # a stolen half is at least this long (it costs a request)
BLOCK = 4 * 1024 * 1024  # a lane's buffer: one write to disk, and a resume point
LANE_MEMORY = 16 * 1024 * 1024  # lane buffers of one file, at most (1 MiB each at least)
SAVE_EVERY = 0.2  # seconds between sidecar records of span progress while spans stream
PROBE_WAIT = 0.010  # how long the first connection's response may take for its speed to count
PROBE_SECONDS = 0.004  # how long its bytes then flow alone before their speed is judged
FAST_LINK = 100 * 1024 * 1024  # bytes/s one connection must move to make more pointless
PROBE_MIN = 256 * 1024 * 1024  # smaller files finish in seconds on such a link either way


class FastLinkError(TransferError):
    """The first segment connection alone is fast: the file goes on as one stream."""


class RangeUnsupportedError(TransferError):
    """A ranged request was answered with the whole body: segments are not possible."""


class _SpanEnd(Exception):
    """A lane reached its span's end (which a steal may have moved) before its response did."""


def is_segmentable(settings: Settings, item: PlanItem) -> bool:
    """Whether ``item`` is large enough for ``--segments`` connections."""
    return settings.segments > 1 and item.remote.size >= max(
        settings.segment_threshold, settings.segments
    )


async def fetch_segmented(
    fetcher: Fetcher, item: PlanItem, final: Path, part: PartFile, token: str | None
) -> int:
    """Fetch ``--segments`` spans at once into one preallocated ``.part``; the hash reads the
    bytes back in file order as they reach disk. Returns the bytes moved over the network."""
    remote = item.remote
    size = remote.size
    spans = plan_spans(size, fetcher.settings.segments, part.saved_segments())
    fetcher.reporter.emit(FileStarted(item.key, str(final), size, sum(s[2] for s in spans)))
    state = FetchState(token=token)
    for round_number in range(fetcher.settings.retries + 1):
        fresh = not any(s[2] for s in spans)
        await part.open_segmented(spans, fresh=fresh)
        hasher = new_hasher(remote.hash_algo)
        run = _SegmentedRun(fetcher, item, final, part, spans, state, hasher)
        try:
            await run.run(probe=fresh and round_number == 0 and size >= PROBE_MIN)
        except FastLinkError:
            await part.keep_prefix(run.prefix, run.hasher)
            raise
        except BaseException:
            with contextlib.suppress(FastioDlError):
                part.save_segments(spans)
            await part.close()  # keep .part and sidecar: the next run resumes the spans
            raise
        part.set_result(size, hasher)
        try:
            warning = await part.verify()
        except IntegrityError as exc:
            # Which range was wrong is unknown: start the whole file again.
            fetcher.reporter.emit(FileProgress(item.key, -size))
            fetcher.reporter.emit(FileRetry(item.key, str(final), round_number + 1, str(exc), 0.0))
            await part.discard()
            spans = plan_spans(size, fetcher.settings.segments, None)
            if round_number == fetcher.settings.retries:
                raise
            continue
        if warning:
            fetcher.reporter.emit(Notice("warning", f"{final}: {warning}"))
        await part.commit()
        fetcher.learn(state)
        return state.transferred
    raise AssertionError("unreachable")  # pragma: no cover


# ----------------------------------------------------------------------------- plans


def plan_spans(size: int, count: int, saved: list[list[int]] | None) -> list[list[int]]:
    """Spans ``[start, end, done]`` covering ``size`` bytes for ``count`` lanes.

    A fresh file gets the ramp (see the module's terms): with ``step`` a lane's share over
    RAMP * count, first spans of ``share - (count - i) * step`` and second spans of
    ``(count - i) * step``, each lane's two adding up to its share. A file too small for steps
    of MIN_STEP gets one equal span per lane. Span edges fall on whole blocks (O_DIRECT).

    An earlier run's spans (or a one-stream ``.part``: one span done as far as it got) are
    kept, joined where one's done bytes run on into the next, and the bytes still missing are
    cut for ``count`` lanes (in parts of STEAL_MIN at least).
    """
    if saved and _covers(saved, size) and any(span[2] for span in saved):
        return _replan(saved, count)
    share = size // count // ALIGN * ALIGN
    step = share // (RAMP * count) // ALIGN * ALIGN
    if count > 1 and step >= MIN_STEP:
        lengths = [share - (count - i) * step for i in range(count)]
        lengths += [(count - i) * step for i in range(count)]
        lengths[-1] += size - sum(lengths)
        edges = [0]
        for length in lengths:
            edges.append(edges[-1] + length)
    else:
        unit = ALIGN if size // count >= 2 * ALIGN else 1
        edges = sorted({size * i // count // unit * unit for i in range(count)} | {size})
    return [[first, after - 1, 0] for first, after in itertools.pairwise(edges)]


def _covers(spans: list[list[int]], size: int) -> bool:
    """Whether saved spans cover ``size`` bytes in order, each done count within its span."""
    at = 0
    for span in spans:
        if len(span) != 3 or span[0] != at or span[1] < span[0]:
            return False
        if not 0 <= span[2] <= span[1] - span[0] + 1:
            return False
        at = span[1] + 1
    return at == size


def _length(span: list[int]) -> int:
    return span[1] - span[0] + 1


def _replan(saved: list[list[int]], count: int) -> list[list[int]]:
    """Saved spans joined (done bytes stay a prefix of each), the missing bytes cut for
    ``count`` lanes: each open span gets a lane, the rest go where most is left per lane."""
    spans: list[list[int]] = []
    for span in saved:
        last = spans[-1] if spans else None
        if last is not None and (span[2] == 0 or last[2] == _length(last)):
            last[2] += span[2]
            last[1] = span[1]
        else:
            spans.append(list(span))
    open_spans = [s for s in spans if s[2] < _length(s)]
    lanes = {id(s): 1 for s in open_spans}
    for _ in range(count - len(open_spans)):
        if not open_spans:
            break
        best = max(open_spans, key=lambda s: (_length(s) - s[2]) / (lanes[id(s)] + 1))
        if (_length(best) - best[2]) // (lanes[id(best)] + 1) < STEAL_MIN:
            break
        lanes[id(best)] += 1
    planned = []
    for span in spans:
        parts = lanes.get(id(span), 1)
        first = span[0] + span[2]
        cuts = [(first + (span[1] + 1 - first) * i // parts) // ALIGN * ALIGN for i in range(parts)]
        edges = [span[0], *cuts[1:], span[1] + 1]
        pieces = [[a, b - 1, 0] for a, b in itertools.pairwise(edges)]
        pieces[0][2] = span[2]
        planned += pieces
    return planned


# ----------------------------------------------------------------------------- one run


class _Lane:
    """One connection: its current span, the span's bytes received so far (on disk or in
    ``buffer``), and the buffer on its way to disk."""

    __slots__ = ("buffer", "got", "span")

    def __init__(self) -> None:
        self.span: list[int] | None = None
        self.got = 0
        self.buffer: PieceBuffer | None = None

    def left(self) -> int:
        return 0 if self.span is None else _length(self.span) - self.got

    def fill(self, view: memoryview, block: int, pool: BufferPool) -> int:
        """Put what fits of ``view`` into the buffer (a new one runs to the next multiple of
        ``block``); the bytes taken, 0 at the span's end."""
        span = self.span
        assert span is not None
        room = _length(span) - self.got
        if room <= 0:
            return 0
        buffer = self.buffer
        if buffer is None:
            at = span[0] + self.got
            stop = min((at // block + 1) * block, span[1] + 1)
            buffer = self.buffer = PieceBuffer(at, stop - at, block + ALIGN, pool=pool)
        take = min(len(view), room, buffer.length - buffer.got)
        buffer.put(view[:take])
        self.got += take
        return take

    @property
    def full(self) -> bool:
        return self.buffer is not None and self.buffer.got == self.buffer.length

    def drop_buffer(self) -> None:
        if self.buffer is not None:
            self.buffer.release()
            self.buffer = None


class _SegmentedRun:
    """One round of a segmented download: lanes fetching spans, and the hash reading back."""

    def __init__(
        self,
        fetcher: Fetcher,
        item: PlanItem,
        final: Path,
        part: PartFile,
        spans: list[list[int]],
        state: FetchState,
        hasher: Any,
    ) -> None:
        self.fetcher = fetcher
        self.item = item
        self.final = final
        self.part = part
        self.spans = spans  # in file order; the sidecar's record
        self.state = state
        self.hasher = hasher
        self.changed = asyncio.Event()  # bytes reached disk, or a lane ended
        self.tasks: list[asyncio.Task[None]] = []
        self.lanes: list[_Lane] = []  # lanes still running
        self.todo = collections.deque(s for s in spans if s[2] < _length(s))
        count = max(1, fetcher.settings.segments)
        self.block = max(1024 * 1024, min(BLOCK, LANE_MEMORY // count // ALIGN * ALIGN))
        self.prefix = 0  # after FastLinkError: bytes from zero on disk and in ``hasher``
        self.throttled = False  # a read met a 429: no more connections, no more steals
        self._probing = False
        self._answered = asyncio.Event()  # while probing: the first response is in

    async def run(self, *, probe: bool = False) -> None:
        """Fetch every span and hash the file.

        With ``probe``, the first lane runs alone while its speed is judged (see _probe). If
        it moves FAST_LINK bytes a second, more connections would only cost CPU on both ends:
        what it fetched is hashed (``prefix`` bytes, in ``hasher``) and FastLinkError hands the
        file to one stream. Otherwise the other lanes join.
        """
        count = min(self.fetcher.settings.segments, len(self.todo))
        tasks = self.tasks
        reader = (
            BackReader(self.part.path, self.part.disk.pool) if self.hasher is not None else None
        )
        self._probing = probe and count > 1
        tasks.append(asyncio.create_task(self._lane()))
        try:
            if self._probing:
                rate = await self._probe()
                self._probing = False
                if rate >= FAST_LINK and not tasks[0].done():
                    await self._stop()
                    await self._hash_prefix(reader)
                    raise FastLinkError(
                        f"one connection moves {human_bytes(int(rate))}/s; one stream from here"
                    )
            if not self.throttled:
                tasks += [asyncio.create_task(self._lane()) for _ in range(count - 1)]
            await self._follow(reader)
            await asyncio.gather(*tasks)
        except BaseException:
            await self._stop()
            raise
        finally:
            if reader is not None:
                reader.close()

    async def _probe(self) -> float:
        """The first lane's speed in bytes a second: its bytes over PROBE_SECONDS from its
        response, or 0 when the response takes longer than PROBE_WAIT.

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

    async def _stop(self) -> None:
        """Stop the lanes; each writes what it received first: what is on disk is kept."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _hash_prefix(self, reader: BackReader | None) -> None:
        """Hash the bytes from zero that the stopped first lane left on disk; ``prefix`` says
        how many."""
        first = self.spans[0]
        if reader is not None:
            await reader.advance(self.hasher, first[2])
        self.prefix = first[2]

    def _done_prefix(self) -> int:
        """Bytes from zero on disk with no gap."""
        for start, end, done in self.spans:
            if done < end - start + 1:
                return start + done
        return self.spans[-1][1] + 1

    async def _follow(self, reader: BackReader | None) -> None:
        """Hash the file in order as far as its bytes are on disk, until the last byte."""
        size = self.spans[-1][1] + 1
        while True:
            stop = self._done_prefix()
            if reader is not None and stop > reader.hashed:
                await reader.advance(self.hasher, stop)
                continue
            if stop >= size:
                return
            tasks = self.tasks
            failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
            if failed:
                raise failed[0].exception()  # type: ignore[misc]
            if all(t.done() for t in tasks):
                raise ShortReadError(f"bytes from {stop} on never arrived")
            self.changed.clear()
            waiter = asyncio.ensure_future(self.changed.wait())
            await asyncio.wait(
                [waiter, *[t for t in tasks if not t.done()]], return_when=asyncio.FIRST_COMPLETED
            )
            waiter.cancel()

    # -- lanes

    async def _lane(self) -> None:
        lane = _Lane()
        self.lanes.append(lane)
        try:
            while self._take(lane):
                if not await self._fetch_span(lane):
                    return  # a 429: the span went back to the lanes still reading
        finally:
            self.lanes.remove(lane)
            lane.drop_buffer()
            self.changed.set()

    def _take(self, lane: _Lane) -> bool:
        """Give ``lane`` the next planned span, or else the back half of the one with the most
        left; False when there is nothing worth a request."""
        span = None
        if self.todo:
            span = self.todo.popleft()
            if self.throttled:
                self._join_planned(span)
        elif not self.throttled and not self._probing:
            span = self._steal()
        lane.span = span
        lane.got = 0 if span is None else span[2]
        return span is not None

    def _join_planned(self, span: list[int]) -> None:
        """Fewer requests while throttled: the planned spans that follow ``span`` untouched
        become part of it."""
        while self.todo and self.todo[0][0] == span[1] + 1 and self.todo[0][2] == 0:
            following = self.todo.popleft()
            span[1] = following[1]
            self.spans.remove(following)
        self.part.save_segments(self.spans)

    def _steal(self) -> list[int] | None:
        victim = max(self.lanes, key=_Lane.left)
        span = victim.span
        if span is None or victim.left() < 2 * STEAL_MIN:
            return None
        at = span[0] + victim.got
        middle = (at + (span[1] + 1 - at) // 2) // ALIGN * ALIGN
        stolen = [middle, span[1], 0]
        span[1] = middle - 1  # its lane stops there
        self.spans.insert(bisect.bisect(self.spans, stolen), stolen)
        self.part.save_segments(self.spans)
        return stolen

    def _hand_back(self, lane: _Lane) -> bool:
        """A 429 on ``lane``'s read: no more connections or steals for this file. The span goes
        to the lanes still reading (False if this is the last one: it keeps its span)."""
        self.throttled = True
        if len(self.lanes) < 2 or lane.span is None:
            return False
        span, lane.span = lane.span, None
        lane.drop_buffer()  # its bytes are on disk: whoever takes the span goes on from there
        self.todo.appendleft(span)
        self.todo = collections.deque(sorted(self.todo))
        return True

    async def _fetch_span(self, lane: _Lane) -> bool:
        """``lane``'s span to disk with one request, resumed and retried from where its bytes
        stop; False when a 429 handed the span back."""
        item, fetcher = self.item, self.fetcher
        remote = item.remote
        span = lane.span
        assert span is not None
        label = f"{self.final} [bytes {span[0]}-{span[1]}]"

        async def attempt(_number: int) -> bool:
            start = span[0] + lane.got
            if start > span[1]:
                return True
            if self.throttled:
                await fetcher.client.gate.wait()
            asked = span[1] - start + 1  # a steal may move the span's end meanwhile
            try:
                async with fetcher.client.open_read(
                    remote.context,
                    remote.context_id,
                    remote.node_id,
                    token=self.state.token,
                    start=start,
                    end=span[1],
                    version_id=remote.read_version,
                ) as stream:
                    self._answered.set()
                    cr = stream.content_range
                    if stream.status != 206 or cr is None:
                        raise RangeUnsupportedError("the server ignores Range")
                    if cr.start != start:
                        raise ShortReadError(f"asked for bytes from {start}, got from {cr.start}")
                    await self._pump(lane, stream, asked)
            except ApiError as exc:
                if exc.status == 429 and self._hand_back(lane):
                    return False
                await fetcher.after_read_error(item, self.state, exc)
            if span[0] + lane.got <= span[1]:
                raise ShortReadError(f"range ended after {lane.got} of {_length(span)} bytes")
            return True

        if not await fetcher.retry.run(attempt, fetcher.report_retry(item.key, label)):
            return False
        lane.span = None
        lane.drop_buffer()
        return True

    async def _pump(self, lane: _Lane, stream: Any, asked: int) -> None:
        """The response's bytes into the lane's buffer, to disk a block at a time, until the
        span's end (a steal may move it closer than what was asked for)."""
        key, emit = self.item.key, self.fetcher.reporter.emit

        async def put(batch: list[bytes]) -> None:
            for chunk in batch:
                view = memoryview(chunk)
                while view:
                    taken = lane.fill(view, self.block, self.part.disk.pool)
                    if not taken:
                        emit(FileProgress(key, -len(view)))  # past a stolen end: not ours
                        raise _SpanEnd
                    view = view[taken:]
                    if lane.full:
                        await self._write(lane)
            if lane.left() <= 0:
                raise _SpanEnd

        too_much = "the server sent more than the range asked for"
        try:
            await self.fetcher.pump(self.item, stream, self.state, asked, 0, put, too_much)
        except _SpanEnd:
            pass
        finally:
            await self._write(lane)  # what arrived is kept: a retry or the next run resumes

    async def _write(self, lane: _Lane) -> None:
        """The lane's buffered bytes to disk; a full buffer is given back."""
        buffer, span = lane.buffer, lane.span
        if buffer is None or span is None:
            return
        await self.part.write_piece(buffer, tail=True)
        done = buffer.start + buffer.written - span[0]
        if lane.full:
            lane.drop_buffer()
        if done != span[2]:
            span[2] = done
            self.part.save_segments(self.spans, every=SAVE_EVERY)
            self.changed.set()
