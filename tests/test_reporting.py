"""Renderers fed events directly (no network needed)."""

from __future__ import annotations

import io
from pathlib import Path

from fastio_dl.events import FileFinished, FileProgress, FileQueued, FileStarted, Kind, RunSummary
from fastio_dl.reporting.panel import RichPanel
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
