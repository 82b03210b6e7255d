"""Benchmarks: fastio-dl against aria2c and curl on the same data from the emulator.

    python -m tests.benchmarks [--only B1,B2] [--rounds 3] [--json results.json]

Every server here is the project's emulator on 127.0.0.1 (a separate process). Peers are fed
the emulator's pre-minted ``/read/?token=`` URLs (minted before timing); fastio-dl resolves
details and read tokens itself inside its timed run. Runs alternate between tools; the table
shows medians and ratios (fastio-dl time / peer time: below 1.0 means fastio-dl is faster),
each tool's fastest and slowest run, and when the emulator saw its first read (the median time
from the tool's start: start-up, and for fastio-dl its listing; the rest is transfer).

    B1  2,000 files of 64 KiB, 20 ms latency per request, concurrency 16 for every tool
    B2  one 1 GiB file, no added latency, against single-stream curl (+ sha256sum CPU)
    B3  one large file behind a per-connection bandwidth cap: N connections vs aria2c -x N -s N;
        1 GiB like B2's file, then 256 MiB, where fastio-dl's fixed start-up weighs 4x as much;
        each also with 50 ms before every request's first bytes (an internet round trip).
        The target is judged on B2's file (--b2-size) with no added latency; the other rows
        are shown beside it.
    B4  no-op sync of 10,000 up-to-date files: seconds and API calls
    B5  a manifest of 100,000 references, --dry-run: seconds and peak memory
    B6  a tree of 64-byte files in folders of 1,000, at 100,000 and 1,000,000 files (--b6-files):
        ls -r --json, sync --dry-run, get, a filling sync and a no-op sync; wall time, peak RSS
        and its growth per file between the sizes
    B7  5,000 files of 64 KiB, -j 16, every /read/ answered with a redirect to nginx serving the
        same bytes (a C static server; started here on 127.0.0.1 from a temporary config):
        files per second and CPU per file of fastio-dl, curl and aria2c, all following it

B1 and B3 rows also count the /read/ requests each tool made (read_requests).

After the table, each target with what was measured and whether it was met; the exit status
is 1 when a target was missed.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.benchmarks.harness import (
    DELETED_WINDOW,
    FASTIO_DL,
    GNU_TIME,
    WS,
    EmulatorProcess,
    Run,
    compile_package,
    fastio_args,
    fastio_get,
    free_port,
    fresh_dir,
    last_deletion,
    median,
    remove_tree,
    require,
    run_measured,
)

RESULTS = Path(__file__).parent / "results"
SHA256SUM = "sha256sum (curl has no hash)"  # B2's row of the hash that curl skips


def curl_config(urls: list[tuple[str, str]], out: Path) -> Path:
    config = out.parent / f"{out.name}.curl"
    config.write_text("".join(f'url = "{u}"\noutput = "{out / name}"\n' for u, name in urls))
    return config


def aria_input(urls: list[tuple[str, str]], out: Path) -> Path:
    listing = out.parent / f"{out.name}.aria"
    listing.write_text("".join(f"{u}\n  out={name}\n" for u, name in urls))
    return listing


def curl_parallel(curl: str, flags: str, urls: list[tuple[str, str]], out: Path) -> Run:
    """curl fetching every URL into ``out``, 16 at a time."""
    config = curl_config(urls, out)
    return run_measured(
        "curl", [curl, flags, "--parallel", "--parallel-max", "16", "-K", str(config)]
    )


def aria_parallel(aria: str, urls: list[tuple[str, str]], out: Path) -> Run:
    """aria2c fetching every URL into ``out``, 16 at a time."""
    listing = aria_input(urls, out)
    argv = [aria, "-q", "-j", "16", "-d", str(out), "-i", str(listing)]
    return run_measured("aria2c", [*argv, "--allow-overwrite=true", "--auto-file-renaming=false"])


def alternate(
    rounds: int, tools: dict[str, Any], emulator: EmulatorProcess | None = None
) -> dict[str, list[Run]]:
    """Each tool once per round, in turn. With ``emulator``, each run also gets the time from
    its start to the server's first read (start-up, plus listing for fastio-dl)."""
    runs: dict[str, list[Run]] = {name: [] for name in tools}
    for _ in range(rounds):
        for name, make in tools.items():
            if emulator is not None:
                emulator.reset()
            run = make()
            if run.exit != 0:
                raise SystemExit(f"{name} failed with exit {run.exit}")
            if emulator is not None and (at := emulator.first_read_at()) is not None:
                run.first_read = at - run.began
            if emulator is not None:
                run.reads = emulator.stats().get("read", 0)
            runs[name].append(run)
    return runs


