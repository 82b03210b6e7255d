"""Large files as parallel ranged requests into one preallocated .part."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fastio_dl import segments
from fastio_dl.emulator import Fault, SeededBlob
from fastio_dl.emulator.reads import BODY_CHUNK
from fastio_dl.segments import plan_spans
from tests.conftest import Served

SIZE = 6_000_001
SEG = ["--segments", "4", "--segment-threshold", "1M"]


def add_big(served: Served, size: int = SIZE):
    return served.server.call(
        lambda: served.space.add_file("root", "big.bin", SeededBlob(77, size))
    )


def read_ranges(served: Served) -> list[str | None]:
    return [r["headers"].get("Range") for r in served.emulator.requests if r["endpoint"] == "read"]


MIB = 1024 * 1024


def test_a_fresh_plan_ramps_and_a_saved_one_resumes() -> None:
    # 1 GiB for 8 lanes: first spans 107..125 MiB, second spans 21..3 MiB (steps of 128/48
    # MiB on whole blocks); a lane's two add up to its 128 MiB.
    lengths = [end - start + 1 for start, end, _ in plan_spans(1024 * MIB, 8, None)]
    step = 128 * MIB // 48 // 4096 * 4096
    assert lengths == [128 * MIB - (8 - i) * step for i in range(8)] + [
        (8 - i) * step for i in range(8)
    ]
    # Too small for steps of 256 KiB: one equal span per lane, on whole blocks.
    assert plan_spans(10, 3, None) == [[0, 2, 0], [3, 5, 0], [6, 9, 0]]
    assert [s[0] % 4096 for s in plan_spans(6_000_001, 4, None)] == [0, 0, 0, 0]
    # A one-stream .part 30 MiB long: its bytes stay a prefix, the rest is cut for 4 lanes.
    resumed = plan_spans(100 * MIB, 4, [[0, 100 * MIB - 1, 30 * MIB]])
    assert resumed[0] == [0, 30 * MIB + 70 * MIB // 4 // 4096 * 4096 - 1, 30 * MIB]
    assert len(resumed) == 4 and all(done == 0 for _, _, done in resumed[1:])
    # An earlier run's spans (here, an older version's pieces): done bytes that run on into
    # the next span join it, untouched spans join the one before, and lanes go where most is
    # left (never to parts under STEAL_MIN).
    saved = [
        [0, 10 * MIB - 1, 10 * MIB],
        [10 * MIB, 20 * MIB - 1, 3 * MIB],
        [20 * MIB, 30 * MIB - 1, 0],
        [30 * MIB, 100 * MIB - 1, 5],
    ]
    replanned = plan_spans(100 * MIB, 4, saved)
    assert replanned[0] == [0, 30 * MIB - 1, 13 * MIB]
    assert replanned[1][0] == 30 * MIB and replanned[1][2] == 5
    assert len(replanned) == 4 and replanned[-1][1] == 100 * MIB - 1
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(replanned))
    assert plan_spans(8 * MIB, 4, [[0, 8 * MIB - 1, 7 * MIB]]) == [[0, 8 * MIB - 1, 7 * MIB]]
    # Saved spans that do not cover the file are not trusted: a fresh plan.
    assert plan_spans(10, 3, [[0, 4, 2], [6, 9, 0]]) == plan_spans(10, 3, None)


def lanes_at_equal_speed(spans: list[list[int]], count: int) -> list[tuple[float, int]]:
    """(when it ends, which lane) for each span if ``count`` equal lanes take them in order."""
    free = [(0.0, lane) for lane in range(count)]
    ends = []
    for start, end, _ in spans:
        at, lane = heapq.heappop(free)
        heapq.heappush(free, (at + end - start + 1, lane))
        ends.append((at + end - start + 1, lane))
    return ends


@pytest.mark.parametrize(
    ("size", "count"),
    [
        (256 << 20, 8),
        (1 << 30, 8),
        ((3 << 30) + 7, 8),
        (128 << 20, 8),
        (600 << 20, 16),
        (64 << 20, 4),
    ],
)
def test_equal_lanes_make_two_requests_and_the_hash_keeps_up(size: int, count: int) -> None:
    spans = plan_spans(size, count, None)
    assert spans[0][0] == 0 and spans[-1][1] == size - 1
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(spans))
    assert all(start % 4096 == 0 for start, _, _ in spans)  # whole blocks: O_DIRECT
    ends = lanes_at_equal_speed(spans, count)
    # Two spans per lane, and every lane busy to the end: all finish together.
    assert len(spans) == 2 * count
    assert sorted(lane for _, lane in ends) == sorted(list(range(count)) * 2)
    last = [max(at for at, lane in ends if lane == c) for c in range(count)]
    assert max(last) - min(last) <= count * 4096
    # First spans end in file order, a step apart: the hash reads back one at a time.
    firsts = [at for at, _ in ends[:count]]
    step = (spans[1][1] - spans[1][0]) - (spans[0][1] - spans[0][0])
    assert all(b - a >= step for a, b in itertools.pairwise(firsts))
    # What the hash still has to read when the last byte arrives: the second spans but the
    # first, (count - 1) / (2 * RAMP * count) of the file.
    finish = min(last)
    behind = sum(
        end - start + 1
        for (start, end, _), (at, _) in zip(spans, ends, strict=True)
        if at >= finish
    )
    share = (count - 1) / (2 * segments.RAMP * count)
    assert behind - (spans[count][1] - spans[count][0] + 1) <= size * share * 1.01


def test_large_file_uses_ranged_segments(served: Served, tmp_path: Path) -> None:
    node = add_big(served)
    result = served.cli("get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), *SEG)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "big.bin").read_bytes() == node.blob.read(0, SIZE)
    assert sorted(read_ranges(served)) == sorted(
        [
            "bytes=0-1499135",
            "bytes=1499136-2998271",
            "bytes=2998272-4497407",
            "bytes=4497408-6000000",
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


def test_killed_segmented_download_resumes_each_span(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    size = 48_000_000  # a ramp: four first spans of about 10 MB, four second ones under 1.5 MB
    node = add_big(served, size)
    served.emulator.switches.bandwidth = 8_000_000
    proc = subprocess.Popen(
        served.argv(
            "get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), "--progress", "none", *SEG
        ),
    )
    sidecar = tmp_path / "big.bin.part.json"
    deadline = time.monotonic() + 20
    saved: list[list[int]] = []
    while time.monotonic() < deadline and not (saved and all(seg[2] for seg in saved[:4])):
        with contextlib.suppress(OSError, ValueError, KeyError):
            saved = json.loads(sidecar.read_text())["segments"]
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = json.loads(sidecar.read_text())["segments"]
    assert len(saved) == 8 and all(seg[2] for seg in saved[:4])  # every lane had bytes on disk
    assert not any(seg[2] == seg[1] - seg[0] + 1 for seg in saved)
    served.emulator.switches.bandwidth = 0
    served.reset_after_kill()
    monkeypatch.setattr(segments, "STEAL_MIN", size)  # uncapped lanes differ: no takeovers
    result = served.cli("get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), *SEG)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "big.bin").read_bytes() == node.blob.read(0, size)
    # Each span resumes where its record says; the untouched second spans join the last first
    # span: four requests, no byte fetched twice.
    starts = sorted(int(r.split("=")[1].split("-")[0]) for r in read_ranges(served))
    assert starts == [seg[0] + seg[2] for seg in saved[:4]]
    assert served.stat("read_bytes") == size - sum(seg[2] for seg in saved)


def test_interrupted_spans_keep_their_bytes_and_resume_mid_span(
    served: Served, tmp_path: Path
) -> None:
    size = 24_000_000
    node = add_big(served, size)
    served.emulator.switches.bandwidth = 2_000_000
    proc = subprocess.Popen(
        served.argv(
            "get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), "--progress", "none", *SEG
        ),
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while served.stat("read_bytes") < 4_000_000 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    saved = json.loads((tmp_path / "big.bin.part.json").read_text())["segments"]
    # SIGINT writes what each span received so far (less than one buffer): spans stop mid-way.
    partial = [seg for seg in saved if 0 < seg[2] < seg[1] - seg[0] + 1]
    assert len(partial) >= 2
    served.emulator.switches.bandwidth = 0
    served.reset_after_kill()
    result = served.cli("get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), *SEG)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "big.bin").read_bytes() == node.blob.read(0, size)
    assert served.stat("read_bytes") == size - sum(seg[2] for seg in saved)
    starts = sorted(int(r.split("=")[1].split("-")[0]) for r in read_ranges(served))
    assert starts == sorted(seg[0] + seg[2] for seg in saved if seg[0] + seg[2] <= seg[1])


def test_a_fast_single_connection_goes_on_as_one_stream(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Thresholds scaled down so that the loopback emulator counts as a fast link.
    monkeypatch.setattr(segments, "PROBE_MIN", 1)
    monkeypatch.setattr(segments, "FAST_LINK", 1)
    monkeypatch.setattr(segments, "PROBE_WAIT", 2.0)
    monkeypatch.setattr(segments, "PROBE_SECONDS", 0.1)
    # Four equal 3 MB spans (a file this small gets no ramp), and about 1.2 MB in the probe:
    # the first connection is stopped part-way through its span.
    size = 12_000_000
    node = add_big(served, size)
    served.emulator.switches.bandwidth = 12_000_000
    result = served.cli(
        "get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), *SEG, "--debug", "--json"
    )
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "big.bin").read_bytes() == node.blob.read(0, size)
    assert "one stream from here" in result.stdout + result.stderr
    ranges = read_ranges(served)
    # The first connection alone on the first span; then one open-ended range from where it
    # had got to, its bytes read back into the hash (a wrong hand-over would fail the hash
    # check and show as a restart from zero here).
    first_span = plan_spans(size, 4, None)[0]
    assert len(ranges) == 2 and ranges[0] == f"bytes=0-{first_span[1]}"
    assert ranges[1] is not None and ranges[1].endswith("-")
    resumed_at = int(ranges[1].split("=")[1].rstrip("-"))
    assert 0 < resumed_at <= first_span[1] + 1
    # No byte the client received is asked for again; only what was still in flight when the
    # first connection stopped (a chunk or two the server had written, the client not yet
    # read) is sent twice.
    assert size <= served.stat("read_bytes") <= size + 2 * BODY_CHUNK
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]


def test_the_probe_times_a_link_from_its_response(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server takes 200 ms to answer, then sends: the wait is not the link's speed.
    Timed from the request, the probe would have seen no bytes in its 150 ms and split."""
    monkeypatch.setattr(segments, "PROBE_MIN", 1)
    monkeypatch.setattr(segments, "FAST_LINK", 1)  # any bytes in the window count as fast
    monkeypatch.setattr(segments, "PROBE_WAIT", 2.0)
    monkeypatch.setattr(segments, "PROBE_SECONDS", 0.15)
    size = 12_000_000  # four 3 MB pieces; about 1.5 MB comes in the window
    node = add_big(served, size)
    served.emulator.switches.latency = 0.2
    served.emulator.switches.bandwidth = 10_000_000
    result = served.cli(
        "get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), *SEG, "--debug", "--json"
    )
    served.emulator.switches.latency = 0.0
    served.emulator.switches.bandwidth = 0
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "big.bin").read_bytes() == node.blob.read(0, size)
    assert "one stream from here" in result.stdout + result.stderr
    ranges = read_ranges(served)
    assert len(ranges) == 2 and ranges[1] is not None and ranges[1].endswith("-")


