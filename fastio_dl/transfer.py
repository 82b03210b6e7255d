"""The transfer engine: a bounded pipeline from plan to verified files.

    planner ──plan queue──> prepare workers ──ready queue──> download workers
    (details, listings)      (local check, disk space,        (stream into .part or memory,
                              read token if in token mode)      verify, fsync, atomic rename)

The ready queue holds at most ``concurrency`` entries, so read tokens (``--read-mode token``)
are minted shortly before use and API round trips overlap the transfers instead of stealing
their slots. Download workers are twice ``concurrency``; only the network part of a transfer
holds one of the ``concurrency`` slots, so verifying and writing overlap the next read.

Every stage (the token check, the planner, the preparers, the download workers) is a task of
one :class:`asyncio.TaskGroup`: an error that ends a stage (a 402, a dead token, a bug) cancels
all the others, so no stage can be left waiting on a queue that nobody feeds. Each planned file
is then accounted for exactly once: a file in a worker's hands is reported by that worker as it
is cancelled (downloaded if its final name is already in place), and what is still queued is
reported ``not started`` after the group has ended.

This module is the pipeline only: a file is made ready in :mod:`fastio_dl.prepare` (what to
skip is decided in :mod:`fastio_dl.policy`), its bytes move in :mod:`fastio_dl.fetch` (one
stream) or :mod:`fastio_dl.segments` (several ranged connections), and how it ended is counted
and reported by :mod:`fastio_dl.ledger`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from pathlib import Path

from fastio_dl.client import FastioClient
from fastio_dl.config import Settings
from fastio_dl.durability import Flusher, has_syncfs
from fastio_dl.errors import AuthError, FastioDlError, WriteError, describe
from fastio_dl.events import FileQueued, Kind, Notice, PlanComplete, Reporter, RunSummary
from fastio_dl.fetch import Fetcher, NotStarted, Part
from fastio_dl.ledger import Ledger
from fastio_dl.models import Outcome, PlanEntry, PlanItem, Target
from fastio_dl.planner import Planner
from fastio_dl.policy import Decision, GetPolicy, LocalPolicy
from fastio_dl.prepare import SMALL_FILE, Preparer, Ready
from fastio_dl.segments import (
    FastLinkError,
    RangeUnsupportedError,
    fetch_segmented,
    is_segmentable,
)
from fastio_dl.storage import Disk, MemoryPart, PartFile, PartMeta, part_path

PLAN_QUEUE = 2048


def _first_error(errors: BaseExceptionGroup) -> BaseException:
    """The error that ended the task group: a FastioDlError (its exit code) before anything
    else; nested groups searched too."""
    leaves: list[BaseException] = []

    def walk(group: BaseExceptionGroup) -> None:
        for exc in group.exceptions:
            if isinstance(exc, BaseExceptionGroup):
                walk(exc)
            else:
                leaves.append(exc)

    walk(errors)
    return next((e for e in leaves if isinstance(e, FastioDlError)), leaves[0])


class Engine:
    """One run: plan, prepare and download every target; counts in :attr:`outcome`."""

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
        self.dest = settings.dest
        self.ledger = Ledger(settings.dest, reporter)
        self.fetcher = Fetcher(settings, client, reporter)
        self.fetcher.stop_reason = lambda: self.ledger.stop_new
        self.fetcher.stop = self.ledger.stop
        fsync_each = settings.fsync == "each" or not has_syncfs()
        self.disk = Disk(sync=fsync_each)  # this run's buffers and write switches
        self.flusher = Flusher(settings.dest, each=fsync_each, take=self.policy.durable)
        self.prep = Preparer(
            settings, client, self.policy, self.ledger, self.fetcher, self.flusher, dry_run=dry_run
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._preparers = 0  # preparers still running; the last one ends the download workers
        self._parts: dict[int, Part] = {}  # the part of each file being fetched, by plan key
        self._handed: set[int] = set()  # plan keys given to the Flusher by a worker right now
        self._started = time.monotonic()

    @property
    def outcome(self) -> Outcome:
        """The run's counts (kept by its ledger)."""
        return self.ledger.outcome

    # ------------------------------------------------------------------ control
    def interrupt(self, reason: str = "interrupted") -> None:
        """Stop starting files and end in-flight transfers; partials stay for resume."""
        self.outcome.interrupted = True
        self.ledger.stop(reason)
        for task in self._tasks:
            task.cancel()

    def _stopping(self, exc: BaseException) -> BaseException:
        """Record why the run stops (for the files it leaves) and hand ``exc`` back to raise:
        raising it out of a stage ends the task group, which cancels every other stage."""
        self.ledger.stop(describe(exc) if isinstance(exc, FastioDlError) else "stopped")
        return exc

    # ------------------------------------------------------------------ run
    async def run(self, targets: list[Target]) -> Outcome:
        plan_q: asyncio.Queue[PlanEntry | None] = asyncio.Queue(PLAN_QUEUE)
        ready_q: asyncio.Queue[Ready | None] = asyncio.Queue(self.settings.concurrency)
        self.dest.mkdir(parents=True, exist_ok=True)
        planner = Planner(
            self.client, plan_q, notes=self.settings.notes, lookahead=self.prep.look_ahead
        )
        n = self.settings.concurrency
        self._preparers = n
        failure: BaseException | None = None
        self.flusher.start()  # not a stage: what was written is flushed whatever ends the run
        try:
            async with asyncio.TaskGroup() as group:
                self._tasks = [
                    group.create_task(self._check_token()),
                    group.create_task(self._plan(planner, targets)),
                    *[group.create_task(self._prepare_loop(plan_q, ready_q)) for _ in range(n)],
                    # Twice as many workers as network slots: one verifies and writes while
                    # another reads.
                    *[group.create_task(self._download_loop(ready_q)) for _ in range(2 * n)],
                ]
        except BaseExceptionGroup as errors:
            failure = _first_error(errors)
        # Files already written (also in a run that stopped early) are made durable, recorded
        # and reported.
        await self.flusher.close()
        self.disk.close()
        self.outcome.planned_paths = planner.claimed
        self._account_left(plan_q, ready_q)
        if failure is not None or self.outcome.interrupted:
            # A run that stopped early: references it never finished planning go to the
            # failed manifest too, so that a retry run covers them.
            self.outcome.failed_targets += [t for t in targets if id(t) not in planner.done]
        if isinstance(failure, FastioDlError):
            self.outcome.fatal = failure
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
        if failure is not None and not isinstance(failure, FastioDlError):
            raise failure  # a bug: the CLI reports it (a traceback with --debug)
        return self.outcome

    # ------------------------------------------------------------------ stages
    async def _check_token(self) -> None:
        try:
            await self.client.start_token_check()  # beside the first calls, not before them
        except FastioDlError as exc:
            raise self._stopping(exc) from None

    async def _plan(self, planner: Planner, targets: list[Target]) -> None:
        try:
            await planner.run(targets)
        except FastioDlError as exc:
            raise self._stopping(exc) from None

    async def _prepare_loop(
        self, plan_q: asyncio.Queue[PlanEntry | None], ready_q: asyncio.Queue[Ready | None]
    ) -> None:
        ledger, prep = self.ledger, self.prep
        while True:
            entry = await plan_q.get()
            if entry is None:
                plan_q.put_nowait(None)  # the sibling preparers see the end too (room: we took one)
                break
            try:
                ready = await prep.prepare(entry)
            except asyncio.CancelledError:
                if isinstance(entry, PlanItem):
                    ledger.not_started(entry)
                raise
            except AuthError as exc:  # 402 or a dead token while minting: the run stops
                assert isinstance(entry, PlanItem)
                ledger.fail(entry, Kind.ERROR, describe(exc))
                raise self._stopping(exc) from None
            if ready is not None:
                try:
                    await ready_q.put(ready)
                except asyncio.CancelledError:
                    prep.release(ready[0])
                    ledger.not_started(ready[0])
                    raise
        self._preparers -= 1
        if self._preparers == 0:  # the last preparer out tells every download worker
            self.reporter.emit(PlanComplete())  # every file of the run is queued: totals final
            for _ in range(2 * self.settings.concurrency):
                await ready_q.put(None)

    def _account_left(
        self, plan_q: asyncio.Queue[PlanEntry | None], ready_q: asyncio.Queue[Ready | None]
    ) -> None:
        """After a run that stopped early: what is still queued was planned and never started.
        (After a normal end both queues hold only end markers.)"""
        ledger = self.ledger
        while not ready_q.empty():
            ready = ready_q.get_nowait()
            if ready is not None:
                self.prep.release(ready[0])
                ledger.not_started(ready[0])
        while not plan_q.empty():
            entry = plan_q.get_nowait()
            if isinstance(entry, PlanItem):
                if self.prep.wanted(entry):
                    local = ledger.local(entry.relpath)
                    self.reporter.emit(FileQueued(entry.key, local, entry.remote.size))
                    ledger.not_started(entry)
            elif entry is not None:
                ledger.settle(entry)

    async def _download_loop(self, ready_q: asyncio.Queue[Ready | None]) -> None:
        ledger = self.ledger
        while True:
            work = await ready_q.get()
            if work is None:
                return
            item, final, token, decision = work
            if ledger.stop_new:
                self.prep.release(item)
                ledger.not_started(item)
                continue
            try:
                transferred = await self._fetch(item, final, token)
                await self._hand_over(item, final, decision, transferred)
            except asyncio.CancelledError:
                await self._cancelled(item, final, decision)
                raise
            except AuthError as exc:  # 402 or a dead token: the whole run stops
                ledger.fail(item, Kind.ERROR, describe(exc))
                raise self._stopping(exc) from None
            except NotStarted:
                ledger.not_started(item)
            except WriteError as exc:
                ledger.fail(item, Kind.WRITE, str(exc))
                ledger.stop(f"an earlier write failed ({exc})")
            except FastioDlError as exc:
                ledger.fail(item, Kind.ERROR, describe(exc))
            except OSError as exc:
                ledger.fail(item, Kind.LOCAL, f"local error: {exc.strerror or exc}")
            except Exception as exc:  # a bug must cost one file, never hang the pool
                ledger.fail(item, Kind.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
            finally:
                self.prep.release(item)
                self._parts.pop(item.key, None)
                self._handed.discard(item.key)

    async def _cancelled(self, item: PlanItem, final: Path, decision: Decision) -> None:
        """A worker cancelled with ``item`` in its hands: report it by where it got to."""
        part = self._parts.get(item.key)
        if item.key in self._handed:
            return  # the Flusher has it: reported once durable
        if part is not None and part.committed:
            # Cancelled after the final name was in place: it is downloaded (its bytes were
            # moved, or most of them: a resumed .part is not told apart here).
            await self._hand_over(item, final, decision, item.remote.size)
            return
        why: str = self.ledger.stop_new or "interrupted"
        if part_path(final).exists():  # small files are fetched in memory
            why += "; the partial file is kept for the next run"
        self.ledger.fail(item, Kind.INTERRUPTED, why)

    async def _hand_over(
        self, item: PlanItem, final: Path, decision: Decision, transferred: int
    ) -> None:
        """A file in place: recorded by the policy, and reported once the Flusher has it on
        disk."""
        await self.policy.record(item, final)
        kind = Kind.REPLACED if decision.replace else Kind.NEW
        reason = "replaced" if decision.replace else None
        # A large file was fsynced before its rename: only its directory is left to sync
        # (with --fsync each the Flusher knows that of every file).
        synced = isinstance(self._parts.get(item.key), PartFile)
        self._handed.add(item.key)  # add() queues it before it may wait: a cancel loses nothing
        await self.flusher.add(
            final,
            functools.partial(self.ledger.finish_after_sync, item, kind, transferred, reason),
            synced=synced,
        )

    # ------------------------------------------------------------------ one file
    async def _fetch(self, item: PlanItem, final: Path, token: str | None) -> int:
        remote = item.remote
        meta = PartMeta(remote.node_id, remote.version, remote.hash, remote.hash_algo, remote.size)
        if item.content is not None:
            return await self._save_note(item, final, meta)
        # Small files are verified in memory and written in one step; large ones stream to disk.
        part: Part = (
            MemoryPart(final, meta, self.disk)
            if remote.size <= SMALL_FILE
            else PartFile(final, meta, self.disk)
        )
        self._parts[item.key] = part  # a cancel must learn whether its final name is in place
        # Checked again (prepared a while ago); a .part is always beside its final name.
        self.prep.guard.check(final)
        fetcher = self.fetcher
        if token is None and fetcher.reads_want_tokens:
            token = await fetcher.mint(item)  # prepared before auto mode learnt to mint
        if isinstance(part, PartFile) and is_segmentable(self.settings, item):
            try:
                async with fetcher.net_slots:
                    fetcher.may_start()
                    return await fetch_segmented(fetcher, item, final, part, token)
            except RangeUnsupportedError:
                # The server ignores Range: one stream from byte zero it is.
                await part.discard()
                self.reporter.emit(Notice("info", f"{final}: the server ignores Range; one stream"))
            except FastLinkError as exc:
                # One connection alone is fast: it goes on as one stream from where it is.
                self.reporter.emit(Notice("info", f"{final}: {exc}"))
        return await fetcher.fetch_stream(item, final, part, token)

    async def _save_note(self, item: PlanItem, final: Path, meta: PartMeta) -> int:
        """A note's text, already read: checked and renamed into place like any small file."""
        assert item.content is not None
        part = MemoryPart(final, meta, self.disk)
        self.prep.guard.check(final)
        await part.open(0)
        await part.write([item.content])
        await part.verify()
        await part.commit()
        return len(item.content)
