"""Large files as parallel ranged requests into one preallocated .part."""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import json
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from fastio_dl import segments
from fastio_dl.blockio import BufferPool, PieceBuffer
from fastio_dl.emulator import Fault, SeededBlob
from fastio_dl.emulator.server import BODY_CHUNK
from fastio_dl.segments import split_segments
from tests.conftest import Served, let_tasks_run

SIZE = 6_000_001
SEG = ["--segments", "4", "--segment-threshold", "1M"]


def add_big(served: Served, size: int = SIZE):
    return served.server.call(
        lambda: served.space.add_file("root", "big.bin", SeededBlob(77, size))
    )


def read_ranges(served: Served) -> list[str | None]:
    return [r["headers"].get("Range") for r in served.emulator.requests if r["endpoint"] == "read"]


def test_split_and_prefix() -> None:
    pieces = split_segments(10, 3, None)
    assert pieces == [[0, 2, 0], [3, 5, 0], [6, 9, 0]]
    assert split_segments(10, 3, [[0, 9, 5]]) == [[0, 2, 3], [3, 5, 2], [6, 9, 0]]
    # Pieces are kept small enough for memory (4 connections: 8 MiB), with a ramp of 2, 4 and
    # 6 MiB pieces at each end; a saved larger piece is cut again, its done bytes a prefix.
    mib = 1024 * 1024
    big = split_segments(1024 * mib, 4, None)
    lengths = [(end - start + 1) // mib for start, end, _ in big]
    assert lengths == [2, 4, 6, 8, *[8] * 123, 8, 6, 4, 2]
    saved = [[0, 100 * mib - 1, 30 * mib], [100 * mib, 200 * mib - 1, 0]]
    cut = split_segments(200 * mib, 4, saved)
    assert cut[0] == [0, 8 * mib - 1, 8 * mib] and cut[3] == [24 * mib, 32 * mib - 1, 6 * mib]
    assert sum(seg[2] for seg in cut) == 30 * mib and cut[-1][1] == 200 * mib - 1
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(cut))


def finish_times(pieces: list[list[int]], count: int) -> list[tuple[float, int]]:
    """When each piece ends if ``count`` equal connections take them in file order."""
    free = [(0.0, conn) for conn in range(count)]
    ends = []
    for start, end, _ in pieces:
        at, conn = heapq.heappop(free)
        heapq.heappush(free, (at + end - start + 1, conn))
        ends.append((at + end - start + 1, conn))
    return ends


