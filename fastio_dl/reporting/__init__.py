"""Renderers of engine events: rich live panel, plain lines, JSON lines, nothing.

Only this package imports rich. Human text goes to stderr; ``--json`` results go to stdout.
"""

from __future__ import annotations

from typing import Literal, TextIO

from fastio_dl.events import Event, Fanout, Reporter
from fastio_dl.reporting.jsonl import JsonProgress, JsonResults
from fastio_dl.reporting.plain import PlainReporter

ProgressMode = Literal["auto", "rich", "plain", "json", "none"]
PROGRESS_MODES: tuple[str, ...] = ("auto", "rich", "plain", "json", "none")
DEFAULT_PROGRESS = PROGRESS_MODES[0]


class NullReporter:
    def emit(self, event: Event) -> None:
        pass

    def close(self) -> None:
        pass


def make_reporter(
    mode: str,
    *,
    stderr: TextIO,
    stdout: TextIO,
    json_results: bool,
    quiet: bool,
    debug: bool = False,
    secrets: frozenset[str] = frozenset(),
) -> Reporter:
    """Pick the progress renderer for ``mode`` and add the JSON results writer if asked."""
    reporters: list[Reporter] = []
    if quiet:
        reporters.append(PlainReporter(stderr, quiet=True, secrets=secrets))
    elif mode == "auto":
        mode = "rich" if stderr.isatty() else "plain"
    if not quiet:
        if mode == "rich":
            from fastio_dl.reporting.panel import RichPanel

            reporters.append(RichPanel(stderr, debug=debug, secrets=secrets))
        elif mode == "plain":
            reporters.append(PlainReporter(stderr, debug=debug, secrets=secrets))
        elif mode == "json":
            reporters.append(JsonProgress(stderr, secrets=secrets))
        elif mode == "none":
            reporters.append(PlainReporter(stderr, quiet=True, secrets=secrets, summary=False))
    if json_results:
        reporters.append(JsonResults(stdout, secrets=secrets))
    return reporters[0] if len(reporters) == 1 else Fanout(*reporters)


__all__ = ["PROGRESS_MODES", "NullReporter", "ProgressMode", "make_reporter"]
