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
    PlanComplete,
    RunSummary,
)
from fastio_dl.reporting.plain import summary_line

MAX_VISIBLE_ROWS = 16
NAME_WIDTH = 40


def _short(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name if len(name) <= NAME_WIDTH else name[: NAME_WIDTH - 1] + "…"


class RichPanel:
    """One total line (files done of queued, ``+`` while listings still arrive, what is moving
    and what is queued, rate and ETA) and a row per transfer that is moving bytes.

    The byte totals count what this run moves: a resumed file adds only its missing bytes, so
    the rate and the ETA are not flattered by what was already on disk.
    """

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
        self.overall = self.progress.add_task("[bold]total[/] 0+ files", total=0)
        self.rows: dict[int, TaskID] = {}  # every started transfer; shown once bytes move
        self.started_at: dict[int, int] = {}  # a transfer's offset when it started (resume)
        self.moving: set[int] = set()  # transfers that have moved bytes in this run
        self.shown: set[int] = set()  # those with a visible row (at most MAX_VISIBLE_ROWS)
        self.files_total = 0
        self.files_done = 0
        self.bytes_total = 0  # bytes this run has to move
        self.plan_complete = False
        # The panel appears with the run's first event: a run refused before it starts (a
        # destination another sync holds) shows its one error line, not an empty panel.
        self.live = False

    def _log(self, text: str, style: str = "") -> None:
        self.progress.console.print(Text(redact(text, self.secrets), style=style))

    def _describe_overall(self) -> None:
        more = "" if self.plan_complete else "+"
        moving = len(self.moving)
        queued = max(0, self.files_total - self.files_done - moving)
        shown = len(self.shown)
        parts = [f"[bold]total[/] {self.files_done}/{self.files_total}{more} files"]
        if moving:
            parts.append(
                f"{moving} moving" + (f" ({moving - shown} not shown)" if shown < moving else "")
            )
        if queued:
            parts.append(f"{queued} queued")
        self.progress.update(self.overall, description=", ".join(parts), total=self.bytes_total)

    def _show(self, key: int) -> None:
        """A transfer that moves bytes gets its row (while there is room for one)."""
        self.moving.add(key)
        row = self.rows.get(key)
        if row is not None and key not in self.shown and len(self.shown) < MAX_VISIBLE_ROWS:
            self.progress.update(row, visible=True)
            self.shown.add(key)
        self._describe_overall()

    def _completed(self, row: TaskID) -> float:
        return next(t.completed for t in self.progress.tasks if t.id == row)

    def _hide(self, key: int) -> None:
        self.moving.discard(key)
        self.shown.discard(key)

    def emit(self, event: Event) -> None:
        if not self.live:
            self.live = True
            self.progress.start()
        if isinstance(event, FileProgress):
            self.progress.advance(self.overall, event.delta)
            row = self.rows.get(event.key)
            if row is not None:
                self.progress.advance(row, event.delta)
                if event.delta > 0 and event.key not in self.moving:
                    self._show(event.key)
        elif isinstance(event, FileQueued):
            self.files_total += 1
            self.bytes_total += event.size
            self._describe_overall()
        elif isinstance(event, PlanComplete):
            self.plan_complete = True
            self._describe_overall()
        elif isinstance(event, FileStarted):
            self._started(event)
        elif isinstance(event, FileFinished):
            self._finished(event)
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
            self.plan_complete = True
            self._describe_overall()
            self.progress.update(
                self.overall, completed=self.bytes_total if not event.failed else None
            )
            self.progress.stop()
            style = "bold red" if event.failed else "bold green"
            self.console.print(Text(summary_line(event), style=style))

    def _started(self, event: FileStarted) -> None:
        old = self.rows.pop(event.key, None)
        if old is not None:  # started again (segments fell back to one stream): one row
            first = self.started_at.get(event.key, 0)
            # What it moved so far is taken back; what it keeps on disk is no longer to move.
            self.progress.advance(self.overall, -(self._completed(old) - first))
            self.bytes_total -= max(0, event.offset - first)
            self.progress.remove_task(old)
            self._hide(event.key)
        else:
            # Bytes already on disk (a resumed .part) are not this run's to move.
            self.bytes_total -= event.offset
        self.started_at[event.key] = event.offset
        # Hidden until its first bytes arrive; the row's completed includes the resumed part
        # (its bar shows where the file stands), set without a speed sample.
        self.rows[event.key] = self.progress.add_task(
            _short(event.path), total=event.size, completed=event.offset, visible=False
        )
        self._describe_overall()

    def _finished(self, event: FileFinished) -> None:
        self.files_done += 1
        row = self.rows.pop(event.key, None)
        self.started_at.pop(event.key, None)
        reached = self._completed(row) if row is not None else 0.0
        self._hide(event.key)
        if row is not None:
            self.progress.remove_task(row)
            self._reveal_hidden()
        if event.status == "failed":
            self._log(f"failed: {event.path or event.ref}: {event.error}", "red")
            # What it moved stays counted (the rate was real); the rest will not move.
            self.bytes_total -= max(0, int(event.bytes - reached))
        elif event.status == "skipped":
            self.bytes_total -= event.bytes
            if self.debug:
                self._log(f"skipped: {event.path} ({event.reason})", "dim")
        self._describe_overall()

    def _reveal_hidden(self) -> None:
        for key in sorted(self.moving - self.shown):
            if len(self.shown) >= MAX_VISIBLE_ROWS:
                return
            self.progress.update(self.rows[key], visible=True)
            self.shown.add(key)

    def close(self) -> None:
        if self.live:
            self.progress.stop()
