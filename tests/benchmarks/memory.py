"""Peak memory of ``fastio-dl get`` on one large file (default 1 GiB), measured, not assumed.

    python -m tests.benchmarks.memory [--size 1G] [--limit-mb 150]

Starts the emulator (a separate process on 127.0.0.1), downloads the file with the real CLI in
a child process, and reads the child's own peak RSS (GNU time, see ``harness.run_measured``).
Exits non-zero if the peak is over the limit or the file is wrong.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from tests.benchmarks.harness import (
    EmulatorProcess,
    fastio_get,
    parse_size,
    run_measured,
)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="1G")
    parser.add_argument("--limit-mb", type=float, default=150.0)
    args = parser.parse_args()
    size = parse_size(args.size)
    emulator = EmulatorProcess(
        "--files", "1", "--depth", "0", "--min-size", str(size), "--max-size", str(size)
    )
    try:
        with tempfile.TemporaryDirectory(prefix="fastio-mem-") as tmp:
            run = run_measured("fastio-dl", fastio_get(emulator, tmp))
            code, wall, cpu, peak = run.exit, run.wall, run.cpu, run.peak_mb
            files = [p for p in Path(tmp).rglob("*") if p.is_file()]
            # exit 0 means fastio-dl verified size and sha256 against the emulator's answer
            ok = code == 0 and len(files) == 1 and files[0].stat().st_size == size
    finally:
        emulator.stop()
    rate = size / wall / 2**20
    print(
        f"size {size / 2**20:.0f} MiB: exit {code}, {wall:.2f} s wall ({rate:.0f} MiB/s), "
        f"{cpu:.2f} s CPU, peak RSS {peak:.1f} MB (limit {args.limit_mb:.0f} MB)"
    )
    return 0 if ok and peak < args.limit_mb else 1


if __name__ == "__main__":
    sys.exit(main())
