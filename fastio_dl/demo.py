"""``fastio-dl demo``: the bundled emulator with sample data, downloaded for real over loopback."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastio_dl.config import Secret, Settings
from fastio_dl.emulator import (
    DEFAULT_TOKEN,
    DatasetSpec,
    EmulatorThread,
    Fault,
    SeededBlob,
    Switches,
    build,
)
from fastio_dl.events import Reporter
from fastio_dl.models import Outcome
from fastio_dl.runner import Stopper, download_async

DEMO_BANDWIDTH = 6 * 1024 * 1024  # per connection: slow enough to watch the panel


def run_demo(
    dest: Path,
    *,
    files: int,
    concurrency: int,
    make_reporter_for: Callable[[Settings], Reporter],
    run: Callable[[Callable[[Stopper], Awaitable[Outcome]]], Outcome],
    keep: bool,
) -> int:
    """Serve a sample workspace and download it with the library's :func:`download_async`;
    ``run`` runs that in the CLI's event loop with Ctrl-C wired to the stopper."""
    switches = Switches(
        latency=0.005,
        bandwidth=DEMO_BANDWIDTH,
        faults=[
            # A few of the things a real network does, so the demo shows retries and resume.
            Fault("drop", after_bytes=300_000, times=2, min_size=1_000_000),
            Fault("server_error", endpoint="read", status=503, times=2),
            Fault("rate_limit", endpoint="api", times=1, retry_after=0.5),
        ],
    )
    emulator, space = build(
        DatasetSpec(files=files, depth=2, fanout=3, min_size=1024, max_size=1_500_000, seed=42),
        switches=switches,
    )
    space.add_file("root", "big-dataset.tar", SeededBlob(4242, 16 * 1024 * 1024))
    with EmulatorThread(emulator) as server:
        settings = Settings(
            api_base=server.api_base,
            token=Secret(DEFAULT_TOKEN),
            dest=dest,
            concurrency=concurrency,
            backoff_initial=0.2,
            max_retry_wait=2.0,
        )
        print(
            f"demo: emulator on {server.base_url}, workspace {space.id}: "
            f"{sum(1 for _ in space.files())} files; downloading to {dest}",
            file=sys.stderr,
        )
        reporter = make_reporter_for(settings)
        refs = [f"ws:{space.id}/root"]
        try:
            outcome = run(
                lambda stopper: download_async(
                    refs, settings, reporter=reporter, stopper=stopper, record=False
                )
            )
        finally:
            reporter.close()
        expected = {space.path_of(n.id): n for n in space.files()}
        checked = _verify(dest, expected)
    print(
        f"demo: {checked} of {len(expected)} files verified byte-identical (sha256) in {dest}"
        + ("" if keep else " (temporary; pass -d DIR to keep them)"),
        file=sys.stderr,
    )
    if outcome.interrupted:
        return 130
    return 0 if checked == len(expected) and not outcome.failed else 1


def _verify(dest: Path, expected: dict[str, Any]) -> int:
    good = 0
    for relpath, node in expected.items():
        path = dest / relpath
        if not path.is_file():
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest == node.blob.digest("sha256"):
            good += 1
    return good