@pytest.mark.parametrize(
    ("size", "count"),
    [
        (256 << 20, 8),
        (1 << 30, 8),
        ((3 << 30) + 7, 8),
        (100 << 20, 8),
        (70 << 20, 16),
        (64 << 20, 4),
    ],
)
def test_equal_connections_spread_and_finish_together(size: int, count: int) -> None:
    pieces = split_segments(size, count, None)
    assert pieces[0][0] == 0 and pieces[-1][1] == size - 1
    assert all(b[0] == a[1] + 1 for a, b in itertools.pairwise(pieces))
    lengths = [end - start + 1 for start, end, _ in pieces]
    assert all(length % 4096 == 0 for length in lengths[:-1])  # whole blocks: O_DIRECT
    assert max(lengths) <= max(segments.SEGMENT_BLOCK, segments.SEGMENT_MEMORY // (count + 1))
    ends = finish_times(pieces, count)
    # Every connection is busy to the end: all finish within a few blocks of each other...
    last = [max(at for at, conn in ends if conn == c) for c in range(count)]
    assert max(last) - min(last) <= max(lengths) // 64
    # ...and, until the last ramp, pieces end a 1/count of a piece apart, in file order, so the
    # in-order hash keeps up instead of meeting a whole round of pieces at once.
    middle = sorted(at for at, _ in ends[: len(ends) - count])
    assert middle == [at for at, _ in ends[: len(ends) - count]]
    gap = max(lengths) / count / 2
    assert all(b - a >= gap for a, b in itertools.pairwise(middle))


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


def test_killed_segmented_download_resumes_each_segment(served: Served, tmp_path: Path) -> None:
    size = 24_000_000  # six 4 MiB pieces for four connections
    node = add_big(served, size)
    served.emulator.switches.bandwidth = 4_000_000
    proc = subprocess.Popen(
        served.argv(
            "get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), "--progress", "none", *SEG
        ),
    )
    sidecar = tmp_path / "big.bin.part.json"

    def complete(seg: list[int]) -> bool:
        return seg[2] == seg[1] - seg[0] + 1

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if any(complete(seg) for seg in json.loads(sidecar.read_text())["segments"]):
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = json.loads(sidecar.read_text())["segments"]
    assert any(complete(seg) for seg in saved)
    assert not all(complete(seg) for seg in saved)
    served.emulator.switches.bandwidth = 0
    served.server.call(served.emulator.reset_counters)
    result = served.cli("get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), *SEG)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "big.bin").read_bytes() == node.blob.read(0, size)
    # Finished pieces are not fetched again; the others resume where their record says.
    starts = sorted(int(r.split("=")[1].split("-")[0]) for r in read_ranges(served))
    assert starts == sorted(seg[0] + seg[2] for seg in saved if not complete(seg))
    assert served.stat("read_bytes") == size - sum(seg[2] for seg in saved)


@pytest.mark.parametrize("latency", [0.0, 0.06], ids=["no-wait", "handovers"])
def test_interrupted_pieces_keep_their_bytes_and_resume_mid_piece(
    served: Served, tmp_path: Path, latency: float
) -> None:
    size = 24_000_000
    node = add_big(served, size)
    served.emulator.switches.bandwidth = 2_000_000
    served.emulator.switches.latency = latency  # 60 ms: pieces hand over to successors
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
    # SIGINT writes what each piece received so far: pieces stop mid-way, not at zero.
    partial = [seg for seg in saved if 0 < seg[2] < seg[1] - seg[0] + 1]
    assert len(partial) >= 2
    if latency:
        assert served.stat("read_connections") > 4  # a handover had happened
    served.emulator.switches.bandwidth = 0
    served.emulator.switches.latency = 0.0
    served.server.call(served.emulator.reset_counters)
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
    # Four equal 3 MB pieces (a file this small gets no ramp of smaller first pieces), and
    # about 1.2 MB in the probe: the first connection is stopped part-way through its piece.
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
    # The first connection alone on the first piece; then one open-ended range from where it
    # had got to, its bytes hashed from memory (a wrong hand-over would fail the hash check
    # and show as a restart from zero here).
    first_piece = split_segments(size, 4, None)[0]
    assert len(ranges) == 2 and ranges[0] == f"bytes=0-{first_piece[1]}"
    assert ranges[1] is not None and ranges[1].endswith("-")
    resumed_at = int(ranges[1].split("=")[1].rstrip("-"))
    assert 0 < resumed_at <= first_piece[1] + 1
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


def test_pieces_are_asked_for_early_when_requests_wait_long(served: Served, tmp_path: Path) -> None:
    """60 ms before each piece's first bytes: near the end of its piece, a connection hands
    over to a successor that asks for the next piece at once. Bytes still move over as many
    connections as --segments."""
    size = 48_000_000
    pieces = len(split_segments(size, 4, None))  # 15, ramps included
    node = add_big(served, size)
    served.emulator.switches.bandwidth = 8_000_000
    served.emulator.switches.latency = 0.06
    result = served.cli("get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), *SEG)
    served.emulator.switches.latency = 0.0
    served.emulator.switches.bandwidth = 0
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "big.bin").read_bytes() == node.blob.read(0, size)
    assert served.stat("read") == pieces  # one request per piece, none repeated
    assert served.stat("read_connections") > 4  # successors asked on connections of their own
    # Bytes moved over four connections at a time (4 in every run here); one more allows for a
    # handover that a busy test machine's scheduling makes overlap.
    assert served.stat("reads_sending_max") <= 4 + 1


def test_broken_reads_during_handovers_resume_and_verify(served: Served, tmp_path: Path) -> None:
    """Requests wait 60 ms (pieces hand over) and three reads break mid-piece."""
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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]


async def test_the_piece_window_widens_for_a_handover_and_narrows_after() -> None:
    window = segments._Window(2)
    await window.acquire()
    await window.acquire()
    third = asyncio.ensure_future(window.acquire())
    await let_tasks_run()
    assert not third.done()  # two pieces held: a third waits
    window.widen(1)  # a connection hands over: one piece more may be held
    await asyncio.wait_for(third, 1)
    window.widen(-1)  # its last piece is in: back to two, three still held
    fourth = asyncio.ensure_future(window.acquire())
    window.release()
    await let_tasks_run()
    assert not fourth.done()  # 2 held, limit 2
    window.release()
    await asyncio.wait_for(fourth, 1)
    assert window.held == 2


@pytest.mark.parametrize(
    ("wait", "first", "left", "hands_over"),
    [
        # A paced server: 16 ms to the first 256 KiB is just those bytes at 16 MiB/s, no wait.
        (0.0166, 256 * 1024, 100_000, False),
        # 50 ms of wait on top: hand over once the rest takes 50 ms or less at 16 MiB/s.
        (0.0666, 256 * 1024, 800_000, True),
        (0.0666, 256 * 1024, 900_000, False),
    ],
)
async def test_a_connection_hands_over_only_for_time_that_no_bytes_move(
    wait: float, first: int, left: int, hands_over: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[int] = []

    async def connection(self: segments._SegmentedRun) -> None:
        started.append(1)

    monkeypatch.setattr(segments._SegmentedRun, "_connection", connection)
    run = segments._SegmentedRun.__new__(segments._SegmentedRun)
    run.todo = collections.deque([7])
    run.tasks, run._window = [], segments._Window(3)
    run._probing = run._stopping = False
    run._waits = []
    for _ in range(3):
        run.heard(wait, first)
    rate = 16 * 1024 * 1024
    # The clock stands still: the connection has been moving bytes for exactly 0.2 s.
    now = 1000.0
    monkeypatch.setattr(segments, "time", SimpleNamespace(monotonic=lambda: now))
    flow = segments._Flow()
    flow.began = now - 0.2 - segments.BURST
    flow.got = int(rate * 0.2)
    piece = PieceBuffer(0, 4_000_000, pool=BufferPool())
    try:
        piece.got = piece.length - left
        lane = segments._Lane()
        run.hand_off_near_end(lane, piece, flow)
        await asyncio.gather(*run.tasks)
    finally:
        piece.release()
    assert lane.retiring is hands_over
    assert len(started) == int(hands_over)
    assert run._window.extra == int(hands_over)
