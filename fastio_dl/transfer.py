"""The transfer engine: a bounded pipeline from plan to verified files.

    planner ──plan queue──> prepare workers ──ready queue──> download workers
    (details, listings)      (local check, disk space,        (stream into .part or memory,
                              read token if in token mode)      verify, fsync, atomic rename)

The ready queue holds at most ``concurrency`` entries, so read tokens (``--read-mode token``)
are minted shortly before use and API round trips overlap the transfers instead of stealing
their slots. Download workers are twice ``concurrency``; only the network part of a transfer
holds one of the ``concurrency`` slots, so verifying and writing overlap the next read.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tenacity import RetryCallState

from fastio_dl.blockio import ALIGN, PieceBuffer, in_thread
from fastio_dl.client import FastioClient, ReadStream, RetryPolicy
from fastio_dl.config import Settings
from fastio_dl.errors import (
    ApiError,
    AuthError,
    FastioDlError,
    IntegrityError,
    ShortReadError,
    TransferError,
    WriteError,
    human_bytes,
)
from fastio_dl.events import (
    FileFinished,
    FileProgress,
    FileQueued,
    FileRetry,
    FileStarted,
    Notice,
    Reporter,
    RunSummary,
)
from fastio_dl.planner import PlanEntry, PlanFailure, PlanItem, Planner, PlanSkip, Target
from fastio_dl.storage import (
    DiskSpace,
    EmptyAtStart,
    MemoryPart,
    PartFile,
    PartMeta,
    PathGuard,
    matches_local,
    new_hasher,
    part_path,
    sidecar_path,
)

WRITE_BLOCK = 4 * 1024 * 1024
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
SMALL_FILE = 1024 * 1024  # up to this size a file is verified in memory and written in one step
Part = MemoryPart | PartFile
STATE_DIR = ".fastio-dl"  # fastio-dl's own files in a destination (sync state, lock)
PLAN_QUEUE = 2048


@dataclass(frozen=True)
class Decision:
    """What the local side says about a planned file before any byte moves."""

    skip_reason: str | None = None  # set: nothing to download
    replace: bool = False  # a different local file will be replaced


class LocalPolicy(Protocol):
    """Decides skips before download and records results after (``get`` and ``sync`` differ)."""

    async def decide(self, item: PlanItem, final: Path) -> Decision: ...

    async def record(self, item: PlanItem, final: Path) -> None: ...


class GetPolicy:
    """``get``: skip a local file with the same size and hash; otherwise replace (or keep)."""

    def __init__(self, no_clobber: bool) -> None:
        self.no_clobber = no_clobber
        self.local = EmptyAtStart()  # what was on disk before this run

    async def decide(self, item: PlanItem, final: Path) -> Decision:
        if not self.local.exists(final):
            return Decision()
        remote = item.remote
        if await matches_local(final, remote.size, remote.hash_algo, remote.hash):
            return Decision(skip_reason="already present and verified")
        if self.no_clobber:
            return Decision(skip_reason="a different local file exists (kept: --no-clobber)")
        return Decision(replace=True)

    async def record(self, item: PlanItem, final: Path) -> None:
        return None


@dataclass
class Outcome:
    downloaded: int = 0
    skipped: int = 0
    failed: int = 0
    bytes: int = 0
    fatal: FastioDlError | None = None
    interrupted: bool = False
    failed_targets: list[Target] = field(default_factory=list)
    plan_failures: int = 0  # references or folders that could not be resolved completely
    planned_paths: set[str] = field(default_factory=set)  # every local path this run claimed
    signal: int | None = None  # the signal that interrupted the run


class Engine:
    def __init__(
        self,
        settings: Settings,
        client: FastioClient,
        reporter: Reporter,
        policy: LocalPolicy | None = None,
        *,
        dry_run: bool = False,
    ) -> None:
        self.settings = settings
        self.client = client
        self.reporter = reporter
        self.policy = policy or GetPolicy(settings.no_clobber)
        self.dry_run = dry_run
        self.outcome = Outcome()
        self.retry = RetryPolicy.from_settings(settings)
        self._stop_new: str | None = None  # reason new files must not start
        self._net_slots = asyncio.Semaphore(settings.concurrency)  # transfers on the wire at once
        self._limiter = RateLimiter(settings.limit_rate) if settings.limit_rate > 0 else None
        self._reserved = 0  # bytes that files in flight may still write
        self._reservations: dict[int, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._started = time.monotonic()
        self.dest = settings.dest
        self.guard = PathGuard(settings.dest)
        self.disk = DiskSpace(settings.dest)

    # ------------------------------------------------------------------ control
    def interrupt(self, reason: str = "interrupted") -> None:
        """Stop starting files and end in-flight transfers; partials stay for resume."""
        self.outcome.interrupted = True
        self._stop_new = reason
        for task in self._tasks:
            task.cancel()

    def _fatal(self, exc: FastioDlError) -> None:
        if self.outcome.fatal is None:
            self.outcome.fatal = exc
        self._stop_new = str(exc)
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()

    # ------------------------------------------------------------------ run
    async def run(self, targets: list[Target]) -> Outcome:
        plan_q: asyncio.Queue[PlanEntry | None] = asyncio.Queue(PLAN_QUEUE)
        ready_q: asyncio.Queue[tuple[PlanItem, Path, str | None, Decision] | None] = asyncio.Queue(
            self.settings.concurrency
        )
        self.dest.mkdir(parents=True, exist_ok=True)
        planner = Planner(self.client, plan_q)
        n = self.settings.concurrency

        async def plan() -> None:
            try:
                await planner.run(targets)
            except FastioDlError as exc:
                self._fatal(exc)

        async def prepare_all() -> None:
            preparers = [asyncio.create_task(self._prepare_loop(plan_q, ready_q)) for _ in range(n)]
            try:
                await asyncio.gather(*preparers)
            finally:
                for task in preparers:
                    task.cancel()
            # Only after a normal end: once cancelled, nobody may be left to drain the queue.
            for _ in range(2 * n):
                await ready_q.put(None)

        self._tasks = [asyncio.create_task(plan()), asyncio.create_task(prepare_all())]
        # Twice as many workers as network slots: while one verifies and writes, another reads.
        self._tasks += [asyncio.create_task(self._download_loop(ready_q)) for _ in range(2 * n)]
        results = await asyncio.gather(*self._tasks, return_exceptions=True)
        self.outcome.planned_paths = set(planner.claimed)
        for result in results:
            if isinstance(result, FastioDlError):
                self._fatal(result)
            elif isinstance(result, BaseException) and not isinstance(
                result, asyncio.CancelledError
            ):
                raise result
        self.reporter.emit(
            RunSummary(
                downloaded=self.outcome.downloaded,
                skipped=self.outcome.skipped,
                failed=self.outcome.failed,
                bytes=self.outcome.bytes,
                seconds=round(time.monotonic() - self._started, 3),
                interrupted=self.outcome.interrupted,
            )
        )
        return self.outcome

    # ------------------------------------------------------------------ stages
    async def _prepare_loop(
        self,
        plan_q: asyncio.Queue[PlanEntry | None],
        ready_q: asyncio.Queue[tuple[PlanItem, Path, str | None, Decision] | None],
    ) -> None:
        while True:
            entry = await plan_q.get()
            if entry is None:
                await plan_q.put(None)  # let the sibling preparers see the end too
                return
            if not isinstance(entry, PlanItem):
                self.reporter.emit(FileQueued(0, str(self.dest / (entry.relpath or Path())), 0))
            if isinstance(entry, PlanSkip):
                self._finish(
                    entry.target, entry.node_id, entry.relpath, "skipped", 0, 0, reason=entry.reason
                )
                continue
            if isinstance(entry, PlanFailure):
                self.outcome.plan_failures += 1
                self._finish(
                    entry.target, entry.node_id, entry.relpath, "failed", 0, 0, error=entry.error
                )
                continue
            if self.settings.shard is not None and not in_shard(
                entry.remote.node_id, self.settings.shard
            ):
                continue  # another host's file (--shard)
            final = self.dest / entry.relpath
            self.reporter.emit(FileQueued(entry.key, str(final), entry.remote.size))
            if self._stop_new:
                self._fail(entry, final, f"not started: {self._stop_new}")
                continue
            try:
                if entry.relpath.parts and entry.relpath.parts[0] == STATE_DIR:
                    raise TransferError(
                        f"{STATE_DIR} is reserved for fastio-dl's own state; "
                        "give this file another DEST in a manifest"
                    )
                self.guard.check(final)
                decision = await self.policy.decide(entry, final)
                if decision.skip_reason or self.dry_run:
                    if decision.skip_reason and not self.dry_run:
                        await _drop_leftovers(final)
                    verb = "replace" if decision.replace else "download"
                    self._finish(
                        entry.target,
                        entry.remote.node_id,
                        entry.relpath,
                        "skipped",
                        entry.remote.size,
                        0,
                        reason=decision.skip_reason or f"dry run: would {verb}",
                        key=entry.key,
                    )
                    continue
                self._reserve(entry, final)
                token = await self._mint(entry)
            except AuthError:
                raise
            except FastioDlError as exc:
                self._fail(entry, final, self.client.redact(str(exc)))
                continue
            except Exception as exc:  # a bug must cost one file, never hang the pool
                self._fail(entry, final, f"internal error: {type(exc).__name__}: {exc}")
                continue
            await ready_q.put((entry, final, token, decision))

    def _reserve(self, item: PlanItem, final: Path) -> None:
        """Check room for this file on top of what files already in flight still need."""
        have = 0
        if item.remote.size > SMALL_FILE:  # only large files leave a resumable .part
            with contextlib.suppress(OSError):
                have = part_path(final).stat().st_size
        need = max(0, item.remote.size - have)
        self.disk.check(need + self._reserved)
        self._reserved += need
        self._reservations[item.key] = need

    def _release(self, item: PlanItem) -> None:
        self._reserved -= self._reservations.pop(item.key, 0)

    async def _mint(self, item: PlanItem, *, force: bool = False) -> str | None:
        if item.remote.size == 0:
            return None  # an empty file needs no read
        if self.settings.read_mode != "token" and not force:
            return None  # bearer/auto: /read/ takes the API token itself, one round trip less
        remote = item.remote
        return await self.client.request_read(remote.context, remote.context_id, remote.node_id)

    async def _download_loop(
        self, ready_q: asyncio.Queue[tuple[PlanItem, Path, str | None, Decision] | None]
    ) -> None:
        while True:
            work = await ready_q.get()
            if work is None:
                return
            item, final, token, decision = work
            if self._stop_new:
                self._release(item)
                self._fail(item, final, f"not started: {self._stop_new}")
                continue
            try:
                transferred = await self._fetch(item, final, token)
                await self.policy.record(item, final)
            except asyncio.CancelledError:
                if self.outcome.interrupted:
                    kept = part_path(final).exists()  # small files are fetched in memory
                    why = "interrupted; the partial file is kept for the next run"
                    self._fail(item, final, why if kept else "interrupted")
                raise
            except AuthError as exc:  # 402: the whole run stops
                self._fail(item, final, str(exc))
                self._fatal(exc)
                return
            except WriteError as exc:
                self._fail(item, final, str(exc))
                self._stop_new = f"an earlier write failed ({exc})"
                continue
            except FastioDlError as exc:
                self._fail(item, final, self.client.redact(str(exc)))
                continue
            except OSError as exc:
                self._fail(item, final, f"local error: {exc.strerror or exc}")
                continue
            except Exception as exc:  # a bug must cost one file, never hang the pool
                self._fail(item, final, f"internal error: {type(exc).__name__}: {exc}")
                continue
            finally:
                self._release(item)
            reason = "replaced" if decision.replace else None
            self._finish(
                item.target,
                item.remote.node_id,
                item.relpath,
                "downloaded",
                item.remote.size,
                transferred,
                reason=reason,
                key=item.key,
            )

    # ------------------------------------------------------------------ one file
    async def _fetch(self, item: PlanItem, final: Path, token: str | None) -> int:
        remote = item.remote
        meta = PartMeta(remote.node_id, remote.version, remote.hash, remote.hash_algo, remote.size)
        # Small files are verified in memory and written in one step; large ones stream to disk.
        part: Part = MemoryPart(final, meta) if remote.size <= SMALL_FILE else PartFile(final, meta)
        self.guard.check(final)
        self.guard.check(part.path)
        if isinstance(part, PartFile) and self._is_segmentable(item):
            try:
                async with self._net_slots:
                    return await self._fetch_segmented(item, final, part, token)
            except RangeUnsupportedError:
                # The server ignores Range: one stream from byte zero it is.
                await part.discard()
                self.reporter.emit(Notice("info", f"{final}: the server ignores Range; one stream"))
            except FastLinkError as exc:
                # One connection alone is fast: it goes on as one stream from where it is.
                self.reporter.emit(Notice("info", f"{final}: {exc}"))
        start = part.resumable_offset()
        self.reporter.emit(FileStarted(item.key, str(final), remote.size, start))
        state = _FetchState(token=token)
        try:
            async for attempt in self.retry.retrying(self._report_retry(item.key, str(final))):
                with attempt:
                    first = start if attempt.retry_state.attempt_number == 1 else None
                    # Only the network part holds one of the -j slots: hashing and writing
                    # overlap the next transfer instead of delaying it.
                    async with self._net_slots:
                        await self._attempt(item, part, state, first)
                    try:
                        await part.verify()
                    except IntegrityError:
                        await self._restart(item, part)
                        raise
            warning = await part.verify()
            if warning:
                self.reporter.emit(Notice("warning", f"{final}: {warning}"))
            await part.commit()
        except asyncio.CancelledError:
            await part.close()  # keep .part and sidecar: the next run resumes
            raise
        except IntegrityError:
            await part.discard()
            raise
        except BaseException:
            await part.close()
            raise
        return state.transferred

    async def _attempt(
        self, item: PlanItem, part: Part, state: _FetchState, first: int | None
    ) -> None:
        remote = item.remote
        offset = part.offset if first is None else first
        if not part.is_open or first is not None:
            await part.open(offset)
            offset = part.offset
        if offset >= remote.size:
            return  # everything is already here (a resumed .part or an empty file): just verify
        try:
            async with self.client.open_read(
                remote.context, remote.context_id, remote.node_id, token=state.token, start=offset
            ) as stream:
                if offset > 0:
                    cr = stream.content_range
                    if stream.status == 200 or cr is None:
                        # The server ignored Range: take the full body from byte zero.
                        await self._restart(item, part)
                    elif cr.start != offset:
                        await self._restart(item, part)
                        raise ShortReadError(
                            f"asked for bytes from {offset}, the server sent from {cr.start}; "
                            "restarting from zero"
                        )
                await self._stream(item, part, stream, state)
        except ApiError as exc:
            await self._after_read_error(item, state, exc)
        if part.offset < remote.size:
            raise ShortReadError(f"body ended after {part.offset} of {remote.size} bytes")

    # ------------------------------------------------------------------ segmented
    def _is_segmentable(self, item: PlanItem) -> bool:
        return self.settings.segments > 1 and item.remote.size >= max(
            self.settings.segment_threshold, self.settings.segments
        )

    async def _fetch_segmented(
        self, item: PlanItem, final: Path, part: PartFile, token: str | None
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
        segments = split_segments(size, self.settings.segments, saved)
        self.reporter.emit(FileStarted(item.key, str(final), size, sum(seg[2] for seg in segments)))
        state = _FetchState(token=token)
        for round_number in range(self.settings.retries + 1):
            await part.open_segmented(segments, fresh=saved is None)
            hasher = new_hasher(remote.hash_algo)
            run = _SegmentedRun(self, item, final, part, segments, state, hasher)
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
                self.reporter.emit(FileProgress(item.key, -size))
                self.reporter.emit(FileRetry(item.key, str(final), round_number + 1, str(exc), 0.0))
                await part.discard()
                segments, saved = split_segments(size, self.settings.segments, None), None
                if round_number == self.settings.retries:
                    raise
                continue
            if warning:
                self.reporter.emit(Notice("warning", f"{final}: {warning}"))
            await part.commit()
            return state.transferred
        raise AssertionError("unreachable")  # pragma: no cover

    async def _fetch_piece(
        self, run: _SegmentedRun, seg: list[int], piece: PieceBuffer, lane: _Lane
    ) -> None:
        """One piece into memory (and to disk every 4 MiB), resumed and retried on its own."""
        item, part = run.item, run.part
        remote = item.remote
        label = f"{run.final} [bytes {seg[0]}-{seg[1]}]"
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
                    run.heard(flow.began - flow.asked, flow.first)
                flow.got += size
            if not lane.retiring:
                run.hand_off_near_end(lane, piece, flow)
            if piece.got < piece.length and piece.got - piece.written >= SEGMENT_BLOCK:
                await self._save_piece(run, seg, piece, tail=False)

        async for attempt in self.retry.retrying(self._report_retry(item.key, label)):
            with attempt:
                start = seg[0] + piece.got
                if start > seg[1]:
                    break
                try:
                    flow.reset()
                    async with self.client.open_read(
                        remote.context,
                        remote.context_id,
                        remote.node_id,
                        token=run.state.token,
                        start=start,
                        end=seg[1],
                    ) as stream:
                        run.answered()
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
                            await self._pump(item, stream, run.state, room, 0, put, too_much)
                        finally:
                            if piece.got < piece.length:
                                # What arrived is kept on disk: a retry or the next run resumes.
                                await self._save_piece(run, seg, piece, tail=True)
                except ApiError as exc:
                    await self._after_read_error(item, run.state, exc)
                if piece.got < piece.length:
                    raise ShortReadError(f"range ended after {piece.got} of {piece.length} bytes")
        # A whole piece goes to disk while its connection already asks for the next one.
        run.save(self._save_piece(run, seg, piece, tail=True))

    async def _save_piece(
        self, run: _SegmentedRun, seg: list[int], piece: PieceBuffer, *, tail: bool
    ) -> None:
        await run.part.write_piece(piece, tail=tail)
        if piece.written != seg[2]:
            seg[2] = piece.written
            run.part.save_segments(run.segments, every=SAVE_EVERY)
        run.changed.set()

    async def _pump(
        self,
        item: PlanItem,
        stream: ReadStream,
        state: _FetchState,
        room: int,
        block: int,
        write: Callable[[list[bytes]], Awaitable[None]],
        too_much: str,
    ) -> None:
        """Move a body into ``write`` in batches of ``block`` bytes, refusing more than ``room``.

        Bytes that arrived before a break are good: they are written even when the read fails,
        so the retry resumes after them.
        """
        batch: list[bytes] = []
        batched = received = 0
        emit = self.reporter.emit
        try:
            async for chunk in stream.chunks():
                received += len(chunk)
                if received > room:
                    raise IntegrityError(too_much)
                batch.append(chunk)
                batched += len(chunk)
                state.transferred += len(chunk)
                emit(FileProgress(item.key, len(chunk)))
                if self._limiter is not None:
                    await self._limiter.take(len(chunk))
                if batched >= block:  # block 0: every chunk at once
                    # Handed over before the await: a write cut short (a cancel) must not see
                    # the same chunks again below; the sink counts what it really took.
                    handed, batch, batched = batch, [], 0
                    await write(handed)
        finally:
            if batch:
                with contextlib.suppress(FastioDlError):
                    await write(batch)

    def _report_retry(self, key: int, label: str) -> Callable[[RetryCallState], None]:
        """A tenacity ``before_sleep`` hook that tells the reporter about the retry."""

        def before_sleep(retry_state: RetryCallState) -> None:
            exc = retry_state.outcome.exception() if retry_state.outcome else None
            wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
            self.reporter.emit(
                FileRetry(
                    key,
                    label,
                    retry_state.attempt_number,
                    self.client.redact(str(exc)),
                    round(wait, 2),
                )
            )

        return before_sleep

    async def _after_read_error(self, item: PlanItem, state: _FetchState, exc: ApiError) -> None:
        # A bearer read refused with 403 may only mean "this endpoint wants a read token"
        # (nothing public says which status it uses): in auto mode, try one before failing.
        refused = exc.status == 401 or (
            exc.status == 403 and state.token is None and self.settings.read_mode == "auto"
        )
        if refused and not state.refreshed and self.settings.read_mode != "bearer":
            # Read tokens expire (about 2 h), and a bearer read may be refused: mint one
            # fresh read token per file, then give up.
            state.refreshed = True
            state.token = await self._mint(item, force=True)
            raise TransferError(
                f"read refused ({exc.status}); minted a fresh read token",
                retryable=True,
                wait_hint=0,
            ) from exc
        raise exc

    async def _restart(self, item: PlanItem, part: Part) -> None:
        if part.offset:
            self.reporter.emit(FileProgress(item.key, -part.offset))
        await part.open(0)

    async def _stream(
        self, item: PlanItem, part: Part, stream: ReadStream, state: _FetchState
    ) -> None:
        size = item.remote.size
        too_much = f"the server sent more than the {size} bytes the API announced"
        await self._pump(item, stream, state, size - part.offset, WRITE_BLOCK, part.write, too_much)

    # ------------------------------------------------------------------ accounting
    def _fail(self, item: PlanItem, final: Path, error: str) -> None:
        self._finish(
            item.target,
            item.remote.node_id,
            item.relpath,
            "failed",
            item.remote.size,
            0,
            error=error,
            key=item.key,
        )

    def _finish(
        self,
        target: Target,
        node_id: str,
        relpath: Path | None,
        status: str,
        size: int,
        transferred: int,
        *,
        error: str | None = None,
        reason: str | None = None,
        key: int = 0,
    ) -> None:
        if status == "downloaded":
            self.outcome.downloaded += 1
            self.outcome.bytes += transferred
        elif status == "skipped":
            self.outcome.skipped += 1
        else:
            self.outcome.failed += 1
            self.outcome.failed_targets.append(target)
        path = self.dest / relpath if relpath is not None else None
        self.reporter.emit(
            FileFinished(
                key=key,
                ref=target.ref.text,
                node_id=node_id,
                path=str(path) if path is not None else "",
                status=status,  # type: ignore[arg-type]
                bytes=size,
                transferred=transferred,
                error=error,
                reason=reason,
            )
        )


async def _drop_leftovers(final: Path) -> None:
    """A run killed between the rename and the sidecar cleanup leaves a sidecar: tidy it."""
    for path in (part_path(final), sidecar_path(final)):
        with contextlib.suppress(OSError):
            path.unlink()


class _SegmentedRun:
    """One round of a segmented download: connections taking pieces, and the hash frontier."""

    def __init__(
        self,
        engine: Engine,
        item: PlanItem,
        final: Path,
        part: PartFile,
        segments: list[list[int]],
        state: _FetchState,
        hasher: Any,
    ) -> None:
        self.engine = engine
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
        self._window = _Window(engine.settings.segments + 1)
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
        count = min(self.engine.settings.segments, len(self.todo))
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
                piece = self.pieces[index] = PieceBuffer(start, end - start + 1, self._capacity)
                await self.engine._fetch_piece(self, self.segments[index], piece, lane)
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


class FastLinkError(TransferError):
    """The first segment connection alone is fast: the file goes on as one stream."""


class RangeUnsupportedError(TransferError):
    """A ranged request was answered with the whole body: segments are not possible."""


def in_shard(node_id: str, shard: tuple[int, int]) -> bool:
    """``--shard K/N``: a stable split by node id, the same on every host and every run."""
    index, count = shard
    return int(hashlib.sha256(node_id.encode()).hexdigest()[:16], 16) % count == index


class RateLimiter:
    """``--limit-rate``: one token bucket shared by every transfer of the run."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.burst = max(64 * 1024, rate / 10)  # at most a tenth of a second ahead of the rate
        self._allowance = float(self.burst)
        self._last = time.monotonic()

    async def take(self, amount: int) -> None:
        now = time.monotonic()
        self._allowance = min(self.burst, self._allowance + (now - self._last) * self.rate)
        self._last = now
        self._allowance -= amount
        if self._allowance < 0:
            await asyncio.sleep(-self._allowance / self.rate)


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


@dataclass
class _FetchState:
    token: str | None
    refreshed: bool = False
    transferred: int = 0
