"""What the local side decides before a download and records after it.

``get`` skips a local file with the same size and hash; ``sync`` trusts its state database and a
``stat``, adopts identical untracked files and records what it wrote. ``--shard`` picks the
files this host handles.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fastio_dl.durability import fsync_path
from fastio_dl.events import Kind
from fastio_dl.hashing import matches_local
from fastio_dl.models import PlanItem
from fastio_dl.state import Record, State, local_matches_record
from fastio_dl.storage import EmptyAtStart


@dataclass(frozen=True)
class Decision:
    """What the local side says about a planned file before any byte moves."""

    skip: Kind | None = None  # set: nothing to download
    reason: str | None = None  # why, for people to read
    replace: bool = False  # a different local file will be replaced
    record: bool = False  # with skip: an identical local file to record (adopt)


UP_TO_DATE = Decision(Kind.UP_TO_DATE, "up to date")


class LocalPolicy(Protocol):
    """Decides skips before download and records results after (``get`` and ``sync`` differ).

    ``final`` is the file's local path (``str(dest / item.relpath)``).
    """

    #: whether records of earlier runs say which files are current (sync): the pipeline then
    #: asks :meth:`up_to_date` of a listing page's files before queueing them
    tracked: bool

    def prefetch(self, items: list[PlanItem]) -> None:
        """Files about to be decided (a listing page's): what they need, read at once."""
        ...

    def up_to_date(self, item: PlanItem, final: str) -> bool:
        """Whether the record and a stat say the local file is the remote one as it is: then
        nothing else need be decided (a file that is not keeps what :meth:`decide` needs)."""
        ...

    async def decide(self, item: PlanItem, final: str) -> Decision: ...

    async def record(self, item: PlanItem, final: Path) -> None: ...

    def durable(self) -> Callable[[], None] | None:
        """Hand over what ``record`` staged: the call that commits it, run by the Flusher once
        the files are on disk (None: nothing staged)."""
        ...

    def note_is_current(self, item: PlanItem, final: str) -> bool:
        """Whether a note's text need not even be read (its version is the one we wrote)."""
        ...


class GetPolicy:
    """``get``: skip a local file with the same size and hash; otherwise replace (or keep)."""

    tracked = False

    def __init__(self, no_clobber: bool) -> None:
        self.no_clobber = no_clobber
        self.local = EmptyAtStart()  # what was on disk before this run

    def prefetch(self, items: list[PlanItem]) -> None:
        return None

    def up_to_date(self, item: PlanItem, final: str) -> bool:
        return False

    async def decide(self, item: PlanItem, final: str) -> Decision:
        if not self.local.exists(final):
            return Decision()
        path = Path(final)
        remote = item.remote
        if await matches_local(path, remote.size, remote.hash_algo, remote.hash):
            return Decision(Kind.PRESENT, "already present and verified")
        if self.no_clobber:
            return Decision(Kind.KEPT, "a different local file exists (kept: --no-clobber)")
        return Decision(replace=True)

    async def record(self, item: PlanItem, final: Path) -> None:
        return None

    def durable(self) -> Callable[[], None] | None:
        return None

    def note_is_current(self, item: PlanItem, final: str) -> bool:
        return False  # get compares the text itself (read, then size and hash)


class SyncPolicy:
    """Skip what the state says is current; adopt identical untracked files; record writes.

    Records are staged by :meth:`record` and committed by the engine's Flusher, in one
    transaction per group, only after the files they describe are on disk (``durable``).
    Records are read a listing page at a time (:meth:`prefetch`) and each is kept until its
    file is decided; one still undecided after two generations of ``AHEAD`` (another host's
    file under ``--shard``) is dropped, and read again on its own if it is ever asked for.
    """

    AHEAD = 4096  # more than the plan queue and the pages being planned hold
    tracked = True

    def __init__(self, state: State, *, dry_run: bool, fsync_each: bool = False) -> None:
        self.state = state
        self.dry_run = dry_run
        self.fsync_each = fsync_each  # no group sync: an adopted file is fsynced on its own
        self.local = EmptyAtStart()  # what was on disk before this run
        self._staged: list[Record] = []
        # Records read ahead, by path (None: no record); two generations, so that those of
        # files never decided (another host's --shard, a run that stops) cost bounded memory.
        self._ahead: dict[str, Record | None] = {}
        self._older: dict[str, Record | None] = {}

    def prefetch(self, items: list[PlanItem]) -> None:
        paths = [item.relpath for item in items]
        found = self.state.get_many(paths)
        if len(self._ahead) >= self.AHEAD:
            self._older, self._ahead = self._ahead, {}
        for path in paths:
            self._ahead[path] = found.get(path)

    def _record(self, path: str, *, take: bool = True) -> Record | None:
        """The record of ``path``: read ahead (``take``: and forgotten there), or read now."""
        for ahead in (self._ahead, self._older):
            if path in ahead:
                return ahead.pop(path) if take else ahead[path]
        return self.state.get(path)

    def up_to_date(self, item: PlanItem, final: str) -> bool:
        """The record read ahead is forgotten only when the file is up to date: one that is
        not keeps it for :meth:`decide`."""
        if not _current(item, final, self._record(item.relpath, take=False)):
            return False
        for ahead in (self._ahead, self._older):
            ahead.pop(item.relpath, None)
        return True

    async def decide(self, item: PlanItem, final: str) -> Decision:
        remote = item.remote
        if _current(item, final, self._record(item.relpath)):
            return UP_TO_DATE
        if self.local.exists(final):
            path = Path(final)
            if await matches_local(path, remote.size, remote.hash_algo, remote.hash):
                if self.dry_run:
                    return Decision(Kind.WOULD_ADOPT, "dry run: would adopt (identical local file)")
                if self.fsync_each:
                    await asyncio.to_thread(fsync_path, path)
                return Decision(Kind.ADOPTED, "adopted (identical local file)", record=True)
            return Decision(replace=True)
        return Decision()

    def note_is_current(self, item: PlanItem, final: str) -> bool:
        """Notes are tracked by version like files: the same note at the same version, and the
        local file as we wrote it, needs no ``readnote`` at all."""
        remote = item.remote
        record = self._record(item.relpath)
        return (
            record is not None
            and remote.version is not None
            and (record.node_id, record.version) == (remote.node_id, remote.version)
            and local_matches_record(final, record)
        )

    async def record(self, item: PlanItem, final: Path) -> None:
        stat = os.stat(final)
        remote = item.remote
        self._staged.append(
            Record(
                path=item.relpath,
                node_id=remote.node_id,
                context=remote.context,
                context_id=remote.context_id,
                version=remote.version,
                hash=remote.hash,
                hash_algo=remote.hash_algo,
                size=remote.size,
                local_size=stat.st_size,
                local_mtime_ns=stat.st_mtime_ns,
            )
        )

    def durable(self) -> Callable[[], None] | None:
        if not self._staged:
            return None
        staged, self._staged = self._staged, []
        return functools.partial(self.state.put_many, staged)


def _current(item: PlanItem, final: str, record: Record | None) -> bool:
    """The record matches the remote file (node, version, hash, size) and the local file
    still has the size and mtime recorded."""
    remote = item.remote
    return (
        record is not None
        and (record.node_id, record.version, record.hash, record.size)
        == (remote.node_id, remote.version, remote.hash, remote.size)
        and local_matches_record(final, record)
    )


def in_shard(node_id: str, shard: tuple[int, int]) -> bool:
    """``--shard K/N``: a stable split by node id, the same on every host and every run."""
    index, count = shard
    return int(hashlib.sha256(node_id.encode()).hexdigest()[:16], 16) % count == index
