"""Shared pieces of the benchmark scripts: the emulator as a process, measured child runs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastio_dl.emulator import DEFAULT_TOKEN, DEMO_WORKSPACE_ID

WS = DEMO_WORKSPACE_ID
FASTIO_DL = [sys.executable, "-m", "fastio_dl"]


def compile_package() -> None:
    """Write fastio-dl's bytecode before any timing, as an installed package has it.

    Under PYTHONDONTWRITEBYTECODE (set on some CI images) every run of a source checkout would
    otherwise compile the whole package again, about 40 ms that no installed copy pays."""
    import compileall

    import fastio_dl

    compileall.compile_dir(str(Path(fastio_dl.__file__).parent), quiet=1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": 1024**2, "G": 1024**3}
    return (
        int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)
    )


class EmulatorProcess:
    """``python -m fastio_dl.emulator`` on 127.0.0.1, in its own process (its own core)."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "fastio_dl.emulator",
                "--port",
                str(self.port),
                "--plain-names",
                "--notes",
                "0",
                "--links",
                "0",
                *args,
            ],
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                self.stats()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise SystemExit("the emulator did not start")

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/current"

    def get(self, path: str) -> Any:
        request = urllib.request.Request(
            self.api_base + path, headers={"Authorization": f"Bearer {DEFAULT_TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())

    def _stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.port}/_emulator/stats", timeout=5
        ) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def stats(self) -> dict[str, Any]:
        return self._stats()["counters"]  # type: ignore[no-any-return]

    def first_read_at(self) -> float | None:
        """time.monotonic() when the first read since the last reset() arrived, if one did."""
        return self._stats()["first_read_at"]  # type: ignore[no-any-return]

    def reset(self) -> None:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/_emulator/reset", data=b"{}", method="POST"
        )
        urllib.request.urlopen(req, timeout=5).read()

    def switches(self, **body: Any) -> None:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/_emulator/faults",
            data=json.dumps(body).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        urllib.request.urlopen(req, timeout=5).read()

    def files(self) -> list[dict[str, Any]]:
        """Every file of the workspace (walks folders), as node objects."""
        out, folders = [], ["root"]
        while folders:
            folder = folders.pop()
            cursor = None
            while True:
                query = f"?page_size=500{'&cursor=' + cursor if cursor else ''}"
                page = self.get(f"/workspace/{WS}/storage/{folder}/list/{query}")
                for node in page["nodes"]["items"]:
                    (folders.append(node["id"]) if node["type"] == "folder" else out.append(node))
                cursor = page.get("next_cursor")
                if not cursor:
                    break
        return out

    def read_urls(self, files: list[dict[str, Any]]) -> list[tuple[str, str]]:
        """Pre-minted ``/read/?token=`` URLs for the peers (minted before any timing starts)."""
        urls = []
        for node in files:
            token = self.get(f"/workspace/{WS}/storage/{node['id']}/requestread/")["token"]
            urls.append(
                (
                    f"{self.api_base}/workspace/{WS}/storage/{node['id']}/read/?token={token}",
                    node["name"],
                )
            )
        return urls

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@dataclass
class Run:
    tool: str
    exit: int
    wall: float
    cpu: float
    peak_mb: float
    began: float = 0.0  # time.monotonic() at the start
    first_read: float | None = None  # seconds from the start to the server's first read
    reads: int | None = None  # /read/ requests the emulator saw during the run


GNU_TIME = "/usr/bin/time"  # Debian's package 'time'


def run_measured(tool: str, argv: list[str], cwd: Path | None = None) -> Run:
    """Run argv; wall time, the child's CPU seconds (wait4) and its peak RSS (GNU time).

    Dirty pages left by the previous run are flushed first, so that no tool pays for another's
    writeback.

    The peak comes from GNU time, which forks the tool from its own small process: a child
    forked from this script starts with this script's resident set as its high-water mark
    (the kernel records it at exec), so wait4's own figure is never below this script's size
    (42 MB here, 177 MB after B5's manifest was built). Without /usr/bin/time the figure is
    that upper bound."""
    os.sync()
    timer = GNU_TIME if os.access(GNU_TIME, os.X_OK) else None
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as peak_file:
        wrapped = [timer, "-q", "-f", "%M", "-o", peak_file.name, *argv] if timer else argv
        began = time.monotonic()
        proc = subprocess.Popen(
            wrapped, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=cwd
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - began
        peak_kb = usage.ru_maxrss
        lines = peak_file.read().split()
        if timer and lines and lines[-1].isdigit():
            peak_kb = int(lines[-1])
    return Run(
        tool,
        os.waitstatus_to_exitcode(status),
        wall,
        usage.ru_utime + usage.ru_stime,  # the tool's (GNU time waits for it) and GNU time's
        peak_kb / 1024,
        began,
    )


# How long freed inodes slow down new files on ext4 without a journal (see B7), and when this
# script last deleted files; at start, whatever ran before may have just done so.
DELETED_WINDOW = 335.0
_deleted_at = time.monotonic()


def remove_tree(path: Path) -> None:
    global _deleted_at
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)
        _deleted_at = time.monotonic()


def last_deletion() -> float:
    return _deleted_at


def fresh_dir(path: Path) -> Path:
    remove_tree(path)
    path.mkdir(parents=True)
    return path


def median(runs: list[Run], attr: str) -> float:
    return float(statistics.median(getattr(r, attr) for r in runs))


def require(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise SystemExit(
            f"{tool} is missing: install it with `apt-get install {package}` and run again"
        )
    return path


def fastio_args(emulator: EmulatorProcess) -> list[str]:
    return ["--api-base", emulator.api_base, "--token", DEFAULT_TOKEN, "--progress", "none"]


def fastio_get(emulator: EmulatorProcess, dest: Path | str, *extra: str) -> list[str]:
    """``fastio-dl get`` of the emulator's whole workspace into ``dest``."""
    return [*FASTIO_DL, "get", f"ws:{WS}/root", "-d", str(dest), *extra, *fastio_args(emulator)]
