"""``sync``: bring a destination in step with a manifest, cheaply and safely from cron.

Up-to-date files are decided from the state database and a ``stat`` (no hashing, no read
token, no byte); one sync per destination at a time (an OS file lock that dies with its process).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fastio_dl.errors import LockedError, UsageError, human_bytes
from fastio_dl.events import Event, FileFinished, Kind
from fastio_dl.models import STATE_DIR, Target
from fastio_dl.policy import in_shard
from fastio_dl.state import Claims, State, local_matches_record, unclaimed

LOCK_NAME = "lock"
STATE_NAME = "state.db"
LOCK_POLL = 0.2
# The default guard on --delete (as rclone bisync's --max-delete): a run that would delete more
# than half of the tracked files, and more than this many, deletes nothing.
GUARD_FLOOR = 10


@dataclass(frozen=True)
class DeleteLimit:
    """``--max-delete``: a count (``50``) or a share of the tracked files (``25%``).

    None of either: the default guard (more than half of the tracked files and more than
    GUARD_FLOOR is too many). ``100%`` lifts every limit.
    """

    count: int | None = None
    percent: float | None = None

    def exceeded(self, deletions: int, tracked: int) -> bool:
        if self.count is not None:
            return deletions > self.count
        if self.percent is not None:
            return deletions * 100 > tracked * self.percent
        return deletions > GUARD_FLOOR and deletions * 2 > tracked

    def describe(self) -> str:
        if self.count is not None:
            return f"over --max-delete {self.count}"
        if self.percent is not None:
            return f"over --max-delete {self.percent:g}% of them"
        return f"more than half of them and more than {GUARD_FLOOR} (the default guard)"


def parse_max_delete(text: str | None) -> DeleteLimit:
    """``N`` (a count) or ``P%`` (a percentage of the tracked files, 0-100)."""
    if text is None or not text.strip():
        return DeleteLimit()
    value = text.strip()
    try:
        if value.endswith("%"):
            percent = float(value[:-1])
            if not 0 <= percent <= 100:
                raise ValueError
            return DeleteLimit(percent=percent)
        count = int(value)
        if count < 0:
            raise ValueError
        return DeleteLimit(count=count)
    except ValueError:
        raise UsageError(
            f"--max-delete takes a count like 50 or a percentage like 25%, not {text!r}",
            "--max-delete 100% lifts the limit",
        ) from None


def state_path(dest: Path) -> Path:
    return dest / STATE_DIR / STATE_NAME


@dataclass
class Deletions:
    deleted: list[str] = field(default_factory=list)
    kept_modified: list[str] = field(default_factory=list)
    already_gone: list[str] = field(default_factory=list)


def stale_paths(state: State, planned: Claims) -> list[str]:
    """Tracked paths that this run's plan no longer contains (left the manifest or the remote)."""
    return list(unclaimed(state, planned))


def delete_stale(dest: Path, state: State, paths: list[str]) -> Deletions:
    """Remove tracked files that left; never a file modified since we wrote it, never untracked."""
    result = Deletions()
    forgotten: list[str] = []
    for relpath in paths:
        record = state.get(relpath)
        if record is None:
            continue
        path = dest / relpath
        if not path.exists():
            result.already_gone.append(relpath)
        elif local_matches_record(path, record):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            result.deleted.append(relpath)
            _prune_empty_dirs(dest, path.parent)
        else:
            result.kept_modified.append(relpath)
        forgotten.append(relpath)
    state.forget_many(forgotten)
    return result


def _prune_empty_dirs(dest: Path, directory: Path) -> None:
    root = dest.resolve()
    current = directory
    while current.resolve() != root and root in current.resolve().parents:
        try:
            current.rmdir()
        except OSError:
            return
        current = current.parent


