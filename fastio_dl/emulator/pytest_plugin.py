"""Pytest fixtures for the emulator (registered as a pytest11 plugin by the package).

``fastio_emulator`` gives a running :class:`EmulatorThread` with a small generated workspace;
tests that need other data build their own with :func:`fastio_dl.emulator.build`.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fastio_dl.emulator import DatasetSpec, EmulatorThread, build


@pytest.fixture
def fastio_emulator() -> Iterator[EmulatorThread]:
    emulator, _space = build(DatasetSpec(files=20, depth=1, fanout=2, max_size=32 * 1024))
    with EmulatorThread(emulator) as server:
        yield server
