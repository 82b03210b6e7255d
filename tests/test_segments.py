"""Large files as parallel ranged requests into one preallocated .part."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fastio_dl.emulator import Fault, SeededBlob
from fastio_dl.transfer import contiguous_done, split_segments
from tests.conftest import Served

SIZE = 6_000_001
SEG = ["--segments", "4", "--segment-threshold", "1M"]


def add_big(served: Served, size: int = SIZE):
    return served.server.call(
        lambda: served.space.add_file("root", "big.bin", SeededBlob(77, size))
    )


def read_ranges(served: Served) -> list[str | None]:
    return [r["headers"].get("Range") for r in served.emulator.requests if r["endpoint"] == "read"]


def test_split_and_prefix() -> None:
    segments = split_segments(10, 3, None)
    assert segments == [[0, 3, 0], [4, 7, 0], [8, 9, 0]]
    assert split_segments(10, 3, [[0, 9, 5]]) == [[0, 3, 4], [4, 7, 1], [8, 9, 0]]
    assert contiguous_done([[0, 3, 4], [4, 7, 1], [8, 9, 0]]) == 5
    assert contiguous_done([[0, 3, 4], [4, 7, 4], [8, 9, 2]]) == 10


def test_large_file_uses_ranged_segments(served: Served, tmp_path: Path) -> None:
    node = add_big(served)
    result = served.cli("get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), *SEG)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "big.bin").read_bytes() == node.blob.read(0, SIZE)
    assert sorted(read_ranges(served)) == sorted(
        [
            "bytes=0-1500000",
            "bytes=1500001-3000001",
            "bytes=3000002-4500002",
            "bytes=4500003-6000000",
        ]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]


def test_a_broken_segment_resumes_on_its_own(served: Served, tmp_path: Path) -> None:
    node = add_big(served)
    served.server.call(
        lambda: served.emulator.set_faults([Fault("drop", after_bytes=300_000, times=2)])
    )
    result = served.cli("get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), *SEG)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "big.bin").read_bytes() == node.blob.read(0, SIZE)
    assert len(read_ranges(served)) == 6
    assert served.stat("read_bytes") < SIZE + 700_000


@pytest.mark.parametrize("fault", ["ignore_range", "shift_range"])
def test_range_trouble_falls_back_or_retries(served: Served, tmp_path: Path, fault: str) -> None:
    node = add_big(served)
    served.server.call(
        lambda: served.emulator.set_faults(
            [Fault(fault, times=None if fault == "ignore_range" else 1)]
        )
    )
    result = served.cli("get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), *SEG)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "big.bin").read_bytes() == node.blob.read(0, SIZE)


def test_wrong_bytes_in_a_segment_never_make_a_final_file(served: Served, tmp_path: Path) -> None:
    node = add_big(served)
    served.server.call(lambda: served.emulator.set_faults([Fault("wrong_bytes", after_bytes=1000)]))
    result = served.cli(
        "get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), *SEG, "--retries", "1", "--json"
    )
    assert result.exit_code == 1
    assert "mismatch" in result.files()[0]["error"]
    assert not (tmp_path / "big.bin").exists()


def test_killed_segmented_download_resumes_each_segment(served: Served, tmp_path: Path) -> None:
    node = add_big(served, 8_000_000)
    served.emulator.switches.bandwidth = 1_000_000
    proc = subprocess.Popen(
        served.argv(
            "get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), "--progress", "none", *SEG
        ),
    )
    sidecar = tmp_path / "big.bin.part.json"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if sidecar.exists():
            try:
                done = sum(seg[2] for seg in json.loads(sidecar.read_text())["segments"])
            except (ValueError, KeyError):
                done = 0
            if done >= 4 * 1_048_576:  # each segment has recorded its first MiB
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = json.loads(sidecar.read_text())["segments"]
    assert all(seg[2] > 0 for seg in saved)
    served.emulator.switches.bandwidth = 0
    served.server.call(served.emulator.reset_counters)
    result = served.cli("get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), *SEG)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "big.bin").read_bytes() == node.blob.read(0, 8_000_000)
    starts = sorted(int(r.split("=")[1].split("-")[0]) for r in read_ranges(served))
    assert starts == sorted(seg[0] + seg[2] for seg in saved if seg[0] + seg[2] <= seg[1])
    assert served.stat("read_bytes") == 8_000_000 - sum(seg[2] for seg in saved)
