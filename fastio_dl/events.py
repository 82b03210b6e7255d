"""What the engine tells observers. The engine emits; reporters (``fastio_dl.reporting``) render.

Events are plain frozen dataclasses so that any reporter (rich, plain, JSON lines, a test
recorder) can consume them without importing the engine.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal, Protocol

FileStatus = Literal["downloaded", "skipped", "failed"]


class Kind(enum.Enum):
    """How a file ended: reporters and summaries branch on this, never on message text."""

    # downloaded
    NEW = "new"
    REPLACED = "replaced"  # a different local file was replaced
    # skipped
    PRESENT = "present"  # the same size and hash are already there (get)
    KEPT = "kept"  # a different local file is kept (--no-clobber)
    UP_TO_DATE = "up-to-date"  # the sync state and a stat say so
    ADOPTED = "adopted"  # an identical untracked local file is now tracked (sync)
    NO_BYTES = "no-bytes"  # a note or a link
    UNSUPPORTED = "unsupported"  # a node type that has no file to download
    WOULD_DOWNLOAD = "would-download"  # --dry-run
    WOULD_REPLACE = "would-replace"
    WOULD_ADOPT = "would-adopt"
    # failed
    PLAN = "plan"  # not resolved (reference, folder listing, details) or a local path clash
    NOT_STARTED = "not-started"  # the run was stopping (an interruption, a write error)
    INTERRUPTED = "interrupted"  # stopped mid-transfer; a large file's partial is kept
    ERROR = "error"  # the API, the transfer, verification or disk space
    WRITE = "write"  # the local disk refused a write: no new file starts after it
    LOCAL = "local"  # another local error (permissions, a path that is not a directory)
    INTERNAL = "internal"  # a bug in fastio-dl: this file fails, the run goes on

    @property
    def status(self) -> FileStatus:
        # By value: an Enum member hashes in Python, a str's hash is cached (asked per file).
        return _STATUS[self._value_]

    @property
    def is_dry_run(self) -> bool:
        return self in (Kind.WOULD_DOWNLOAD, Kind.WOULD_REPLACE, Kind.WOULD_ADOPT)


_DOWNLOADED = frozenset({Kind.NEW, Kind.REPLACED})
_FAILED = frozenset(
    {
        Kind.PLAN,
        Kind.NOT_STARTED,
        Kind.INTERRUPTED,
        Kind.ERROR,
        Kind.WRITE,
        Kind.LOCAL,
        Kind.INTERNAL,
    }
)
_STATUS: dict[str, FileStatus] = {
    kind.value: "downloaded" if kind in _DOWNLOADED else "failed" if kind in _FAILED else "skipped"
    for kind in Kind
}


@dataclass(frozen=True, slots=True)
class FileQueued:
    key: int
    path: str
    size: int


@dataclass(frozen=True, slots=True)
class FileStarted:
    key: int
    path: str
    size: int
    offset: int  # bytes already on disk (resume)


@dataclass(frozen=True, slots=True)
class FileProgress:
    key: int
    delta: int  # may be negative when a transfer restarts from zero


@dataclass(frozen=True, slots=True)
class FileRetry:
    key: int
    path: str
    attempt: int
    error: str
    wait: float


@dataclass(frozen=True, slots=True)
class FileFinished:
    key: int
    ref: str
    node_id: str
    path: str
    kind: Kind
    bytes: int  # bytes of the final file (downloaded or already present)
    transferred: int  # bytes moved over the network in this run
    error: str | None = None
    reason: str | None = None  # why skipped, or how it was replaced (for people to read)

    @property
    def status(self) -> FileStatus:
        return self.kind.status


@dataclass(frozen=True, slots=True)
class Notice:
    level: Literal["info", "warning", "error"]
    message: str


@dataclass(frozen=True, slots=True)
class PlanComplete:
    """Every reference is resolved and every file of the run has been queued: totals are final."""


@dataclass(frozen=True, slots=True)
class RunSummary:
    downloaded: int
    skipped: int
    failed: int
    bytes: int
    seconds: float
    interrupted: bool = False


Event = (
    FileQueued
    | FileStarted
    | FileProgress
    | FileRetry
    | FileFinished
    | Notice
    | PlanComplete
    | RunSummary
)


class Reporter(Protocol):
    def emit(self, event: Event) -> None: ...

    def close(self) -> None: ...


class Fanout:
    """Send every event to several reporters (progress on stderr, results on stdout)."""

    def __init__(self, *reporters: Reporter) -> None:
        self.reporters = reporters

    def emit(self, event: Event) -> None:
        for reporter in self.reporters:
            reporter.emit(event)

    def close(self) -> None:
        for reporter in self.reporters:
            reporter.close()


class Recorder:
    """Keeps the per-file results (for the sync dry-run summary and for tests)."""

    def __init__(self) -> None:
        self.events: list[FileFinished] = []

    def emit(self, event: Event) -> None:
        if isinstance(event, FileFinished):
            self.events.append(event)

    def close(self) -> None:
        pass

    def finished(self) -> list[FileFinished]:
        return self.events