def row(bench: str, runs: dict[str, list[Run]], ours: str = "fastio-dl") -> list[dict[str, Any]]:
    base = median(runs[ours], "wall")
    out = []
    for tool, items in runs.items():
        wall = median(items, "wall")
        out.append(
            {
                "bench": bench,
                "tool": tool,
                "wall_s": round(wall, 3),
                "cpu_s": round(median(items, "cpu"), 3),
                "peak_mb": round(median(items, "peak_mb"), 1),
                "ratio": round(base / wall, 3) if tool != ours else 1.0,
                "walls": [round(r.wall, 3) for r in items],
            }
        )
        firsts = [r.first_read for r in items if r.first_read is not None]
        if firsts and len(firsts) == len(items):
            out[-1]["first_read_ms"] = round(statistics.median(firsts) * 1000, 1)
        reads = [r.reads for r in items if r.reads is not None]
        if reads and len(reads) == len(items):
            out[-1]["read_requests"] = int(statistics.median(reads))
    return out


def b1(tmp: Path, rounds: int) -> list[dict[str, Any]]:
    emu = EmulatorProcess(
        "--files", "2000", "--depth", "0", "--min-size", "64K", "--max-size", "64K"
    )
    try:
        urls = emu.read_urls(emu.files())
        emu.switches(latency=0.02)
        aria, curl = require("aria2c", "aria2"), require("curl", "curl")

        def ours() -> Run:
            return run_measured(
                "fastio-dl",
                fastio_get(emu, fresh_dir(tmp / "f"), "-j", "16"),
            )

        def run_curl() -> Run:
            return curl_parallel(curl, "-sf", urls, fresh_dir(tmp / "c"))

        def run_aria() -> Run:
            return aria_parallel(aria, urls, fresh_dir(tmp / "a"))

        return row(
            "B1 2000 x 64 KiB, 20 ms",
            alternate(rounds, {"fastio-dl": ours, "curl": run_curl, "aria2c": run_aria}, emu),
        )
    finally:
        emu.stop()


def b2(tmp: Path, rounds: int, size: str) -> list[dict[str, Any]]:
    emu = EmulatorProcess("--files", "1", "--depth", "0", "--min-size", size, "--max-size", size)
    try:
        files = emu.files()
        curl = require("curl", "curl")

        def ours() -> Run:
            return run_measured(
                "fastio-dl",
                fastio_get(emu, fresh_dir(tmp / "f")),
            )

        def run_curl() -> Run:
            ((url, name),) = emu.read_urls(files)  # a fresh token per run, minted before timing
            out = fresh_dir(tmp / "c")
            return run_measured("curl", [curl, "-sf", "-o", str(out / name), url])

        runs = alternate(rounds, {"fastio-dl": ours, "curl": run_curl}, emu)
        sha = run_measured("sha256sum", ["sha256sum", str(next((tmp / "c").iterdir()))])
        rows = row(f"B2 one {size} file", runs)
        gib = int(files[0]["size"]) / 2**30
        for item in rows:
            item["cpu_per_gib"] = round(item["cpu_s"] / gib, 2)
        rows.append(
            {
                "bench": f"B2 one {size} file",
                "tool": SHA256SUM,
                "wall_s": round(sha.wall, 3),
                "cpu_s": round(sha.cpu, 3),
                "peak_mb": round(sha.peak_mb, 1),
                "cpu_per_gib": round(sha.cpu / gib, 2),
                "ratio": None,
            }
        )
        return rows
    finally:
        emu.stop()


