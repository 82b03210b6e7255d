"""JSON lines: per-file results on stdout (``--json``) and progress events (``--progress json``)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from typing import Any, TextIO

from fastio_dl.errors import redact
from fastio_dl.events import (
    Event,
    FileFinished,
    FileProgress,
    FileQueued,
    FileRetry,
    FileStarted,
    Notice,
    PlanComplete,
    RunSummary,
)

PROGRESS_EVERY = 1.0


def _write(stream: TextIO, record: dict[str, Any], secrets: frozenset[str]) -> None:
    stream.write(redact(json.dumps(record, ensure_ascii=False), secrets) + "\n")
    stream.flush()


def file_record(event: FileFinished) -> dict[str, Any]:
    return {
        "event": "file",
        "ref": event.ref,
        "node_id": event.node_id,
        "path": event.path,
        "status": event.status,
        "bytes": event.bytes,
        "error": event.error,
    }


def summary_record(event: RunSummary) -> dict[str, Any]:
    return {
        "event": "summary",
        "downloaded": event.downloaded,
        "skipped": event.skipped,
        "failed": event.failed,
        "bytes": event.bytes,
        "seconds": event.seconds,
    }


class JsonResults:
    """One object per file on stdout, then a summary object: the contract for scripts."""

    def __init__(self, stream: TextIO, *, secrets: frozenset[str] = frozenset()) -> None:
        self.stream = stream
        self.secrets = secrets

    def emit(self, event: Event) -> None:
        if isinstance(event, FileFinished):
            _write(self.stream, file_record(event), self.secrets)
        elif isinstance(event, RunSummary):
            _write(self.stream, summary_record(event), self.secrets)

    def close(self) -> None:
        pass


class JsonProgress:
    """Every event as a JSON line (progress throttled to a totals line per second)."""

    def __init__(self, stream: TextIO, *, secrets: frozenset[str] = frozenset()) -> None:
        self.stream = stream
        self.secrets = secrets
        self._bytes = 0
        self._last = time.monotonic()

    def emit(self, event: Event) -> None:
        if isinstance(event, FileProgress):
            self._bytes += event.delta
            now = time.monotonic()
            if now - self._last >= PROGRESS_EVERY:
                self._last = now
                _write(self.stream, {"event": "progress", "bytes": self._bytes}, self.secrets)
            return
        name = {
            FileQueued: "queued",
            FileStarted: "started",
            FileRetry: "retry",
            FileFinished: "file",
            Notice: "notice",
            PlanComplete: "plan_complete",
            RunSummary: "summary",
        }[type(event)]
        record = (
            file_record(event)
            if isinstance(event, FileFinished)
            else {"event": name, **asdict(event)}
        )
        _write(self.stream, record, self.secrets)

    def close(self) -> None:
        pass
