"""The benchmark script's report: what it prints is what the README quotes."""

from __future__ import annotations

from typing import Any

from tests.benchmarks.__main__ import row, table, targets, verdicts
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


def bench_rows() -> list[dict[str, Any]]:
    """One run of every bench, as the script's rows have them."""
    return [
        *row(
            "B1 2000 x 64 KiB",
            {
                "fastio-dl": runs("fastio-dl", 2.9),
                "curl": runs("curl", 3.0),
                "aria2c": runs("aria2c", 4.4),
            },
        ),
        *row("B2 one 1G file", {"fastio-dl": runs("fastio-dl", 0.9), "curl": runs("curl", 0.8)}),
        {
            "bench": "B2 one 1G file",
            "tool": "sha256sum (curl has no hash)",
            "wall_s": 2.1,
            "cpu_s": 2.1,
            "peak_mb": 40.0,
            "cpu_per_gib": 2.1,
            "ratio": None,
        },
        *row(
            "B3 one 1G file, 16M/s per connection, 8 connections",
            {
                "fastio-dl": runs("fastio-dl", 8.2),
                "aria2c": runs("aria2c", 8.4),
            },
        ),
        *row(
            "B3 one 256M file, 16M/s per connection, 8 connections",
            {
                "fastio-dl": runs("fastio-dl", 2.16),
                "aria2c": runs("aria2c", 2.11),
            },
        ),
        *row(
            "B3 one 1G file, 16M/s per connection, 8 connections, 50 ms per request",
            {
                "fastio-dl": runs("fastio-dl", 8.6),
                "aria2c": runs("aria2c", 8.5),
            },
        ),
        {
            "bench": "B4 no-op sync",
            "tool": "fastio-dl",
            "wall_s": 0.5,
            "cpu_s": 0.5,
            "peak_mb": 60.0,
            "api_calls": 21,
            "tokens_minted": 0,
            "ratio": None,
        },
        {
            "bench": "B5 manifest",
            "tool": "fastio-dl",
            "wall_s": 4.0,
            "cpu_s": 4.0,
            "peak_mb": 235.0,
            "api_calls": 4000,
            "exit": 0,
            "ratio": None,
        },
    ]


def verdict(judged: list[dict[str, Any]], bench: str) -> Any:
    return next(t["met"] for t in judged if t["bench"] == bench)


def test_every_target_is_judged_from_the_rows() -> None:
    judged = targets(bench_rows(), "1G")
    assert [t["bench"].split()[0] for t in judged] == ["B1", "B2", "B3", "B3", "B3", "B4", "B5"]
    assert verdict(judged, "B1 2000 x 64 KiB") is True
    assert "against curl's 3.00 s" in judged[0]["measured"]  # the faster peer, not aria2c
    assert verdict(judged, "B2 one 1G file") is True  # 1.12x curl, 40 MB
    assert "1.12x curl, 40 MB" in judged[1]["measured"]
    assert "sha256sum 2.1)" in judged[1]["measured"]
    assert verdict(judged, "B3 one 1G file, 16M/s per connection, 8 connections") is True
    assert verdict(judged, "B4 no-op sync") is True and verdict(judged, "B5 manifest") is True
    text = verdicts(judged)
    assert text.endswith("every target measured was met")


def test_b3_is_judged_on_b2s_file_and_the_other_rows_are_shown() -> None:
    judged = targets(bench_rows(), "1G")
    others = [t for t in judged if t["bench"].startswith("B3") and t["met"] is None]
    assert [t["measured"] for t in others] == ["1.02", "1.01"]
    as_256 = targets(bench_rows(), "256M")  # were B2's file 256 MiB, that row would decide
    assert verdict(as_256, "B3 one 256M file, 16M/s per connection, 8 connections") is False
    assert "| MISSED |" in verdicts(as_256) and verdicts(as_256).endswith("1 target(s) missed")


def test_a_missed_target_is_reported_for_each_limit() -> None:
    rows = bench_rows()
    rows[0]["wall_s"] = 3.1  # fastio-dl's B1 over curl's 3.0 s
    rows[3]["peak_mb"] = 120.0  # fastio-dl's B2 over 100 MB
    rows[-2]["tokens_minted"] = 1  # B4 minted a read token
    rows[-1]["peak_mb"] = 450.0  # B5 over 400 MB
    judged = targets(rows, "1G")
    missed = [t["bench"] for t in judged if t["met"] is False]
    assert missed == ["B1 2000 x 64 KiB", "B2 one 1G file", "B4 no-op sync", "B5 manifest"]


def test_a_b3_run_without_the_target_size_is_not_called_met_or_missed() -> None:
    rows = [r for r in bench_rows() if r["bench"].startswith("B3 one 256M")]
    judged = targets(rows, "1G")
    assert judged[0] == {
        "bench": "B3 one 1G file",
        "target": "at most aria2c's time",
        "met": None,
        "measured": "not run at 1G",
    }
    assert [t["met"] for t in judged[1:]] == [None]
