"""The run's ledger: every planned file is reported exactly once, and counted in the outcome.

The pipeline's stages (:mod:`fastio_dl.transfer`, :mod:`fastio_dl.prepare`) tell the ledger how
each file ended; it keeps the counts, the references to retry, the reason new files stop
starting, and emits one :class:`~fastio_dl.events.FileFinished` per file.
"""

from __future__ import annotations

import os
from pathlib import Path

from fastio_dl.events import FileFinished, FileQueued, Kind, Reporter
from fastio_dl.models import Outcome, PlanFailure, PlanItem, PlanSkip, Target


class Ledger:
    """Counts and final events of one run."""

    def __init__(self, dest: Path, reporter: Reporter) -> None:
        self.dest = dest
        self.reporter = reporter
        self.outcome = Outcome()
        self.stop_new: str | None = None  # reason new files must not start
        # Local paths are spelt as str(dest / relpath) would spell them, without pathlib's
        # cost per file (a no-op sync of a million files builds a million of them).
        self._under = "" if str(dest) == "." else os.path.join(dest, "")

    def local(self, relpath: str) -> str:
        """``str(dest / relpath)``, the path events and the local side use."""
        if not relpath:
            return str(self.dest)
        return self._under + (relpath if os.sep == "/" else relpath.replace("/", os.sep))

    def stop(self, reason: str) -> None:
        """No new file starts from now on (the first reason given is the one reported)."""
        self.stop_new = self.stop_new or reason

    def not_started(self, item: PlanItem) -> None:
        why = self.stop_new or "the run stopped"
        self.fail(item, Kind.NOT_STARTED, f"not started: {why}")

    def settle(self, entry: PlanSkip | PlanFailure) -> None:
        """Report a plan entry that is not a download: a skip, or a reference that failed."""
        self.reporter.emit(FileQueued(0, self.local(entry.relpath or ""), 0))
        if isinstance(entry, PlanSkip):
            self.finish(
                entry.target, entry.node_id, entry.relpath, entry.kind, 0, 0, reason=entry.reason
            )
        else:
            self.outcome.plan_failures += 1
            self.finish(
                entry.target, entry.node_id, entry.relpath, Kind.PLAN, 0, 0, error=entry.error
            )

    def finish_after_sync(
        self,
        item: PlanItem,
        kind: Kind,
        transferred: int,
        reason: str | None,
        error: str | None,
    ) -> None:
        """The Flusher's answer for a file it made durable (or failed to)."""
        if error is not None:
            # The disk (or the state database) failed under the group sync: as with a failed
            # write, no new file starts after it.
            self.fail(item, Kind.WRITE, error)
            self.stop(f"an earlier write failed ({error})")
            return
        self.finish_item(item, kind, transferred, reason=reason)

    def fail(self, item: PlanItem, kind: Kind, error: str) -> None:
        self.finish_item(item, kind, 0, error=error)

    def finish_item(
        self,
        item: PlanItem,
        kind: Kind,
        transferred: int,
        *,
        error: str | None = None,
        reason: str | None = None,
    ) -> None:
        self.finish(
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

    def finish(
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
        path = self.local(relpath) if relpath is not None else ""
        # Positional: a million skipped files make a million of these.
        event = FileFinished(
            key, target.ref.text, node_id, path, kind, size, transferred, error, reason
        )
        self.reporter.emit(event)
