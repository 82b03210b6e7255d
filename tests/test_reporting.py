"""Renderers fed events directly (no network needed)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from fastio_dl.events import (
    FileFinished,
    FileProgress,
    FileQueued,
    FileStarted,
    Kind,
    PlanComplete,
    RunSummary,
)
from fastio_dl.reporting.panel import MAX_VISIBLE_ROWS, RichPanel
from fastio_dl.reporting.plain import PlainReporter
from fastio_dl.state import Claims, State
from fastio_dl.syncing import DeleteLimit, DryRunTally, finish_sync


def test_panel_restart_of_a_file_keeps_one_row_and_true_totals() -> None:
    panel = RichPanel(io.StringIO())
    panel.emit(FileQueued(1, "out/big.bin", 100))
    panel.emit(FileStarted(1, "out/big.bin", 100, 0))
    panel.emit(FileProgress(1, 30))
    panel.emit(FileStarted(1, "out/big.bin", 100, 0))  # e.g. segments fell back to one stream
    rows = [t for t in panel.progress.tasks if t.id != panel.overall]
    assert len(rows) == 1 and rows[0].completed == 0
    overall = next(t for t in panel.progress.tasks if t.id == panel.overall)
    assert overall.completed == 0
    panel.emit(FileProgress(1, 100))
    panel.emit(FileFinished(1, "ref", "n", "out/big.bin", Kind.NEW, 100, 100))
    assert [t for t in panel.progress.tasks if t.id != panel.overall] == []
    panel.emit(RunSummary(1, 0, 0, 100, 0.1))


def finished(kind: Kind, reason: str | None, size: int = 10) -> FileFinished:
    return FileFinished(1, "ref", "n", f"out/{kind.value}", kind, size, 0, reason=reason)


def test_plain_lines_pick_skips_by_kind_not_by_message_text() -> None:
    out = io.StringIO()
    plain = PlainReporter(out, summary=False)
    # Reworded messages: what is said depends on the kind alone.
    plain.emit(finished(Kind.KEPT, "left alone"))
    plain.emit(finished(Kind.UP_TO_DATE, "dry run: would adopt, kept: --no-clobber"))
    plain.emit(finished(Kind.WOULD_DOWNLOAD, "plan"))
    lines = out.getvalue().splitlines()
    assert lines == ["skipped: out/kept (left alone)", "skipped: out/would-download (plan)"]


def test_sync_dry_run_summary_counts_by_kind(tmp_path: Path) -> None:
    state = State(tmp_path / "state.db")
    try:
        events = [
            finished(Kind.WOULD_DOWNLOAD, "anything", 100),
            finished(Kind.WOULD_DOWNLOAD, None, 24),
            finished(Kind.WOULD_REPLACE, "would adopt"),  # the text must not count
            finished(Kind.UP_TO_DATE, "dry run: would download"),
        ]
        tally = DryRunTally()  # the reporter that counts as the events pass
        for event in events:
            tally.emit(event)
        report = finish_sync(
            tmp_path,
            state,
            Claims(),
            0,
            tally,
            delete=False,
            max_delete=DeleteLimit(),
            dry_run=True,
            tracked=0,
        )
    finally:
        state.close()
    assert report.lines[0] == (
        "dry run: would download 2 (124 B), replace 1 (10 B), adopt 0 (0 B); report as gone 0"
    )


def _overall(panel: RichPanel) -> Any:
    return next(t for t in panel.progress.tasks if t.id == panel.overall)


def _visible_rows(panel: RichPanel) -> list[str]:
    return [t.description for t in panel.progress.tasks if t.id != panel.overall and t.visible]


def test_panel_rows_only_for_moving_transfers_the_rest_summarised() -> None:
    panel = RichPanel(io.StringIO())
    for key in range(1, 21):
        panel.emit(FileQueued(key, f"out/f{key}.bin", 1000))
    for key in (1, 2, 3):
        panel.emit(FileStarted(key, f"out/f{key}.bin", 1000, 0))
    assert _visible_rows(panel) == []  # started, no byte yet: no row
    panel.emit(FileProgress(1, 10))
    panel.emit(FileProgress(2, 10))
    assert _visible_rows(panel) == ["f1.bin", "f2.bin"]
    assert _overall(panel).description == "[bold]total[/] 0/20+ files, 2 moving, 18 queued"
    panel.emit(FileProgress(1, 990))
    panel.emit(FileFinished(1, "ref", "n", "out/f1.bin", Kind.NEW, 1000, 1000))
    assert _visible_rows(panel) == ["f2.bin"]
    panel.emit(PlanComplete())
    assert _overall(panel).description == "[bold]total[/] 1/20 files, 1 moving, 18 queued"


def test_panel_shows_at_most_its_rows_and_counts_the_rest() -> None:
    panel = RichPanel(io.StringIO())
    count = MAX_VISIBLE_ROWS + 3
    for key in range(1, count + 1):
        panel.emit(FileQueued(key, f"out/f{key}.bin", 100))
        panel.emit(FileStarted(key, f"out/f{key}.bin", 100, 0))
        panel.emit(FileProgress(key, 1))
    assert len(_visible_rows(panel)) == MAX_VISIBLE_ROWS
    assert f"{count} moving (3 not shown)" in _overall(panel).description
    panel.emit(FileProgress(1, 99))
    panel.emit(FileFinished(1, "ref", "n", "out/f1.bin", Kind.NEW, 100, 100))
    assert len(_visible_rows(panel)) == MAX_VISIBLE_ROWS  # a hidden one took the free row


def test_panel_a_resumed_file_counts_only_this_runs_bytes() -> None:
    panel = RichPanel(io.StringIO())
    panel.emit(FileQueued(1, "out/big.bin", 1000))
    panel.emit(FileStarted(1, "out/big.bin", 1000, 900))  # 900 bytes were already on disk
    overall = _overall(panel)
    assert (overall.total, overall.completed) == (100, 0)
    panel.emit(FileProgress(1, 100))
    overall = _overall(panel)
    assert (overall.total, overall.completed) == (100, 100)
    # the speed is computed from the 100 bytes moved, never from the 900 found on disk
    assert sum(sample.completed for sample in overall._progress) == 100
    row = next(t for t in panel.progress.tasks if t.id != panel.overall)
    assert (row.completed, row.total) == (1000, 1000)
    assert sum(sample.completed for sample in row._progress) == 100