def b3(
    tmp: Path, rounds: int, size: str, cap: str, n: int, latency: float = 0.0
) -> list[dict[str, Any]]:
    emu = EmulatorProcess(
        "--files", "1", "--depth", "0", "--min-size", size, "--max-size", size, "--bandwidth", cap
    )
    try:
        files = emu.files()
        aria = require("aria2c", "aria2")
        if latency:
            emu.switches(latency=latency)

        def ours() -> Run:
            return run_measured(
                "fastio-dl",
                fastio_get(emu, fresh_dir(tmp / "f"), "--segments", str(n)),
            )

        def run_aria() -> Run:
            ((url, name),) = emu.read_urls(files)
            out = fresh_dir(tmp / "a")
            return run_measured(
                "aria2c",
                [
                    aria,
                    "-q",
                    "-x",
                    str(n),
                    "-s",
                    str(n),
                    "-k",
                    "1M",
                    "-d",
                    str(out),
                    "-o",
                    name,
                    "--allow-overwrite=true",
                    url,
                ],
            )

        wait = f", {latency * 1000:.0f} ms per request" if latency else ""
        return row(
            f"B3 one {size} file, {cap}/s per connection, {n} connections{wait}",
            alternate(rounds, {"fastio-dl": ours, "aria2c": run_aria}, emu),
        )
    finally:
        emu.stop()


def b4(tmp: Path, rounds: int) -> list[dict[str, Any]]:
    emu = EmulatorProcess(
        "--files", "10000", "--depth", "2", "--fanout", "4", "--min-size", "1", "--max-size", "2K"
    )
    try:
        manifest = tmp / "b4.manifest"
        manifest.write_text(f"ws:{WS}/root\n")
        dest = fresh_dir(tmp / "b4")
        argv = [*FASTIO_DL, "sync", str(manifest), "-d", str(dest), "-j", "16", *fastio_args(emu)]
        first = run_measured("fastio-dl", argv)
        if first.exit != 0:
            raise SystemExit("B4: the first sync failed")
        runs, calls = [], []
        for _ in range(rounds):
            emu.reset()
            runs.append(run_measured("fastio-dl", argv))
            calls.append(emu.stats())
        stats = calls[-1]
        return [
            {
                "bench": "B4 no-op sync, 10,000 files",
                "tool": "fastio-dl",
                "wall_s": round(median(runs, "wall"), 3),
                "cpu_s": round(median(runs, "cpu"), 3),
                "peak_mb": round(median(runs, "peak_mb"), 1),
                "api_calls": stats.get("requests", 0),
                "tokens_minted": stats.get("tokens_minted", 0),
                "reads": stats.get("read", 0),
                "first_sync_s": round(first.wall, 3),
                "ratio": None,
            }
        ]
    finally:
        emu.stop()


def b5(tmp: Path) -> list[dict[str, Any]]:
    emu = EmulatorProcess(
        "--files", "100000", "--depth", "0", "--min-size", "1", "--max-size", "1K"
    )
    try:
        ids = [node["id"] for node in emu.files()]
        manifest = tmp / "b5.manifest"
        manifest.write_text("".join(f"ws:{WS}/{node_id} d/{node_id}.bin\n" for node_id in ids))
        emu.reset()
        run = run_measured(
            "fastio-dl",
            [
                *FASTIO_DL,
                "sync",
                str(manifest),
                "-d",
                str(fresh_dir(tmp / "b5")),
                "--dry-run",
                "-j",
                "16",
                *fastio_args(emu),
            ],
        )
        stats = emu.stats()
        return [
            {
                "bench": "B5 manifest of 100,000 refs, dry run",
                "tool": "fastio-dl",
                "wall_s": round(run.wall, 3),
                "cpu_s": round(run.cpu, 3),
                "peak_mb": round(run.peak_mb, 1),
                "api_calls": stats.get("requests"),
                "exit": run.exit,
                "ratio": None,
            }
        ]
    finally:
        emu.stop()


B6_FOLDER = 1000  # files per folder in B6's tree


