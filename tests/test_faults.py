"""Every emulator fault switch, against a small and a large file; then a bounded soak."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fastio_dl.emulator import DatasetSpec, Fault, SeededBlob
from tests.conftest import Served

SMALL, LARGE = 50_000, 3_000_000

# (fault, expected exit code, whether the final file exists)
MATRIX = {
    "drop": ([Fault("drop", after_bytes=20_000, times=2)], 0),
    "drop always": ([Fault("drop", after_bytes=0)], 1),
    "stall": ([Fault("stall", after_bytes=20_000, seconds=1.5, times=1)], 0),
    "429 with retry_after": ([Fault("rate_limit", endpoint="any", retry_after=0.05, times=3)], 0),
    "429 headers only": (
        [Fault("rate_limit", endpoint="any", retry_after=None, seconds=0, times=2)],
        0,
    ),
    "5xx burst": (
        [
            Fault("server_error", endpoint="any", status=502, times=2),
            Fault("server_error", endpoint="any", status=503, times=2),
        ],
        0,
    ),
    "wrong bytes once": ([Fault("wrong_bytes", after_bytes=12_345, times=1)], 0),
    "wrong bytes always": ([Fault("wrong_bytes", after_bytes=12_345)], 1),
    "expired read token": ([Fault("expire_token", times=1)], 0),
    "expired read token always": ([Fault("expire_token")], 1),
    "long content-length": ([Fault("long_length", times=1)], 0),
    "range ignored after a drop": (
        [Fault("drop", after_bytes=20_000, times=1), Fault("ignore_range")],
        0,
    ),
    "range shifted after a drop": (
        [Fault("drop", after_bytes=20_000, times=1), Fault("shift_range", times=1)],
        0,
    ),
}


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["small", "large"])
@pytest.mark.parametrize("name", list(MATRIX))
def test_fault_matrix(served: Served, tmp_path: Path, name: str, size: int) -> None:
    faults, expected_exit = MATRIX[name]
    node = served.server.call(
        lambda: served.space.add_file("root", "target.bin", SeededBlob(size, size))
    )
    served.server.call(lambda: served.emulator.set_faults([Fault(**vars(f)) for f in faults]))
    mode = "token" if "token" in name else "auto"  # read tokens exist only in token mode
    result = served.cli(
        "get",
        f"ws:{served.ws}/{node.id}",
        "-d",
        str(tmp_path),
        "--json",
        "--retries",
        "4",
        "--stall-timeout",
        "0.5",
        "--read-mode",
        mode,
    )
    assert result.exit_code == expected_exit, result.stderr
    final = tmp_path / "target.bin"
    fired = sum(v for k, v in served.emulator.counters.items() if k.startswith("fault:"))
    assert fired > 0
    if expected_exit == 0:
        assert final.read_bytes() == node.blob.read(0, size)
        assert result.files()[0]["status"] == "downloaded"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["target.bin"]
    else:
        assert not final.exists()
        record = result.files()[0]
        assert record["status"] == "failed" and record["error"]


def test_soak_random_faults_never_corrupt(make_served, tmp_path: Path) -> None:
    served: Served = make_served(
        DatasetSpec(files=300, depth=2, fanout=3, min_size=1, max_size=60_000, seed=9)
    )
    served.server.call(
        lambda: served.emulator.set_faults(
            [
                Fault("drop", after_bytes=2_000, probability=0.08),
                Fault("wrong_bytes", after_bytes=1_000, probability=0.05),
                Fault("long_length", probability=0.03),
                Fault("stall", after_bytes=500, seconds=1.0, probability=0.01),
                Fault("expire_token", probability=0.03),
                Fault("server_error", endpoint="any", probability=0.04),
                Fault("rate_limit", endpoint="any", probability=0.04, retry_after=0.01),
            ]
        )
    )
    began = time.monotonic()
    result = served.cli(
        "get",
        f"ws:{served.ws}/root",
        "-d",
        str(tmp_path),
        "-j",
        "16",
        "--json",
        "--retries",
        "3",
        "--stall-timeout",
        "0.3",
        "--read-mode",
        "token",
    )
    assert time.monotonic() - began < 60
    assert result.exit_code in (0, 1), result.stderr
    failed = {r["path"] for r in result.files() if r["status"] == "failed"}
    for relpath, digest in served.expected().items():
        path = tmp_path / relpath
        if str(path) in failed:
            assert not path.exists()
        else:
            import hashlib

            assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, relpath
    assert result.summary()["downloaded"] + len(failed) == 300
    assert sum(v for k, v in served.emulator.counters.items() if k.startswith("fault:")) > 30
