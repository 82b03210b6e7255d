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
