"""Renderers of engine events: rich live panel, plain lines, JSON lines, nothing.

Only this package imports rich. Human text goes to stderr; ``--json`` results go to stdout.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, TextIO, cast

from fastio_dl.errors import UsageError
from fastio_dl.events import Event, Fanout, Reporter
from fastio_dl.reporting.jsonl import JsonProgress, JsonResults
from fastio_dl.reporting.plain import PlainReporter

if TYPE_CHECKING:
    from fastio_dl.config import Settings

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


def make_console_reporter(
    mode: str,
    *,
    json_results: bool,
    quiet: bool,
    settings: Settings,
    output_closed: Callable[[], None],
) -> Reporter:
    """A run's reporter on this process's standard streams (``output_closed`` is called when
    one loses its reader), and on ``settings.log_file`` too when set."""
    from fastio_dl.reporting.pipe import WatchedStream

    secrets = frozenset({settings.token} if settings.token else set())
    reporter = make_reporter(
        mode,
        stderr=cast(TextIO, WatchedStream(sys.stderr, output_closed)),
        stdout=cast(TextIO, WatchedStream(sys.stdout, output_closed)),
        json_results=json_results,
        quiet=quiet,
        debug=settings.debug,
        secrets=secrets,
    )
    if settings.log_file is not None:
        from fastio_dl.reporting.plain import LogFileReporter

        try:
            log = LogFileReporter(settings.log_file, secrets=secrets)
        except OSError as exc:
            raise UsageError(
                f"cannot open --log-file {settings.log_file}: {exc.strerror}"
            ) from None
        reporter = Fanout(reporter, log)
    return reporter


__all__ = [
    "PROGRESS_MODES",
    "NullReporter",
    "ProgressMode",
    "make_console_reporter",
    "make_reporter",
]