@contextlib.contextmanager
def destination_lock(dest: Path, wait: float = 0.0) -> Iterator[None]:
    """Hold an exclusive flock on ``DEST/.fastio-dl/lock``; the kernel drops it if we die."""
    import fcntl

    lock_dir = dest / STATE_DIR
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    holder = _read_holder(path)
                    raise LockedError(
                        f"another fastio-dl sync{holder} is running on {dest}",
                        "let it finish, or pass --wait-lock SECONDS to wait for it",
                    ) from None
                time.sleep(LOCK_POLL)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _read_holder(path: Path) -> str:
    try:
        pid = path.read_text(encoding="ascii").strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""


# ----------------------------------------------------------------------------- after the run


class DryRunTally:
    """A reporter that counts what a dry run would download, replace or adopt (files and
    bytes): the summary's figures, with nothing kept per file."""

    def __init__(self) -> None:
        self.counts = {kind: [0, 0] for kind in (Kind.WOULD_DOWNLOAD, Kind.WOULD_REPLACE)}
        self.counts[Kind.WOULD_ADOPT] = [0, 0]

    def emit(self, event: Event) -> None:
        if isinstance(event, FileFinished) and event.kind in self.counts:
            bucket = self.counts[event.kind]
            bucket[0] += 1
            bucket[1] += event.bytes

    def close(self) -> None:
        pass


@dataclass
class SyncReport:
    code: int
    lines: list[str]


def finish_sync(
    dest: Path,
    state: State,
    planned: Claims,
    plan_failures: int,
    would: DryRunTally,
    *,
    delete: bool,
    max_delete: DeleteLimit,
    dry_run: bool,
    tracked: int,
    shard: tuple[int, int] | None = None,
) -> SyncReport:
    """Report (and with ``delete`` remove) tracked files that left; the dry-run summary.

    Called only after a run that ended normally (no fatal error, no interrupt). Deletion needs
    more: a clean plan (every reference resolved, every listing ended on a page that said it was
    the last) and a count within ``max_delete`` of the ``tracked`` files at the start.
    """
    lines: list[str] = []
    stale = stale_paths(state, planned)
    if shard is not None:
        stale = [p for p in stale if (r := state.get(p)) is not None and in_shard(r.node_id, shard)]
    if stale and plan_failures:
        lines.append(
            f"not deleting or reporting {len(stale)} tracked file(s): part of the plan "
            "failed, so the remote listing is incomplete"
        )
        stale = []
    refused = delete and bool(stale) and max_delete.exceeded(len(stale), tracked)
    refusal = (
        f"error: {len(stale)} of {tracked} tracked files would be deleted, "
        f"{max_delete.describe()}: nothing deleted. Check the manifest and the remote; "
        "--max-delete N or P% (100% lifts the limit) allows more"
    )
    if dry_run:
        labels = {Kind.WOULD_DOWNLOAD: "download", Kind.WOULD_REPLACE: "replace"}
        labels[Kind.WOULD_ADOPT] = "adopt"
        parts = [f"{labels[kind]} {n} ({human_bytes(b)})" for kind, (n, b) in would.counts.items()]
        verb = "delete" if delete else "report as gone"
        lines.append(f"dry run: would {', '.join(parts)}; {verb} {len(stale)}")
        lines += [f"dry run: would {verb}: {relpath}" for relpath in stale]
        if refused:
            lines.append(refusal.replace("error: ", "dry run: would refuse: ", 1))
        return SyncReport(0, lines)
    if stale and not delete:
        lines += [f"gone from manifest or remote: {p} (kept; --delete removes it)" for p in stale]
    elif refused:
        lines.append(refusal)
        return SyncReport(1, lines)
    elif stale:
        result = delete_stale(dest, state, stale)
        lines += [f"deleted: {dest / p}" for p in result.deleted]
        lines += [
            f"kept {dest / p}: modified since fastio-dl wrote it; no longer tracked"
            for p in result.kept_modified
        ]
    return SyncReport(0, lines)


def write_failed_manifest(path: Path, lines: dict[int, str], failed: list[Target]) -> None:
    """The manifest lines whose files failed, as a manifest (written atomically)."""
    numbers = sorted({t.line for t in failed if t.line is not None})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{lines[n]}\n" for n in numbers), encoding="utf-8")
    os.replace(tmp, path)
