"""The benchmark script's report: what it prints is what the README quotes."""

from __future__ import annotations

from tests.benchmarks.__main__ import row, table
from tests.benchmarks.harness import Run


def runs(tool: str, *walls: float) -> list[Run]:
    return [Run(tool, 0, w, w / 2, 40.0) for w in walls]


def test_rows_carry_medians_ratios_and_every_run() -> None:
    rows = row(
        "B9", {"fastio-dl": runs("fastio-dl", 3.0, 2.0, 2.5), "peer": runs("peer", 2.5, 5.0, 2.6)}
    )
    ours, peer = rows
    assert ours["wall_s"] == 2.5 and peer["wall_s"] == 2.6
    assert peer["ratio"] == round(2.5 / 2.6, 3)
    assert ours["walls"] == [3.0, 2.0, 2.5]


def test_table_prints_a_ratio_of_one_and_the_spread_of_runs() -> None:
    rows = row("B9", {"fastio-dl": runs("fastio-dl", 2.0, 2.2), "peer": runs("peer", 2.1, 2.1)})
    text = table(rows)
    peer_line = next(line for line in text.splitlines() if "| peer |" in line)
    assert "| 1.00 |" in peer_line
    assert "runs 2.10-2.10 s" in peer_line
    ours_line = next(line for line in text.splitlines() if "| fastio-dl |" in line)
    assert "runs 2.00-2.20 s" in ours_line
    assert "walls=" not in text


def test_the_first_read_is_timed_when_every_run_has_it() -> None:
    ours = runs("fastio-dl", 2.0, 2.2, 2.1)
    for run, first in zip(ours, (0.14, 0.12, 0.13), strict=True):
        run.first_read = first
    peer = runs("peer", 2.1, 2.1)
    peer[0].first_read = 0.01  # the other run has none: no median of a part
    rows = row("B9", {"fastio-dl": ours, "peer": peer})
    assert rows[0]["first_read_ms"] == 130.0 and "first_read_ms" not in rows[1]
    ours_line = next(line for line in table(rows).splitlines() if "| fastio-dl |" in line)
    assert "first read at 130 ms" in ours_line and "first_read_ms=" not in ours_line