def test_a_slow_answer_is_not_waited_for(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A response slower than PROBE_WAIT: the other connections join without it."""
    monkeypatch.setattr(segments, "PROBE_MIN", 1)
    monkeypatch.setattr(segments, "FAST_LINK", 1)
    size = 12_000_000
    node = add_big(served, size)
    served.emulator.switches.latency = 0.1
    result = served.cli("get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), *SEG)
    served.emulator.switches.latency = 0.0
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "big.bin").read_bytes() == node.blob.read(0, size)
    assert len(read_ranges(served)) == 4 and all(
        r and not r.endswith("-") for r in read_ranges(served)
    )


def test_a_capped_connection_keeps_its_segments(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segments, "PROBE_MIN", 1)
    size = 8_000_000
    node = add_big(served, size)
    served.emulator.switches.bandwidth = 4_000_000  # far below FAST_LINK per connection
    result = served.cli("get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), *SEG)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "big.bin").read_bytes() == node.blob.read(0, size)
    assert len(read_ranges(served)) == 4 and all(
        r and not r.endswith("-") for r in read_ranges(served)
    )


def test_a_segmented_file_costs_at_most_two_requests_per_connection(
    served: Served, tmp_path: Path
) -> None:
    """A healthy link (equal capped connections, as in B3): each lane asks for its first span
    whole, then for one second span, on the same connection."""
    size = 48_000_000
    node = add_big(served, size)
    served.emulator.switches.bandwidth = 16_000_000
    result = served.cli("get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), *SEG)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "big.bin").read_bytes() == node.blob.read(0, size)
    planned = [f"bytes={start}-{end}" for start, end, _ in plan_spans(size, 4, None)]
    assert read_ranges(served) == planned and len(planned) == 2 * 4
    assert served.stat("read_connections") <= 4
    assert served.stat("read_bytes") == size


def read_starts(served: Served) -> list[tuple[int, float]]:
    """(first byte asked for, arrival) of each read."""
    return [
        (int(r["headers"]["Range"].split("=")[1].split("-")[0]), r["at"])
        for r in served.emulator.requests
        if r["endpoint"] == "read"
    ]


def test_a_lane_done_early_takes_the_back_half_of_the_longest_span(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segments, "STEAL_MIN", 1024 * 1024)
    size = 24_000_000  # four 6 MB spans, 0.75 s each at 8 MB/s
    node = add_big(served, size)
    served.emulator.switches.bandwidth = 8_000_000
    # One read stops for a second after 500 kB: the other lanes finish first and share its rest.
    served.server.call(
        lambda: served.emulator.set_faults(
            [Fault("stall", after_bytes=500_000, seconds=1.0, times=1)]
        )
    )
    result = served.cli("get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), *SEG)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "big.bin").read_bytes() == node.blob.read(0, size)
    planned = {start for start, _, _ in plan_spans(size, 4, None)}
    starts = [start for start, _ in read_starts(served)]
    stolen = [start for start in starts if start not in planned]
    assert stolen and all(start % 4096 == 0 for start in stolen)
    assert len(starts) <= 2 * 4
    # The stalled lane stops at its new end: little more than the file crosses the wire.
    assert served.stat("read_bytes") < size + 1_000_000


def test_a_429_on_a_read_opens_no_more_connections_and_waits(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segments, "STEAL_MIN", 512 * 1024)  # steals would be worth it here
    size = 12_000_000  # four 3 MB spans, 0.375 s each at 8 MB/s
    node = add_big(served, size)
    served.emulator.switches.bandwidth = 8_000_000
    served.server.call(
        lambda: served.emulator.set_faults(
            [Fault("rate_limit", endpoint="read", retry_after=0.6, times=1)]
        )
    )
    result = served.cli(
        "get",
        f"ws:{served.ws}/{node.id}",
        "-d",
        str(tmp_path),
        *SEG,
        *("--backoff", "0.01", "--max-retry-wait", "5"),
        fast_retries=False,
    )
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "big.bin").read_bytes() == node.blob.read(0, size)
    reads = read_starts(served)
    assert served.stat("status:429") == 1
    # The lane that met the 429 gave its span back; a lane done with its own asked for it
    # once the limit's 0.6 s had passed. No steals although two lanes were idle, and no new
    # connection.
    planned = [start for start, _, _ in plan_spans(size, 4, None)]
    assert len(reads) == 5 and sorted({start for start, _ in reads}) == planned
    again = [at for start, at in reads[1:] if start == reads[0][0]]
    assert again and again[0] - reads[0][1] >= 0.6
    assert served.stat("read_connections") <= 4


def test_a_429_on_every_lane_leaves_one_that_does_the_rest(served: Served, tmp_path: Path) -> None:
    node = add_big(served)
    served.server.call(
        lambda: served.emulator.set_faults(
            [Fault("rate_limit", endpoint="read", retry_after=0.3, times=4)]
        )
    )
    result = served.cli("get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), *SEG)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "big.bin").read_bytes() == node.blob.read(0, SIZE)
    reads = read_starts(served)
    # Four refused; the last lane waits and takes its span again, then the spans given back
    # (joined where they follow each other): one connection moves bytes at a time.
    assert served.stat("status:429") == 4
    assert 6 <= len(reads) <= 7
    assert min(at for _, at in reads[4:]) - max(at for _, at in reads[:4]) >= 0.3
    assert served.stat("reads_sending_max") == 1


def test_broken_reads_with_slow_answers_resume_and_verify(served: Served, tmp_path: Path) -> None:
    """Requests wait 60 ms and three reads break mid-span."""
    size = 24_000_000
    node = add_big(served, size)
    served.emulator.switches.bandwidth = 4_000_000
    served.emulator.switches.latency = 0.06
    served.server.call(
        lambda: served.emulator.set_faults([Fault("drop", after_bytes=700_000, times=3)])
    )
    result = served.cli("get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), *SEG)
    served.emulator.switches.latency = 0.0
    served.emulator.switches.bandwidth = 0
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "big.bin").read_bytes() == node.blob.read(0, size)
    assert served.stat("fault:drop") == 3
    assert served.stat("read") == 4 + 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]
