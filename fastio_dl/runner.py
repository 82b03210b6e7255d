"""Runs of the engine, for Python programs and the CLI alike: download and sync.

The CLI parses options into :class:`~fastio_dl.config.Settings` and calls these functions; so
can any program (``fastio_dl`` re-exports them, with blocking twins). Nothing here prints:
events go to the reporter or callback given, and the outcome comes back typed. Bad input
(no token, a reference that does not parse, a destination another sync holds) raises a
:class:`~fastio_dl.errors.FastioDlError`; what happens to each file is in the outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from fastio_dl.client import FastioClient
from fastio_dl.config import DEFAULT_WAIT_LOCK, Settings
from fastio_dl.errors import missing_token_error
from fastio_dl.events import Event, Fanout, Notice, Recorder, Reporter
from fastio_dl.manifest import Manifest, parse_manifest, read_manifest
from fastio_dl.models import Outcome, Target
from fastio_dl.policy import LocalPolicy, SyncPolicy
from fastio_dl.refs import parse_ref
from fastio_dl.reporting import NullReporter
from fastio_dl.state import State
from fastio_dl.syncing import (
    DeleteLimit,
    DryRunTally,
    SyncReport,
    destination_lock,
    finish_sync,
    state_path,
    write_failed_manifest,
)
from fastio_dl.transfer import Engine

EventCallback = Callable[[Event], None]


class Stopper:
    """Stops a run from outside, as Ctrl-C does: no new file starts, transfers in flight end
    (their partial files are kept for the next run), and the run returns its outcome with
    ``interrupted`` set. Safe to call before the run starts or after it ended."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._engine: Engine | None = None

    def stop(self, reason: str = "interrupted") -> None:
        if self.reason is None:
            self.reason = reason
        if self._engine is not None:
            self._engine.interrupt(reason)

    def attach(self, engine: Engine | None) -> None:
        self._engine = engine
        if engine is not None and self.reason is not None:
            engine.interrupt(self.reason)


@dataclass
class SyncResult:
    """A sync's outcome, and what it then found in the destination (``None`` when the run was
    interrupted or stopped by an error, which leaves the destination's tracked files alone)."""

    outcome: Outcome
    report: SyncReport | None

    @property
    def notes(self) -> list[str]:
        """Lines for people: files gone from the remote, deletions, the dry run's summary."""
        return self.report.lines if self.report is not None else []


async def download_async(
    refs: Iterable[str | Target],
    settings: Settings,
    *,
    reporter: Reporter | None = None,
    on_event: EventCallback | None = None,
    stopper: Stopper | None = None,
    record: bool = True,
) -> Outcome:
    """Download files and whole folders into ``settings.dest``.

    ``refs`` are what ``fastio-dl get`` takes (node ids, ``ws:``/``share:`` references, URLs)
    or :class:`~fastio_dl.models.Target` objects. Every event goes to ``reporter`` and to
    ``on_event``; with ``record`` the outcome lists every file's result in ``files``.
    """
    targets = [
        r
        if isinstance(r, Target)
        else Target(parse_ref(r, workspace=settings.workspace, share=settings.share))
        for r in refs
    ]
    return await run_engine(
        settings, targets, _sink(reporter, on_event), stopper=stopper, record=record
    )


def download(
    refs: Iterable[str | Target],
    settings: Settings,
    *,
    reporter: Reporter | None = None,
    on_event: EventCallback | None = None,
    stopper: Stopper | None = None,
    record: bool = True,
) -> Outcome:
    """:func:`download_async` in an event loop of its own (not from inside a running one)."""
    return asyncio.run(
        download_async(
            refs, settings, reporter=reporter, on_event=on_event, stopper=stopper, record=record
        )
    )


