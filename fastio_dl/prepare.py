"""The prepare stage: one plan entry becomes a file ready to download, or is settled here.

For each file: its local path (checked by the path guard), the local policy's decision (skip,
adopt an identical file, download, replace), room on the disk on top of what files in flight
still need, a note's text, and in token mode its read token, minted shortly before use.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
from pathlib import Path

from fastio_dl.client import FastioClient
from fastio_dl.config import Settings
from fastio_dl.durability import Flusher
from fastio_dl.errors import AuthError, FastioDlError, TransferError, describe
from fastio_dl.events import FileQueued, Kind
from fastio_dl.fetch import Fetcher
from fastio_dl.ledger import Ledger
from fastio_dl.models import STATE_DIR, PlanEntry, PlanItem
from fastio_dl.names import PathGuard
from fastio_dl.policy import UP_TO_DATE, Decision, LocalPolicy, in_shard
from fastio_dl.storage import DiskSpace, Leftovers, part_path

SMALL_FILE = 1024 * 1024  # up to this size a file is verified in memory and written in one step
Ready = tuple[PlanItem, Path, str | None, Decision]  # a file prepared for a download worker


class Preparer:
    """Decisions, disk room and read tokens for the files of one run."""

    def __init__(
        self,
        settings: Settings,
        client: FastioClient,
        policy: LocalPolicy,
        ledger: Ledger,
        fetcher: Fetcher,
        flusher: Flusher,
        *,
        dry_run: bool,
    ) -> None:
        self.settings = settings
        self.client = client
        self.policy = policy
        self.ledger = ledger
        self.fetcher = fetcher
        self.flusher = flusher
        self.dry_run = dry_run
        self.guard = PathGuard(settings.dest)
        self.space = DiskSpace(settings.dest)
        self.leftovers = Leftovers()
        self._reserved = 0  # bytes that files in flight may still write
        self._reservations: dict[int, int] = {}

    def wanted(self, item: PlanItem) -> bool:
        """Whether this host downloads ``item`` (``--shard``: another host may)."""
        shard = self.settings.shard
        return shard is None or in_shard(item.remote.node_id, shard)

    def look_ahead(self, items: list[PlanItem]) -> set[int]:
        """A listing page's files (claimed, numbered), before they are queued: the policy reads
        what it needs of them at once, and those that its records say are up to date are
        reported here and now (their keys come back: the planner does not queue them). A
        million unchanged files then cost a record, a stat and their report each, without a
        trip through the plan queue and a preparer."""
        policy, ledger = self.policy, self.ledger
        policy.prefetch(items)
        if not policy.tracked or ledger.stop_new:
            return set()
        settled: set[int] = set()
        for item in items:
            if item.remote.kind == "note" or not self.wanted(item):
                continue  # a note is decided on its version; another host's file is not ours
            final = ledger.local(item.relpath)
            try:
                self._check_local(item, final)
            except FastioDlError:
                continue  # the preparer refuses it, with its reason
            if policy.up_to_date(item, final):
                ledger.reporter.emit(FileQueued(item.key, final, item.remote.size))
                self._skip(item, final, UP_TO_DATE)
                settled.add(item.key)
        return settled

    async def prepare(self, entry: PlanEntry) -> Ready | None:
        """One plan entry: report skips and failures; for a file, the local decision, disk
        room and (in token mode) its read token. None when nothing is left to download."""
        ledger = self.ledger
        if not isinstance(entry, PlanItem):
            ledger.settle(entry)
            return None
        if not self.wanted(entry):
            return None
        final = ledger.local(entry.relpath)
        ledger.reporter.emit(FileQueued(entry.key, final, entry.remote.size))
        if ledger.stop_new:
            ledger.not_started(entry)
            return None
        try:
            return await self._decide(entry, final)
        except (AuthError, asyncio.CancelledError):
            raise
        except FastioDlError as exc:
            ledger.fail(entry, Kind.ERROR, describe(exc))
        except Exception as exc:  # a bug must cost one file, never hang the pool
            ledger.fail(entry, Kind.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")
        return None

    def _check_local(self, entry: PlanItem, final: str) -> None:
        """Refuse a local path fastio-dl must not write: its own state directory, or one that
        leads outside the destination."""
        if entry.relpath.partition("/")[0] == STATE_DIR:
            raise TransferError(
                f"{STATE_DIR} is reserved for fastio-dl's own state; "
                "give this file another DEST in a manifest"
            )
        self.guard.check(final)

    async def _decide(self, entry: PlanItem, final: str) -> Ready | None:
        self._check_local(entry, final)
        if entry.remote.kind == "note":
            if self.policy.note_is_current(entry, final):
                self.ledger.finish_after_sync(entry, Kind.UP_TO_DATE, 0, "up to date", None)
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
        self.reserve(entry, path)
        try:
            token = await self.fetcher.mint(entry)
        except BaseException:
            self.release(entry)
            raise
        return entry, path, token, decision

    def _skip(self, item: PlanItem, final: str, decision: Decision) -> None:
        """A file with nothing to download, or any file in a dry run: reported."""
        kind, reason = decision.skip, decision.reason
        if kind is None:
            kind = Kind.WOULD_REPLACE if decision.replace else Kind.WOULD_DOWNLOAD
            reason = "dry run: would " + ("replace" if decision.replace else "download")
        elif not self.dry_run:
            self.leftovers.drop(final)
        self.ledger.finish_item(item, kind, 0, reason=reason)

    async def _adopt(self, item: PlanItem, final: Path, decision: Decision) -> None:
        """An identical local file: recorded, and reported once it is surely on disk."""
        assert decision.skip is not None
        self.leftovers.drop(final)
        await self.policy.record(item, final)
        finish = functools.partial(
            self.ledger.finish_after_sync, item, decision.skip, 0, decision.reason
        )
        await self.flusher.add(final, finish)

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

    def reserve(self, item: PlanItem, final: Path) -> None:
        """Check room for this file on top of what files already in flight still need."""
        have = 0
        if item.remote.size > SMALL_FILE:  # only large files leave a resumable .part
            with contextlib.suppress(OSError):
                have = part_path(final).stat().st_size
        need = max(0, item.remote.size - have)
        self.space.check(need + self._reserved)
        self._reserved += need
        self._reservations[item.key] = need

    def release(self, item: PlanItem) -> None:
        """The file no longer needs its room (done, failed or never started)."""
        self._reserved -= self._reservations.pop(item.key, 0)
