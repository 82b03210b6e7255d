"""A local Fast.io emulator: a real aiohttp server on 127.0.0.1 (see ``server.py`` for its parts).

Typical use::

    from fastio_dl.emulator import build, EmulatorThread
    emulator, space = build(DatasetSpec(files=50))
    with EmulatorThread(emulator) as server:
        ...  # point fastio-dl at server.api_base with token DEFAULT_TOKEN
"""

from __future__ import annotations

from pathlib import Path

from fastio_dl.emulator.data import (
    BytesBlob,
    DatasetSpec,
    Node,
    SeededBlob,
    Space,
    Store,
    generate,
    load_directory,
)
from fastio_dl.emulator.server import DEFAULT_TOKEN, Emulator
from fastio_dl.emulator.switches import LIST_SHAPES, Fault, Refusal, Switches
from fastio_dl.emulator.thread import HOST, EmulatorThread

DEMO_WORKSPACE_ID = "3867689418901071163"


def build(
    spec: DatasetSpec | None = None,
    *,
    directory: Path | None = None,
    switches: Switches | None = None,
    workspace_id: str = DEMO_WORKSPACE_ID,
    name: str = "general",
) -> tuple[Emulator, Space]:
    """An emulator with one workspace filled from ``directory`` or a generated data set."""
    store = Store(seed=(spec.seed if spec else 1))
    space = store.add_space("workspace", name, workspace_id)
    if directory is not None:
        load_directory(space, directory)
    else:
        generate(space, spec or DatasetSpec())
    return Emulator(store, switches), space


__all__ = [
    "DEFAULT_TOKEN",
    "DEMO_WORKSPACE_ID",
    "HOST",
    "LIST_SHAPES",
    "BytesBlob",
    "DatasetSpec",
    "Emulator",
    "EmulatorThread",
    "Fault",
    "Node",
    "Refusal",
    "SeededBlob",
    "Space",
    "Store",
    "Switches",
    "build",
]
