"""Standard streams whose reader may go away (``fastio-dl get ... --json | head -1``)."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Callable
from typing import TextIO


class WatchedStream(io.TextIOBase):
    """Writes through to ``stream`` until its reader goes away (a broken pipe). Then, as with
    SIGPIPE for other tools, the run is told to stop (``on_closed``), and the descriptor is
    pointed at /dev/null so that every later write, ours or the interpreter's final flush,
    goes nowhere quietly instead of failing again."""

    def __init__(self, stream: TextIO, on_closed: Callable[[], None]) -> None:
        super().__init__()
        self._stream = stream
        self._on_closed = on_closed
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self._stream.write(text)
            except BrokenPipeError:
                self._broke()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._broke()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", None) or "utf-8"

    def _broke(self) -> None:
        self.broken = True
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._stream.fileno())
            finally:
                os.close(devnull)
        self._on_closed()