async def sync_async(
    manifest: Manifest | str | Path,
    settings: Settings,
    *,
    delete: bool = False,
    max_delete: DeleteLimit | None = None,
    dry_run: bool = False,
    wait_lock: float = DEFAULT_WAIT_LOCK,
    failed_manifest: Path | None = None,
    reporter: Reporter | None = None,
    on_event: EventCallback | None = None,
    stopper: Stopper | None = None,
    record: bool = True,
) -> SyncResult:
    """Bring ``settings.dest`` up to date with a manifest, as ``fastio-dl sync`` does.

    ``manifest`` is a parsed :class:`~fastio_dl.manifest.Manifest` or the path of a manifest
    file. One sync per destination at a time: another one's lock is waited for up to
    ``wait_lock`` seconds, then :class:`~fastio_dl.errors.LockedError` is raised. With
    ``record`` the outcome lists every file's result in ``files``.
    """
    if not isinstance(manifest, Manifest):
        text, name = read_manifest(str(manifest))
        manifest = parse_manifest(text, name, workspace=settings.workspace, share=settings.share)
    require_token(settings, manifest.targets)
    dest = settings.dest
    dest.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        # The wait for another sync's lock happens in a thread: the event loop stays free.
        await asyncio.to_thread(stack.enter_context, destination_lock(dest, wait_lock))
        state = State(state_path(dest))
        stack.callback(state.close)
        tracked = state.count()
        tally = DryRunTally()
        policy = SyncPolicy(state, dry_run=dry_run, fsync_each=settings.fsync == "each")
        sink = _sink(reporter, on_event)
        outcome = await run_engine(
            settings,
            manifest.targets,
            Fanout(sink, tally) if dry_run else sink,
            policy=policy,
            dry_run=dry_run,
            stopper=stopper,
            record=record,
        )
        if failed_manifest is not None:
            write_failed_manifest(failed_manifest, manifest.lines, outcome.failed_targets)
        if outcome.interrupted or outcome.fatal is not None:
            return SyncResult(outcome, None)
        report = finish_sync(
            dest,
            state,
            outcome.planned_paths,
            outcome.plan_failures,
            tally,
            delete=delete,
            max_delete=max_delete or DeleteLimit(),
            dry_run=dry_run,
            tracked=tracked,
            shard=settings.shard,
        )
        return SyncResult(outcome, report)


def sync(
    manifest: Manifest | str | Path,
    settings: Settings,
    *,
    delete: bool = False,
    max_delete: DeleteLimit | None = None,
    dry_run: bool = False,
    wait_lock: float = DEFAULT_WAIT_LOCK,
    failed_manifest: Path | None = None,
    reporter: Reporter | None = None,
    on_event: EventCallback | None = None,
    stopper: Stopper | None = None,
    record: bool = True,
) -> SyncResult:
    """:func:`sync_async` in an event loop of its own (not from inside a running one)."""
    return asyncio.run(
        sync_async(
            manifest,
            settings,
            delete=delete,
            max_delete=max_delete,
            dry_run=dry_run,
            wait_lock=wait_lock,
            failed_manifest=failed_manifest,
            reporter=reporter,
            on_event=on_event,
            stopper=stopper,
            record=record,
        )
    )


async def run_engine(
    settings: Settings,
    targets: list[Target],
    reporter: Reporter,
    *,
    policy: LocalPolicy | None = None,
    dry_run: bool = False,
    stopper: Stopper | None = None,
    record: bool = False,
) -> Outcome:
    """One engine run over one client session; the reporter is not closed here."""
    require_token(settings, targets)
    recorder = Recorder() if record else None
    if recorder is not None:
        reporter = Fanout(reporter, recorder)
    connections = settings.concurrency * max(2, settings.segments) + 8
    async with FastioClient.open(settings, max_connections=connections) as client:
        _pass_warnings(client, reporter)
        engine = Engine(settings, client, reporter, policy, dry_run=dry_run)
        if stopper is not None:
            stopper.attach(engine)
        try:
            outcome = await engine.run(targets)
        finally:
            _pass_warnings(client, reporter)
            if stopper is not None:
                stopper.attach(None)
    if recorder is not None:
        outcome.files = recorder.finished()
    return outcome


def require_token(settings: Settings, targets: list[Target]) -> None:
    """An API token, unless every target is a File Share (such a link may be public)."""
    if settings.token is None and any(t.ref.context != "fileshare" for t in targets):
        raise missing_token_error()


def _pass_warnings(client: FastioClient, reporter: Reporter) -> None:
    """The client's warnings (a renewed login it could not store) as notices, once each."""
    while client.warnings:
        reporter.emit(Notice("warning", client.warnings.pop(0)))


class _Callback:
    """A plain function as a reporter."""

    def __init__(self, on_event: EventCallback) -> None:
        self.emit = on_event

    def close(self) -> None:
        pass


def _sink(reporter: Reporter | None, on_event: EventCallback | None) -> Reporter:
    parts = [r for r in (reporter, _Callback(on_event) if on_event else None) if r is not None]
    if not parts:
        return NullReporter()
    return parts[0] if len(parts) == 1 else Fanout(*parts)
