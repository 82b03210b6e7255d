"""Plain lines for logs and cron: one line per finished or failed file, periodic totals."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from fastio_dl.errors import human_bytes, redact
from fastio_dl.events import (
    Event,
    FileFinished,
    FileProgress,
    FileQueued,
    FileRetry,
    Kind,
    Notice,
    RunSummary,
)

TOTALS_EVERY = 5.0


def summary_line(event: RunSummary) -> str:
    rate = event.bytes / event.seconds if event.seconds > 0 else 0.0
    head = "interrupted: " if event.interrupted else ""
    return (
        f"{head}{event.downloaded} downloaded, {event.skipped} skipped, {event.failed} failed; "
        f"{human_bytes(event.bytes)} in {event.seconds:.1f} s ({human_bytes(rate)}/s)"
    )


def _worth_saying(event: FileFinished) -> bool:
    """Skips a user wants to see: a dry run's plan, a kept different file, an adoption."""
    return event.kind.is_dry_run or event.kind in (Kind.KEPT, Kind.ADOPTED)


class PlainReporter:
    def __init__(
        self,
        stream: TextIO,
        *,
        quiet: bool = False,
        debug: bool = False,
        secrets: frozenset[str] = frozenset(),
        summary: bool = True,
    ) -> None:
        self.stream = stream
        self.quiet = quiet
        self.debug = debug
        self.secrets = secrets
        self.summary = summary
        self._clock = time.monotonic
        self._last_totals = self._clock()
        self._queued = 0
        self._finished = 0
        self._bytes = 0

    def _line(self, text: str) -> None:
        self.stream.write(redact(text, self.secrets) + "\n")
        self.stream.flush()

    def emit(self, event: Event) -> None:
        if isinstance(event, FileProgress):
            self._bytes += event.delta
            if not self.quiet and self._clock() - self._last_totals >= TOTALS_EVERY:
                self._last_totals = self._clock()
                self._line(
                    f"progress: {self._finished}/{self._queued} files, {human_bytes(self._bytes)}"
                )
        elif isinstance(event, FileQueued):
            self._queued += 1
        elif isinstance(event, FileFinished):
            self._finished += 1
            if event.status == "failed":
                self._line(f"failed: {event.path or event.ref}: {event.error}")
            elif not self.quiet and (
                event.status != "skipped" or self.debug or _worth_saying(event)
            ):
                # Up-to-date files stay silent: a cron sync of 10,000 unchanged files prints
                # its summary, not 10,000 lines. --debug lists them.
                extra = f" ({event.reason})" if event.reason else ""
                self._line(f"{event.status}: {event.path}{extra}")
        elif isinstance(event, FileRetry):
            if not self.quiet:
                self._line(
                    f"retry {event.attempt}: {event.path}: {event.error} "
                    f"(next try in {event.wait:.1f} s)"
                )
        elif isinstance(event, Notice):
            if event.level == "error" or (
                (not self.quiet) and (event.level == "warning" or self.debug)
            ):
                self._line(f"{event.level}: {event.message}")
        elif isinstance(event, RunSummary) and self.summary:
            self._line(summary_line(event))

    def close(self) -> None:
        pass


class LogFileReporter:
    """``--log-file``: timestamped lines (UTC) for every file, retry, notice and summary."""

    def __init__(self, path: Path, *, secrets: frozenset[str] = frozenset()) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = path.open("a", encoding="utf-8")
        self.secrets = secrets

    def _line(self, level: str, text: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self.handle.write(f"{stamp} {level} {redact(text, self.secrets)}\n")

    def emit(self, event: Event) -> None:
        if isinstance(event, FileFinished):
            extra = f" ({event.reason})" if event.reason else ""
            if event.status == "failed":
                self._line("ERROR", f"failed: {event.path or event.ref}: {event.error}")
            else:
                self._line("INFO", f"{event.status}: {event.path} [{event.node_id}]{extra}")
        elif isinstance(event, FileRetry):
            self._line(
                "WARN",
                f"retry {event.attempt}: {event.path}: {event.error} (wait {event.wait:.1f} s)",
            )
        elif isinstance(event, Notice):
            self._line(event.level.upper(), event.message)
        elif isinstance(event, RunSummary):
            self._line("INFO", summary_line(event))
            self.handle.flush()

    def close(self) -> None:
        self.handle.close()
