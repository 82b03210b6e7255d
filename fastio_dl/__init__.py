"""fastio-dl: concurrent, verified, resumable downloads from Fast.io workspaces and shares.

Use from Python::

    import fastio_dl

    settings = fastio_dl.Settings(token="...", dest=Path("mirror"))
    outcome = fastio_dl.download(["ws:WORKSPACE/root"], settings)  # or: await download_async
    print(outcome.downloaded, outcome.failed, [f.path for f in outcome.files])

:func:`download` and :func:`sync` (and their ``_async`` twins) take the same settings as the
command line, send events to a reporter or an ``on_event`` callback, and return a typed outcome.
The names below are imported on first use, so ``import fastio_dl`` (and the command's start-up)
does not pay for the engine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from fastio_dl.config import Settings
    from fastio_dl.errors import FastioDlError
    from fastio_dl.events import Event, FileFinished, Kind
    from fastio_dl.manifest import Manifest
    from fastio_dl.models import Outcome, Target
    from fastio_dl.runner import (
        Stopper,
        SyncResult,
        download,
        download_async,
        sync,
        sync_async,
    )

_EXPORTS = {
    "Settings": "fastio_dl.config",
    "FastioDlError": "fastio_dl.errors",
    "Event": "fastio_dl.events",
    "FileFinished": "fastio_dl.events",
    "Kind": "fastio_dl.events",
    "Manifest": "fastio_dl.manifest",
    "Outcome": "fastio_dl.models",
    "Target": "fastio_dl.models",
    "Stopper": "fastio_dl.runner",
    "SyncResult": "fastio_dl.runner",
    "download": "fastio_dl.runner",
    "download_async": "fastio_dl.runner",
    "sync": "fastio_dl.runner",
    "sync_async": "fastio_dl.runner",
}

__all__ = [
    "Event",
    "FastioDlError",
    "FileFinished",
    "Kind",
    "Manifest",
    "Outcome",
    "Settings",
    "Stopper",
    "SyncResult",
    "Target",
    "__version__",
    "download",
    "download_async",
    "sync",
    "sync_async",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastio_dl' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
