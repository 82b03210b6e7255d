"""What the engine tells observers. The engine emits; reporters (``fastio_dl.reporting``) render.

Events are plain frozen dataclasses so that any reporter (rich, plain, JSON lines, a test
recorder) can consume them without importing the engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

FileStatus = Literal["downloaded", "skipped", "failed"]


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
    status: FileStatus
    bytes: int  # bytes of the final file (downloaded or already present)
    transferred: int  # bytes moved over the network in this run
    error: str | None = None
    reason: str | None = None  # why skipped, or how it was replaced


@dataclass(frozen=True, slots=True)
class Notice:
    level: Literal["info", "warning", "error"]
    message: str


@dataclass(frozen=True, slots=True)
class RunSummary:
    downloaded: int
    skipped: int
    failed: int
    bytes: int
    seconds: float
    interrupted: bool = False


Event = FileQueued | FileStarted | FileProgress | FileRetry | FileFinished | Notice | RunSummary


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