def b6(tmp: Path, sizes: list[int]) -> list[dict[str, Any]]:
    """Each command once per size, in the order a user would meet them; the filling sync's
    destination is the no-op sync's. The emulator's own memory is its process's, not ours."""
    rows: list[dict[str, Any]] = []
    for files in sizes:
        emu = EmulatorProcess(
            "--files",
            str(files),
            "--depth",
            "1",
            "--fanout",
            str(max(1, files // B6_FOLDER)),
            "--min-size",
            "64",
            "--max-size",
            "64",
        )
        try:
            manifest = tmp / "b6.manifest"
            manifest.write_text(f"ws:{WS}/root\n")
            synced = tmp / "b6-sync"
            sync = [*FASTIO_DL, "sync", str(manifest), "-d", str(synced), *fastio_args(emu)]
            commands = {
                "ls -r --json": [
                    *[*FASTIO_DL, "ls", "-r", "--json", f"ws:{WS}/root"],
                    *fastio_args(emu)[:4],  # --api-base, --token: ls has no --progress
                ],
                "sync --dry-run": [*sync, "--dry-run"],
                "get": fastio_get(emu, tmp / "b6-get"),
                "sync (filling)": sync,
                "sync (no-op)": sync,
            }
            fresh_dir(synced)
            for label, argv in commands.items():
                emu.reset()
                run = run_measured("fastio-dl", argv)
                stats = emu.stats()
                rows.append(
                    {
                        "bench": f"B6 {label}",
                        "tool": "fastio-dl",
                        "files": files,
                        "wall_s": round(run.wall, 3),
                        "cpu_s": round(run.cpu, 3),
                        "peak_mb": round(run.peak_mb, 1),
                        "us_per_file": round(run.wall / files * 1e6, 1),
                        "reads": stats.get("read", 0),
                        "tokens_minted": stats.get("tokens_minted", 0),
                        "exit": run.exit,
                        "ratio": None,
                    }
                )
            remove_tree(tmp / "b6-get")
            remove_tree(synced)
        finally:
            emu.stop()
    by_label: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        by_label.setdefault(r["bench"], []).append(r)
    for group in by_label.values():
        if len(group) > 1:
            small, big = group[0], group[-1]
            slope = (big["peak_mb"] - small["peak_mb"]) * 2**20 / (big["files"] - small["files"])
            big["bytes_per_file"] = round(slope, 1)
    return rows


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    sendfile on;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        root {tmp}/www;
        index data;
        default_type application/octet-stream;
    }}
}}
"""


class Nginx:
    """nginx (Debian's /usr/sbin/nginx) on 127.0.0.1 from a config in a temporary directory;
    a read's path under ``www`` holds its bytes in a file named ``data``."""

    def __init__(self) -> None:
        # Debian installs it in /usr/sbin, which is not on every user's PATH.
        binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
        if binary is None:
            raise SystemExit("nginx is missing: install it with `apt-get install nginx`")
        self.binary = binary
        # A directory of its own that others may enter: started as root, nginx's worker runs as
        # an unprivileged user, and the benchmark's temporary directory is private.
        self.tmp = Path(tempfile.mkdtemp(prefix="fastio-nginx-"))
        self.tmp.chmod(0o755)
        self.port = free_port()
        (self.tmp / "www").mkdir()

    def put(self, path: str, data: bytes) -> None:
        target = self.tmp / "www" / path.strip("/") / "data"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def start(self) -> None:
        for directory in self.tmp.rglob("*"):
            directory.chmod(0o755 if directory.is_dir() else 0o644)
        conf = self.tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=self.tmp, port=self.port))
        self.proc = subprocess.Popen(
            [self.binary, "-p", str(self.tmp), "-e", str(self.tmp / "error.log"), "-c", str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.05)
        self.stop()
        raise SystemExit(f"nginx did not start: see {self.tmp / 'error.log'}")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if hasattr(self, "proc"):
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        remove_tree(self.tmp)


def b7(tmp: Path, rounds: int, files: int = 5000) -> list[dict[str, Any]]:
    emu = EmulatorProcess(
        "--files",
        str(files),
        "--depth",
        "1",
        "--fanout",
        "4",
        "--min-size",
        "64K",
        "--max-size",
        "64K",
    )
    nginx = Nginx()
    try:
        nodes = emu.files()
        urls = emu.read_urls(nodes)
        for url, _name in urls:
            # The bytes nginx serves are the emulator's own, fetched before any timing.
            with urllib.request.urlopen(url, timeout=60) as response:
                nginx.put(urllib.parse.urlsplit(url).path, response.read())
        nginx.start()
        emu.switches(redirect_reads_to=nginx.base)
        aria, curl = require("aria2c", "aria2"), require("curl", "curl")
        # Every run writes into a directory of its own, none is deleted before the last run
        # ended, and the runs start 5.5 min after anything this script deleted. On ext4 without
        # a journal (this machine's) a new file skips, one by one, every inode freed in the last
        # 30 s, or 5.5 min while its block of the inode table is dirty, as new files next to it
        # make it (recently_deleted() in the kernel's inode allocator). A run right after the
        # deletion of the previous run's 5,000 files spent most of its time there (perf, curl:
        # 2.9 of 3.4 s in openat), and curl's runs ranged from 0.9 to 3.4 s with a 30 s wait.
        outputs = tmp / "b7-runs"
        made = itertools.count()
        os.sync()
        time.sleep(max(0.0, DELETED_WINDOW - (time.monotonic() - last_deletion())))

        def out(tool: str) -> Path:
            return fresh_dir(outputs / f"{tool}-{next(made)}")

        def ours() -> Run:
            return run_measured("fastio-dl", fastio_get(emu, out("f"), "-j", "16"))

        def run_curl() -> Run:
            return curl_parallel(curl, "-sfL", urls, out("c"))

        def run_aria() -> Run:
            return aria_parallel(aria, urls, out("a"))

        runs = alternate(rounds, {"fastio-dl": ours, "curl": run_curl, "aria2c": run_aria}, emu)
        rows = row(f"B7 {files} x 64 KiB via nginx, -j 16", runs)
        for item in rows:
            item["files_per_s"] = round(files / item["wall_s"])
            item["cpu_ms_per_file"] = round(item["cpu_s"] / files * 1000, 3)
        return rows
    finally:
        nginx.stop()
        emu.stop()
        remove_tree(tmp / "b7-runs")


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, {cpu}, "
        f"Python {platform.python_version()}"
    )


