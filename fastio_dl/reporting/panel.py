"""The rich live panel: an overall bar and one bar per active transfer, log lines above."""

from __future__ import annotations

from typing import TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from fastio_dl.errors import redact
from fastio_dl.events import (
    Event,
    FileFinished,
    FileProgress,
    FileQueued,
    FileRetry,
    FileStarted,
    Notice,
    RunSummary,
)
from fastio_dl.reporting.plain import summary_line

MAX_VISIBLE_ROWS = 16
NAME_WIDTH = 40


def _short(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name if len(name) <= NAME_WIDTH else name[: NAME_WIDTH - 1] + "…"


class RichPanel:
    def __init__(
        self, stream: TextIO, *, debug: bool = False, secrets: frozenset[str] = frozenset()
    ) -> None:
        self.console = Console(file=stream, highlight=False)
        self.secrets = secrets
        self.debug = debug
        self.progress = Progress(
            TextColumn("{task.description}", table_column=None),
            BarColumn(bar_width=None),
            TaskProgressColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=False,
            refresh_per_second=8,
            expand=True,
        )
        self.overall = self.progress.add_task("[bold]total[/] 0/0 files", total=0)
        self.rows: dict[int, TaskID] = {}
        self.files_total = 0
        self.files_done = 0
        self.bytes_total = 0
        # The panel appears with the run's first event: a run refused before it starts (a
        # destination another sync holds) shows its one error line, not an empty panel.
        self.live = False

    def _log(self, text: str, style: str = "") -> None:
        self.progress.console.print(Text(redact(text, self.secrets), style=style))

    def _describe_overall(self) -> None:
        self.progress.update(
            self.overall,
            description=f"[bold]total[/] {self.files_done}/{self.files_total} files",
            total=self.bytes_total,
        )

    def emit(self, event: Event) -> None:
        if not self.live:
            self.live = True
            self.progress.start()
        if isinstance(event, FileProgress):
            self.progress.advance(self.overall, event.delta)
            row = self.rows.get(event.key)
            if row is not None:
                self.progress.advance(row, event.delta)
        elif isinstance(event, FileQueued):
            self.files_total += 1
            self.bytes_total += event.size
            self._describe_overall()
        elif isinstance(event, FileStarted):
            old = self.rows.pop(event.key, None)
            if old is not None:  # started again (segments fell back to one stream): one row
                done = next(t.completed for t in self.progress.tasks if t.id == old)
                self.progress.advance(self.overall, -done)
                self.progress.remove_task(old)
            visible = sum(1 for t in self.progress.tasks if t.visible) <= MAX_VISIBLE_ROWS
            self.rows[event.key] = self.progress.add_task(
                _short(event.path), total=event.size, completed=event.offset, visible=visible
            )
            self.progress.advance(self.overall, event.offset)
        elif isinstance(event, FileFinished):
            self.files_done += 1
            row = self.rows.pop(event.key, None)
            if row is not None:
                self.progress.remove_task(row)
                self._reveal_hidden()
            if event.status == "failed":
                self._log(f"failed: {event.path or event.ref}: {event.error}", "red")
                self.bytes_total -= event.bytes
            elif event.status == "skipped":
                self.bytes_total -= event.bytes
                if self.debug:
                    self._log(f"skipped: {event.path} ({event.reason})", "dim")
            self._describe_overall()
        elif isinstance(event, FileRetry):
            self._log(
                f"retry {event.attempt}: {_short(event.path)}: {event.error} "
                f"(next try in {event.wait:.1f} s)",
                "yellow",
            )
        elif isinstance(event, Notice):
            if event.level != "info" or self.debug:
                self._log(
                    f"{event.level}: {event.message}",
                    "yellow" if event.level == "warning" else "red",
                )
        elif isinstance(event, RunSummary):
            self.progress.update(
                self.overall, completed=self.bytes_total if not event.failed else None
            )
            self.progress.stop()
            style = "bold red" if event.failed else "bold green"
            self.console.print(Text(summary_line(event), style=style))

    def _reveal_hidden(self) -> None:
        for task in self.progress.tasks:
            if not task.visible and task.id != self.overall:
                self.progress.update(task.id, visible=True)
                return

    def close(self) -> None:
        if self.live:
            self.progress.stop()
