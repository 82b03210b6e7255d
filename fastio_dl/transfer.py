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

This module is the pipeline only: one file's bytes move in :mod:`fastio_dl.fetch` (one stream)
or :mod:`fastio_dl.segments` (several ranged connections), what to skip is decided in
:mod:`fastio_dl.policy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import os
import time
from pathlib import Path

from fastio_dl.client import FastioClient
from fastio_dl.config import Settings
from fastio_dl.durability import Flusher, has_syncfs
from fastio_dl.errors import AuthError, FastioDlError, TransferError, WriteError, describe
from fastio_dl.events import (
    FileFinished,
    FileQueued,
    Kind,
    Notice,
    PlanComplete,
    Reporter,
    RunSummary,
)
from fastio_dl.fetch import Fetcher, Part
from fastio_dl.models import (
    STATE_DIR,
    Outcome,
    PlanEntry,
    PlanFailure,
    PlanItem,
    PlanSkip,
    Target,
)
from fastio_dl.names import PathGuard
from fastio_dl.planner import Planner
from fastio_dl.policy import Decision, GetPolicy, LocalPolicy, in_shard
from fastio_dl.segments import (
    FastLinkError,
    RangeUnsupportedError,
    fetch_segmented,
    is_segmentable,
)
from fastio_dl.storage import (
    Disk,
    DiskSpace,
    Leftovers,
    MemoryPart,
    PartFile,
    PartMeta,
    part_path,
)

SMALL_FILE = 1024 * 1024  # up to this size a file is verified in memory and written in one step
PLAN_QUEUE = 2048
Ready = tuple[PlanItem, Path, str | None, Decision]  # a file prepared for a download worker


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
        self.dry_run = dry_run
        self.outcome = Outcome()
        self._stop_new: str | None = None  # reason new files must not start
        self.fetcher = Fetcher(settings, client, reporter)
        self._reserved = 0  # bytes that files in flight may still write
        self._reservations: dict[int, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._preparers = 0  # preparers still running; the last one ends the download workers
        self._parts: dict[int, Part] = {}  # the part of each file being fetched, by plan key
        self._handed: set[int] = set()  # plan keys given to the Flusher by a worker right now
        self._started = time.monotonic()
        self.dest = settings.dest
        # Local paths are spelt as str(dest / relpath) would spell them, without pathlib's
        # cost per file (a no-op sync of a million files builds a million of them).
        self._under = "" if str(self.dest) == "." else os.path.join(self.dest, "")
        self.guard = PathGuard(settings.dest)
        self.space = DiskSpace(settings.dest)
        self.leftovers = Leftovers()
        fsync_each = settings.fsync == "each" or not has_syncfs()
        self.disk = Disk(sync=fsync_each)  # this run's buffers and write switches
        self.flusher = Flusher(settings.dest, each=fsync_each, take=self.policy.durable)

    # ------------------------------------------------------------------ control
    def interrupt(self, reason: str = "interrupted") -> None:
        """Stop starting files and end in-flight transfers; partials stay for resume."""
        self.outcome.interrupted = True
        self._stop_new = self._stop_new or reason
        for task in self._tasks:
            task.cancel()

    def _stopping(self, exc: BaseException) -> BaseException:
        """Record why the run stops (for the files it leaves) and hand ``exc`` back to raise:
        raising it out of a stage ends the task group, which cancels every other stage."""
        if self._stop_new is None:
            self._stop_new = describe(exc) if isinstance(exc, FastioDlError) else "stopped"
        return exc

    # ------------------------------------------------------------------ run
    async def run(self, targets: list[Target]) -> Outcome:
        plan_q: asyncio.Queue[PlanEntry | None] = asyncio.Queue(PLAN_QUEUE)
        ready_q: asyncio.Queue[Ready | None] = asyncio.Queue(self.settings.concurrency)
        self.dest.mkdir(parents=True, exist_ok=True)
        planner = Planner(
            self.client, plan_q, notes=self.settings.notes, lookahead=self.policy.prefetch
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
        while True:
            entry = await plan_q.get()
            if entry is None:
                plan_q.put_nowait(None)  # the sibling preparers see the end too (room: we took one)
                break
            try:
                ready = await self._prepare(entry)
            except asyncio.CancelledError:
                if isinstance(entry, PlanItem):
                    self._not_started(entry)
                raise
            except AuthError as exc:  # 402 or a dead token while minting: the run stops
                assert isinstance(entry, PlanItem)
                self._fail(entry, Kind.ERROR, describe(exc))
                raise self._stopping(exc) from None
            if ready is not None:
                try:
                    await ready_q.put(ready)
                except asyncio.CancelledError:
                    self._release(ready[0])
                    self._not_started(ready[0])
                    raise
        self._preparers -= 1
        if self._preparers == 0:  # the last preparer out tells every download worker
            self.reporter.emit(PlanComplete())  # every file of the run is queued: totals final
            for _ in range(2 * self.settings.concurrency):
                await ready_q.put(None)

    async def _prepare(self, entry: PlanEntry) -> Ready | None:
        """One plan entry: report skips and failures; for a file, the local decision, disk
        room and (in token mode) its read token. None when nothing is left to download."""
        if not isinstance(entry, PlanItem):
            self._settle(entry)
            return None
        if self.settings.shard is not None and not in_shard(
            entry.remote.node_id, self.settings.shard
        ):
            return None  # another host's file (--shard)
        final = self._local(entry.relpath)
        self.reporter.emit(FileQueued(entry.key, final, entry.remote.size))
        if self._stop_new:
            self._not_started(entry)
            return None
        try:
            if entry.relpath.partition("/")[0] == STATE_DIR:
                raise TransferError(
                    f"{STATE_DIR} is reserved for fastio-dl's own state; "
                    "give this file another DEST in a manifest"
                )
            self.guard.check(final)
            if entry.remote.kind == "note":
                if self.policy.note_is_current(entry, final):
                    self._finish_after_sync(entry, Kind.UP_TO_DATE, 0, "up to date", None)
                    return None
                await self._load_note(entry)
            decision = await self.policy.decide(entry, final)
            if decision.record and not self.dry_run:
                await self._adopt(entry, Path(final), decision)
                return None
            if decision.skip is not None or self.dry_run:
                self._skip(entry, final, decision)
                return None
            path = Path(final)
            self._reserve(entry, path)
            try:
                token = await self.fetcher.mint(entry)
            except BaseException:
                self._release(entry)
                raise
        except (AuthError, asyncio.CancelledError):
            raise
        except FastioDlError as exc:
            self._fail(entry, Kind.ERROR, describe(exc))
            return None
        except Exception as exc:  # a bug must cost one file, never hang the pool
            self._fail(entry, Kind.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
            return None
        return entry, path, token, decision

    def _skip(self, item: PlanItem, final: str, decision: Decision) -> None:
        """A file with nothing to download, or any file in a dry run: reported."""
        kind, reason = decision.skip, decision.reason
        if kind is None:
            kind = Kind.WOULD_REPLACE if decision.replace else Kind.WOULD_DOWNLOAD
            reason = "dry run: would " + ("replace" if decision.replace else "download")
        elif not self.dry_run:
            self.leftovers.drop(final)
        self._finish_item(item, kind, 0, reason=reason)

    async def _adopt(self, item: PlanItem, final: Path, decision: Decision) -> None:
        """An identical local file: recorded, and reported once it is surely on disk."""
        assert decision.skip is not None
        self.leftovers.drop(final)
        await self.policy.record(item, final)
        finish = functools.partial(self._finish_after_sync, item, decision.skip, 0, decision.reason)
        await self.flusher.add(final, finish)

    def _local(self, relpath: str) -> str:
        """``str(dest / relpath)``, the path events and the local side use."""
        if not relpath:
            return str(self.dest)
        return self._under + (relpath if os.sep == "/" else relpath.replace("/", os.sep))

    def _not_started(self, item: PlanItem) -> None:
        why = self._stop_new or "the run stopped"
        self._fail(item, Kind.NOT_STARTED, f"not started: {why}")

    def _account_left(
        self, plan_q: asyncio.Queue[PlanEntry | None], ready_q: asyncio.Queue[Ready | None]
    ) -> None:
        """After a run that stopped early: what is still queued was planned and never started.
        (After a normal end both queues hold only end markers.)"""
        while not ready_q.empty():
            ready = ready_q.get_nowait()
            if ready is not None:
                self._release(ready[0])
                self._not_started(ready[0])
        while not plan_q.empty():
            entry = plan_q.get_nowait()
            if isinstance(entry, PlanItem):
                if self.settings.shard is None or in_shard(
                    entry.remote.node_id, self.settings.shard
                ):
                    self.reporter.emit(
                        FileQueued(entry.key, self._local(entry.relpath), entry.remote.size)
                    )
                    self._not_started(entry)
            elif entry is not None:
                self._settle(entry)

    def _settle(self, entry: PlanSkip | PlanFailure) -> None:
        """Report a plan entry that is not a download: a skip, or a reference that failed."""
        self.reporter.emit(FileQueued(0, self._local(entry.relpath or ""), 0))
        if isinstance(entry, PlanSkip):
            self._finish(
                entry.target, entry.node_id, entry.relpath, entry.kind, 0, 0, reason=entry.reason
            )
        else:
            self.outcome.plan_failures += 1
            self._finish(
                entry.target, entry.node_id, entry.relpath, Kind.PLAN, 0, 0, error=entry.error
            )

    async def _load_note(self, item: PlanItem) -> None:
        """Read a note's markdown now: its size and hash (sha256 of the text as saved) then let
        the local side decide as for any file."""
        remote = item.remote
        text = await self.client.read_note(
            remote.context,
            remote.context_id,
            remote.node_id,
            version_id=remote.version if remote.pinned else None,
        )
        item.content = text.encode("utf-8")
        item.remote = remote._replace(
            size=len(item.content),
            hash=hashlib.sha256(item.content).hexdigest(),
            hash_algo="sha256",
        )

    def _reserve(self, item: PlanItem, final: Path) -> None:
        """Check room for this file on top of what files already in flight still need."""
        have = 0
        if item.remote.size > SMALL_FILE:  # only large files leave a resumable .part
            with contextlib.suppress(OSError):
                have = part_path(final).stat().st_size
        need = max(0, item.remote.size - have)
        self.space.check(need + self._reserved)
        self._reserved += need
        self._reservations[item.key] = need

    def _release(self, item: PlanItem) -> None:
        self._reserved -= self._reservations.pop(item.key, 0)

    async def _download_loop(self, ready_q: asyncio.Queue[Ready | None]) -> None:
        while True:
            work = await ready_q.get()
            if work is None:
                return
            item, final, token, decision = work
            if self._stop_new:
                self._release(item)
                self._not_started(item)
                continue
            try:
                transferred = await self._fetch(item, final, token)
                await self._hand_over(item, final, decision, transferred)
            except asyncio.CancelledError:
                part = self._parts.get(item.key)
                if item.key in self._handed:
                    pass  # the Flusher has it: reported once durable
                elif part is not None and part.committed:
                    # Cancelled after the final name was in place: it is downloaded (its bytes
                    # were moved, or most of them: a resumed .part is not told apart here).
                    await self._hand_over(item, final, decision, item.remote.size)
                else:
                    why: str = self._stop_new or "interrupted"
                    kept = part_path(final).exists()  # small files are fetched in memory
                    if kept:
                        why += "; the partial file is kept for the next run"
                    self._fail(item, Kind.INTERRUPTED, why)
                raise
            except AuthError as exc:  # 402 or a dead token: the whole run stops
                self._fail(item, Kind.ERROR, describe(exc))
                raise self._stopping(exc) from None
            except WriteError as exc:
                self._fail(item, Kind.WRITE, str(exc))
                self._stop_new = self._stop_new or f"an earlier write failed ({exc})"
                continue
            except FastioDlError as exc:
                self._fail(item, Kind.ERROR, describe(exc))
                continue
            except OSError as exc:
                self._fail(item, Kind.LOCAL, f"local error: {exc.strerror or exc}")
                continue
            except Exception as exc:  # a bug must cost one file, never hang the pool
                self._fail(item, Kind.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
                continue
            finally:
                self._release(item)
                self._parts.pop(item.key, None)
                self._handed.discard(item.key)

    async def _hand_over(
        self, item: PlanItem, final: Path, decision: Decision, transferred: int
    ) -> None:
        """A file in place: recorded by the policy, and reported once the Flusher has it on
        disk."""
        await self.policy.record(item, final)
        kind = Kind.REPLACED if decision.replace else Kind.NEW
        reason = "replaced" if decision.replace else None
        self._handed.add(item.key)  # add() queues it before it may wait: a cancel loses nothing
        await self.flusher.add(
            final,
            functools.partial(self._finish_after_sync, item, kind, transferred, reason),
        )

    def _finish_after_sync(
        self,
        item: PlanItem,
        kind: Kind,
        transferred: int,
        reason: str | None,
        error: str | None,
    ) -> None:
        if error is not None:
            # The disk (or the state database) failed under the group sync: as with a failed
            # write, no new file starts after it.
            self._fail(item, Kind.WRITE, error)
            self._stop_new = self._stop_new or f"an earlier write failed ({error})"
            return
        self._finish_item(item, kind, transferred, reason=reason)

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
        self.guard.check(final)
        self.guard.check(part.path)
        fetcher = self.fetcher
        if token is None and fetcher.reads_want_tokens:
            token = await fetcher.mint(item)  # prepared before auto mode learnt to mint
        if isinstance(part, PartFile) and is_segmentable(self.settings, item):
            try:
                async with fetcher.net_slots:
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
        self.guard.check(final)
        await part.open(0)
        await part.write([item.content])
        await part.verify()
        await part.commit()
        return len(item.content)

    # ------------------------------------------------------------------ accounting
    def _fail(self, item: PlanItem, kind: Kind, error: str) -> None:
        self._finish_item(item, kind, 0, error=error)

    def _finish_item(
        self,
        item: PlanItem,
        kind: Kind,
        transferred: int,
        *,
        error: str | None = None,
        reason: str | None = None,
    ) -> None:
        self._finish(
            item.target,
            item.remote.node_id,
            item.relpath,
            kind,
            item.remote.size,
            transferred,
            error=error,
            reason=reason,
            key=item.key,
        )

    def _finish(
        self,
        target: Target,
        node_id: str,
        relpath: str | None,
        kind: Kind,
        size: int,
        transferred: int,
        *,
        error: str | None = None,
        reason: str | None = None,
        key: int = 0,
    ) -> None:
        status = kind.status
        if status == "downloaded":
            self.outcome.downloaded += 1
            self.outcome.bytes += transferred
        elif status == "skipped":
            self.outcome.skipped += 1
        else:
            self.outcome.failed += 1
            self.outcome.failed_targets.append(target)
        path = self._local(relpath) if relpath is not None else ""
        # Positional: a million skipped files make a million of these.
        event = FileFinished(
            key, target.ref.text, node_id, path, kind, size, transferred, error, reason
        )
        self.reporter.emit(event)