# Row keys with a column or a note of their own; any others are notes as key=value.
SHOWN = ("bench", "tool", "wall_s", "cpu_s", "peak_mb", "ratio", "walls", "first_read_ms")


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| bench | tool | wall s | CPU s | peak MB | fastio-dl time / tool time | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        notes = []
        if len(r.get("walls", ())) > 1:  # the spread of wall times over the rounds
            notes.append(f"runs {min(r['walls']):.2f}-{max(r['walls']):.2f} s")
        if "first_read_ms" in r:  # start-up (and listing): the rest of the wall time is transfer
            notes.append(f"first read at {r['first_read_ms']:.0f} ms")
        notes += [f"{k}={v}" for k, v in r.items() if k not in SHOWN]
        ratio = "" if r.get("ratio") is None or r["tool"] == "fastio-dl" else f"{r['ratio']:.2f}"
        lines.append(
            f"| {r['bench']} | {r['tool']} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} "
            f"| {r['peak_mb']:.0f} "
            f"| {ratio} | {', '.join(notes)} |"
        )
    return "\n".join(lines)


def _one(rows: list[dict[str, Any]], bench: str, tool: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["bench"] == bench and r["tool"] == tool), None)


def _of(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """The rows of bench ``key`` ("B1" to "B5"), in every variant that ran."""
    return [r for r in rows if r["bench"].split()[0] == key]


def _benches(rows: list[dict[str, Any]], key: str) -> list[str]:
    return list(dict.fromkeys(r["bench"] for r in _of(rows, key)))


def targets(rows: list[dict[str, Any]], big: str) -> list[dict[str, Any]]:
    """The issue's targets, judged from the rows: one entry per bench that ran.

    B3 is judged on B2's big file (``big``, by default 1G) with no added latency; its other
    sizes and latencies are shown with ``met`` None (no target), as is B3's target when B3
    ran without that size. ``met`` is False where a target is missed or a tool's row is
    missing."""
    out: list[dict[str, Any]] = []

    def judge(bench: str, target: str, met: bool | None, measured: str) -> None:
        out.append({"bench": bench, "target": target, "met": met, "measured": measured})

    for bench in _benches(rows, "B1"):
        ours = _one(rows, bench, "fastio-dl")
        peers = [r for r in rows if r["bench"] == bench and r["tool"] != "fastio-dl"]
        if ours is None or not peers:
            judge(bench, "at most the faster peer's time", False, "a tool's row is missing")
            continue
        fastest = min(peers, key=lambda r: r["wall_s"])
        ratio = ours["wall_s"] / fastest["wall_s"]
        judge(
            bench,
            "at most the faster peer's time",
            ratio <= 1.0,
            f"{ours['wall_s']:.2f} s against {fastest['tool']}'s {fastest['wall_s']:.2f} s "
            f"({ratio:.2f})",
        )
    for bench in _benches(rows, "B2"):
        ours, curl = _one(rows, bench, "fastio-dl"), _one(rows, bench, "curl")
        sha = _one(rows, bench, SHA256SUM) or {}
        if ours is None or curl is None:
            judge(bench, "within 1.2x curl's time, under 100 MB", False, "a tool's row is missing")
            continue
        ratio = ours["wall_s"] / curl["wall_s"]
        judge(
            bench,
            "within 1.2x curl's time, under 100 MB",
            ratio <= 1.2 and ours["peak_mb"] < 100,
            f"{ratio:.2f}x curl, {ours['peak_mb']:.0f} MB; CPU s/GiB "
            f"{ours.get('cpu_per_gib')} (curl {curl.get('cpu_per_gib')}, "
            f"sha256sum {sha.get('cpu_per_gib')})",
        )
    b3 = _benches(rows, "B3")
    target_b3 = next((b for b in b3 if f" {big} file," in b and " per request" not in b), None)
    if b3 and target_b3 is None:
        judge(f"B3 one {big} file", "at most aria2c's time", None, f"not run at {big}")
    for bench in b3:
        ours, aria = _one(rows, bench, "fastio-dl"), _one(rows, bench, "aria2c")
        if ours is None or aria is None:
            judge(bench, "at most aria2c's time", False, "a tool's row is missing")
            continue
        ratio = ours["wall_s"] / aria["wall_s"]
        if bench == target_b3:
            judge(bench, "at most aria2c's time", ratio <= 1.0, f"{ratio:.2f}")
        else:
            judge(bench, "none (shown beside the target)", None, f"{ratio:.2f}")
    for r in _of(rows, "B4"):  # fastio-dl's rows only
        judge(
            r["bench"],
            "under 5 s, no read token",
            r["wall_s"] < 5 and r.get("tokens_minted") == 0,
            f"{r['wall_s']:.2f} s, {r.get('api_calls')} API calls, "
            f"{r.get('tokens_minted')} read tokens",
        )
    for r in _of(rows, "B5"):  # fastio-dl's rows only
        judge(
            r["bench"],
            "under 60 s and 400 MB",
            r["wall_s"] < 60 and r["peak_mb"] < 400 and r.get("exit") == 0,
            f"{r['wall_s']:.2f} s, {r['peak_mb']:.0f} MB, exit {r.get('exit')}",
        )
    _judge_b6(rows, judge)
    for bench in _benches(rows, "B7"):
        ours, curl = _one(rows, bench, "fastio-dl"), _one(rows, bench, "curl")
        aria = _one(rows, bench, "aria2c")
        if ours is None or curl is None or aria is None:
            judge(bench, "half of curl's files/s, ahead of aria2c", False, "a row is missing")
            continue
        judge(
            bench,
            "half of curl's files/s, ahead of aria2c",
            ours["files_per_s"] >= curl["files_per_s"] / 2 and ours["wall_s"] < aria["wall_s"],
            f"{ours['files_per_s']} files/s ({ours['cpu_ms_per_file']} ms CPU a file); curl "
            f"{curl['files_per_s']} ({curl['cpu_ms_per_file']}), aria2c {aria['files_per_s']} "
            f"({aria['cpu_ms_per_file']})",
        )
    return out


def _judge_b6(
    rows: list[dict[str, Any]], judge: Callable[[str, str, bool | None, str], None]
) -> None:
    """Every command at the largest size: under 250 MB, under 100 bytes more per file than at
    the smallest; the no-op sync under 30 s (at 1,000,000 files) with no read and no token; the
    filling sync within 1.2x get's time on the same tree (at every size)."""
    b6 = _of(rows, "B6")
    if not b6:
        return
    largest = max(r["files"] for r in b6)
    for r in b6:
        if r["files"] != largest:
            continue
        slope = r.get("bytes_per_file")
        judge(
            f"{r['bench']} ({largest:,} files)",
            "peak under 250 MB, growth under 100 B a file",
            r["peak_mb"] < 250 and slope is not None and slope < 100 and r["exit"] == 0,
            f"{r['peak_mb']:.0f} MB, {slope} B a file, {r['wall_s']:.1f} s, exit {r['exit']}",
        )
    for r in b6:
        if r["bench"] == "B6 sync (no-op)" and r["files"] == largest:
            budget = 30 * largest / 1_000_000
            judge(
                f"B6 no-op sync time ({largest:,} files)",
                f"under {budget:.0f} s, no read, no token",
                r["wall_s"] < budget and r["reads"] == 0 and r["tokens_minted"] == 0,
                f"{r['wall_s']:.1f} s, {r['reads']} reads, {r['tokens_minted']} tokens",
            )
    for files in sorted({r["files"] for r in b6}):
        get = next((r for r in b6 if r["files"] == files and r["bench"] == "B6 get"), None)
        fill = next(
            (r for r in b6 if r["files"] == files and r["bench"] == "B6 sync (filling)"), None
        )
        if get is None or fill is None:
            continue
        ratio = fill["wall_s"] / get["wall_s"]
        judge(
            f"B6 filling sync / get ({files:,} files)",
            "at most 1.2",
            ratio <= 1.2,
            f"{ratio:.2f} ({fill['wall_s']:.1f} s against {get['wall_s']:.1f} s)",
        )


def verdicts(judged: list[dict[str, Any]]) -> str:
    word = {True: "met", False: "MISSED", None: "-"}
    lines = ["| bench | target | measured | |", "|---|---|---|---|"]
    lines += [
        f"| {t['bench']} | {t['target']} | {t['measured']} | {word[t['met']]} |" for t in judged
    ]
    missed = sum(t["met"] is False for t in judged)
    lines.append("")
    lines.append(f"{missed} target(s) missed" if missed else "every target measured was met")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="B1,B2,B3,B4,B5,B6,B7")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--b2-size", default="1G")
    parser.add_argument("--b3-size", default="1G,256M", help="one size or several, comma-separated")
    parser.add_argument("--b3-cap", default="16M")
    parser.add_argument("--b3-connections", type=int, default=8)
    parser.add_argument(
        "--b3-latency",
        default="0,0.05",
        help="seconds each request waits before its first bytes; one value or several",
    )
    parser.add_argument(
        "--b6-files", default="100000,1000000", help="B6's tree sizes, smallest first"
    )
    parser.add_argument("--json", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args()
    only = {b.strip().upper() for b in args.only.split(",")}
    compile_package()
    rows: list[dict[str, Any]] = []
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fastio-bench-") as name:
        tmp = Path(name)
        steps: dict[str, Callable[[], list[dict[str, Any]]]] = {
            "B1": lambda: b1(tmp, args.rounds),
            "B2": lambda: b2(tmp, args.rounds, args.b2_size),
            "B3": lambda: [
                r
                for size in args.b3_size.split(",")
                for latency in args.b3_latency.split(",")
                for r in b3(
                    tmp,
                    args.rounds,
                    size.strip(),
                    args.b3_cap,
                    args.b3_connections,
                    float(latency),
                )
            ],
            "B4": lambda: b4(tmp, args.rounds),
            "B5": lambda: b5(tmp),
            "B6": lambda: b6(tmp, [int(n) for n in args.b6_files.split(",")]),
            "B7": lambda: b7(tmp, args.rounds),
        }
        if not os.access(GNU_TIME, os.X_OK):
            print(
                f"{GNU_TIME} is missing: peak memory figures are upper bounds (the script's own"
                " size at least); `apt-get install time` for each tool's own peak",
                file=sys.stderr,
            )
        for key, step in steps.items():
            if key in only:
                print(f"running {key}...", file=sys.stderr, flush=True)
                rows += step()
    judged = targets(rows, args.b2_size)
    report = {
        "machine": machine(),
        "rounds": args.rounds,
        "seconds": round(time.monotonic() - began, 1),
        "rows": rows,
        "targets": judged,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"machine: {report['machine']}; medians of {args.rounds} alternating runs\n")
    print(table(rows))
    print()
    print(verdicts(judged))
    return 1 if any(t["met"] is False for t in judged) else 0


if __name__ == "__main__":
    sys.exit(main())
