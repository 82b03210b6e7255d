"""Renderers fed events directly (no network needed)."""

from __future__ import annotations

import io

from fastio_dl.events import FileFinished, FileProgress, FileQueued, FileStarted, RunSummary
from fastio_dl.reporting.panel import RichPanel


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
    panel.emit(FileFinished(1, "ref", "n", "out/big.bin", "downloaded", 100, 100))
    assert [t for t in panel.progress.tasks if t.id != panel.overall] == []
    panel.emit(RunSummary(1, 0, 0, 100, 0.1))
