"""Peak memory of ``fastio-dl get`` on one large file (default 1 GiB), measured, not assumed.

    python -m tests.benchmarks.memory [--size 1G] [--limit-mb 150]

Starts the emulator (a separate process on 127.0.0.1), downloads the file with the real CLI in
a child process, and reads the child's peak RSS from the kernel (wait4 rusage). Exits non-zero if
the peak is over the limit or the file is wrong.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from fastio_dl.emulator import DEFAULT_TOKEN, DEMO_WORKSPACE_ID


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def start_emulator(port: int, size: int, extra: list[str] | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastio_dl.emulator", "--port", str(port), "--files", "1", "--depth", "0",
         "--min-size", str(size), "--max-size", str(size), *(extra or [])],
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_emulator/stats", timeout=1).read()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the emulator did not start")


def run_measured(argv: list[str]) -> tuple[int, float, float, float]:
    """Run argv; return (exit code, wall seconds, CPU seconds, peak RSS in MB)."""
    began = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - began
    return os.waitstatus_to_exitcode(status), wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1G")
    parser.add_argument("--limit-mb", type=float, default=150.0)
    args = parser.parse_args()
    size = parse_size(args.size)
    port = free_port()
    emulator = start_emulator(port, size)
    try:
        with tempfile.TemporaryDirectory(prefix="fastio-mem-") as tmp:
            code, wall, cpu, peak = run_measured(
                [sys.executable, "-m", "fastio_dl", "get", f"ws:{DEMO_WORKSPACE_ID}/root", "-d", tmp,
                 "--api-base", f"http://127.0.0.1:{port}/current", "--token", DEFAULT_TOKEN,
                 "--progress", "none"]
            )
            files = [p for p in Path(tmp).rglob("*") if p.is_file()]
            # exit 0 means fastio-dl verified size and sha256 against the emulator's answer
            ok = code == 0 and len(files) == 1 and files[0].stat().st_size == size
    finally:
        emulator.terminate()
        emulator.wait(10)
    rate = size / wall / 2**20
    print(f"size {size / 2**20:.0f} MiB: exit {code}, {wall:.2f} s wall ({rate:.0f} MiB/s), "
          f"{cpu:.2f} s CPU, peak RSS {peak:.1f} MB (limit {args.limit_mb:.0f} MB)")
    return 0 if ok and peak < args.limit_mb else 1


if __name__ == "__main__":
    sys.exit(main())
