"""Shared fixtures: a clean environment, the emulator in a thread, and a CLI runner."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fastio_dl.cli import app
from fastio_dl.emulator import DEFAULT_TOKEN, DatasetSpec, Emulator, EmulatorThread, Space, build


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No token, proxy or config from the developer's machine leaks into a test."""
    import os

    for name in list(os.environ):
        if name.startswith(("FASTIO_", "SSL_CERT")) or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("NO_COLOR", "1")


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def files(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["event"] == "file"]

    def summary(self) -> dict[str, Any]:
        return [r for r in self.records() if r["event"] == "summary"][-1]


@dataclass
class Served:
    """A running emulator plus helpers to drive the real CLI against it."""

    server: EmulatorThread
    emulator: Emulator
    space: Space

    @property
    def ws(self) -> str:
        return self.space.id

    def cli(
        self,
        *args: str,
        token: str | None = DEFAULT_TOKEN,
        input: str | None = None,
        fast_retries: bool = True,
    ) -> CliResult:
        argv = list(args)
        if argv and argv[0] in ("get", "sync", "ls"):
            argv += ["--api-base", self.server.api_base]
            if token:
                argv += ["--token", token]
        if argv and argv[0] in ("get", "sync"):
            if "--progress" not in argv:
                argv += ["--progress", "plain"]
            if fast_retries:
                argv += ["--backoff", "0.01", "--max-retry-wait", "0.5"]
        result = CliRunner().invoke(app, argv, input=input, catch_exceptions=False)
        return CliResult(result.exit_code, result.stdout, result.stderr)

    def reset_after_kill(self) -> None:
        """Zero the counters once every read of a killed or interrupted client has ended (at
        most 10 s): a handler that had not yet seen its client go would count its last chunk
        against the next run."""
        deadline = time.monotonic() + 10
        while self.emulator.open_reads and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.emulator.open_reads == 0, "reads of the stopped client did not end"
        self.server.call(self.emulator.reset_counters)

    def argv(self, *args: str) -> list[str]:
        """The real CLI as a child process (for signals, kills and terminals), pointed here."""
        import sys

        return [
            sys.executable,
            "-m",
            "fastio_dl",
            *args,
            "--api-base",
            self.server.api_base,
            "--token",
            DEFAULT_TOKEN,
        ]

    def expected(self) -> dict[str, str]:
        """Remote relative path -> sha256 of every file in the workspace."""
        return {self.space.path_of(n.id): n.blob.digest("sha256") for n in self.space.files()}

    def stat(self, name: str) -> int:
        return int(self.emulator.counters.get(name, 0))


async def let_tasks_run() -> None:
    """Every task that can go on runs until it waits (the event loop goes round a few times)."""
    for _ in range(10):
        await asyncio.sleep(0)


def tree_digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def files_only(root: Path) -> dict[str, str]:
    """:func:`tree_digests` without fastio-dl's own state directory."""
    return {k: v for k, v in tree_digests(root).items() if not k.startswith(".fastio-dl/")}


def write_manifest(path: Path, lines: list[str]) -> Path:
    """A manifest of ``lines`` at ``path``; its first line is a comment, its second blank."""
    path.write_text("# test manifest\n\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def make_served() -> Iterator[Any]:
    servers: list[EmulatorThread] = []

    def factory(spec: DatasetSpec | None = None, **kwargs: Any) -> Served:
        emulator, space = build(
            spec or DatasetSpec(files=20, depth=1, fanout=2, max_size=32 * 1024), **kwargs
        )
        server = EmulatorThread(emulator).start()
        servers.append(server)
        return Served(server, emulator, space)

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def served(make_served: Any) -> Served:
    return make_served()  # type: ignore[no-any-return]
