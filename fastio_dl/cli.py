"""The Typer CLI: parse arguments, build settings, call ``asyncio.run`` once, map the exit code.

The only module that imports typer and calls ``asyncio.run``.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from fastio_dl import __version__
from fastio_dl.client import FastioClient
from fastio_dl.config import Settings, load_settings
from fastio_dl.errors import AuthError, ExitCode, FastioDlError, UsageError, redact
from fastio_dl.events import Fanout, Notice, Recorder, Reporter
from fastio_dl.manifest import ManifestError, parse_manifest
from fastio_dl.planner import Target
from fastio_dl.refs import parse_ref
from fastio_dl.reporting import PROGRESS_MODES, make_reporter
from fastio_dl.transfer import Engine, LocalPolicy, Outcome

app = typer.Typer(
    name="fastio-dl",
    help="Fast, verified, resumable bulk downloads from Fast.io workspaces and shares.",
    pretty_exceptions_enable=False,  # locals may hold tokens
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# ----------------------------------------------------------------------------- shared options

DestOpt = Annotated[Path, typer.Option("-d", "--dest", help="Destination directory.")]
WorkspaceOpt = Annotated[
    str | None, typer.Option("-w", "--workspace", help="Default workspace for bare node ids.")
]
ShareOpt = Annotated[str | None, typer.Option("-s", "--share", help="Default share for bare node ids.")]
ConcurrencyOpt = Annotated[
    int, typer.Option("-j", "--concurrency", min=1, max=256, help="Files transferred at once.")
]
RetriesOpt = Annotated[int, typer.Option("--retries", min=0, max=100, help="Retries per file and API call.")]
StallOpt = Annotated[
    float, typer.Option("--stall-timeout", min=0.1, help="Seconds without a byte before a read is retried.")
]
BackoffOpt = Annotated[
    float, typer.Option("--backoff", min=0.0, help="First retry wait in seconds (doubles, with jitter).")
]
MaxWaitOpt = Annotated[
    float, typer.Option("--max-retry-wait", min=0.0, help="Cap on any single retry wait, in seconds.")
]
ProgressOpt = Annotated[
    str,
    typer.Option(
        "--progress",
        help="auto (live panel on a terminal, plain lines otherwise), rich, plain, json or none.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Write one JSON object per file, then a summary, to stdout.")]
QuietOpt = Annotated[bool, typer.Option("-q", "--quiet", help="Print only errors and the final summary.")]
NoClobberOpt = Annotated[
    bool, typer.Option("--no-clobber", help="Keep an existing local file that differs from the remote.")
]
TokenOpt = Annotated[
    str | None, typer.Option("--token", help="API token (else FASTIO_TOKEN, FASTIO_API_KEY).", show_default=False)
]
ApiBaseOpt = Annotated[
    str | None, typer.Option("--api-base", help="API base URL (else FASTIO_API_BASE).", show_default=False)
]
CaBundleOpt = Annotated[
    Path | None, typer.Option("--ca-bundle", help="PEM file of CAs to trust (else SSL_CERT_FILE).")
]
ReadModeOpt = Annotated[
    str,
    typer.Option(
        "--read-mode",
        help="auto: read with the API token, minting a read token only if refused; token: mint a "
        "read token per file; bearer: the API token only.",
    ),
]
SegmentsOpt = Annotated[
    int, typer.Option("--segments", min=1, max=32, help="Ranged connections per large file (1: one stream).")
]
SegmentThresholdOpt = Annotated[
    str, typer.Option("--segment-threshold", help="Files at least this large use --segments (e.g. 64M).")
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug notices.")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fastio-dl {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Fast, verified, resumable bulk downloads from Fast.io workspaces and shares."""


# ----------------------------------------------------------------------------- error handling


def _fail(message: str, hint: str | None, code: int) -> NoReturn:
    # One line: what is wrong, then what to do about it.
    line = f"fastio-dl: error: {redact(message)}"
    if hint:
        line += f"; {hint}"
    typer.echo(line, err=True)
    raise typer.Exit(code)


def guarded(debug: bool, body: Callable[[], int]) -> NoReturn:
    """Run a command body: known errors become one line + exit code; no traceback unless --debug."""
    try:
        code = body()
    except ManifestError as exc:
        for problem in exc.problems:  # each on its own line: MANIFEST:LINE: what is wrong
            typer.echo(problem, err=True)
        raise typer.Exit(int(exc.exit_code)) from None
    except FastioDlError as exc:
        if debug:
            _print_traceback()
        _fail(exc.message, exc.hint, int(exc.exit_code))
    except KeyboardInterrupt:
        typer.echo("fastio-dl: interrupted", err=True)
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    except typer.Exit:
        raise
    except Exception as exc:
        if debug:
            _print_traceback()
            _fail(f"unexpected {type(exc).__name__}: {exc}", None, 1)
        _fail(f"unexpected {type(exc).__name__}: {exc}", "run again with --debug for a traceback", 1)
    raise typer.Exit(code)


def _print_traceback() -> None:
    # Tracebacks can quote URLs and headers: they pass through the same redaction as any line.
    typer.echo(redact(traceback.format_exc()), err=True)


def read_ref_lines(values: Iterable[str]) -> list[str]:
    """Expand ``-`` into the references read from stdin (one per line, # comments allowed)."""
    out: list[str] = []
    for value in values:
        if value == "-":
            for line in sys.stdin.read().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    out.append(line)
        else:
            out.append(value)
    return out


def check_progress(mode: str) -> str:
    if mode not in PROGRESS_MODES:
        raise UsageError(f"--progress must be one of {', '.join(PROGRESS_MODES)}, not {mode!r}")
    return mode


_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str, option: str) -> int:
    """``64M``, ``1.5G``, ``500K``, ``1048576`` (binary units; ``MiB``/``MB`` read the same)."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    try:
        number = float(value[: len(value) - len(unit)] if unit else value)
    except ValueError:
        raise UsageError(f"{option} takes a size like 64M or 1G, not {text!r}") from None
    if number < 0:
        raise UsageError(f"{option} must not be negative")
    return int(number * _UNITS[unit])


def check_read_mode(mode: str) -> str:
    if mode not in ("auto", "token", "bearer"):
        raise UsageError(f"--read-mode must be auto, token or bearer, not {mode!r}")
    return mode


# ----------------------------------------------------------------------------- running the engine


def run_engine(
    settings: Settings,
    targets: list[Target],
    reporter: Reporter,
    *,
    policy: LocalPolicy | None = None,
    dry_run: bool = False,
    setup: Callable[[], Any] | None = None,
) -> Outcome:
    """Run the engine once under ``asyncio.run`` with SIGINT/SIGTERM wired to a clean stop."""
    if settings.token is None:
        raise AuthError(
            "no API token",
            "pass --token, or set FASTIO_TOKEN or FASTIO_API_KEY",
        )
    received: list[int] = []

    async def go() -> Outcome:
        connections = settings.concurrency * max(2, settings.segments) + 8
        async with FastioClient.open(settings, max_connections=connections) as client:
            engine = Engine(settings, client, reporter, policy, dry_run=dry_run)
            loop = asyncio.get_running_loop()

            def on_signal(signum: int) -> None:
                if received:
                    os._exit(128 + signum)  # second signal: leave at once
                received.append(signum)
                engine.interrupt("interrupted")

            installed = []
            for signum in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(signum, on_signal, signum)
                    installed.append(signum)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass  # not the main thread (tests) or not supported
            try:
                return await engine.run(targets)
            finally:
                for signum in installed:
                    loop.remove_signal_handler(signum)

    _tune_malloc()
    # Everything imported so far lives for the whole run: keep it out of the collector's scans
    # (full collections over typer/pydantic/aiohttp objects showed up in B2 profiles).
    gc.freeze()
    try:
        outcome = asyncio.run(go(), loop_factory=_loop_factory()) if sys.version_info >= (3, 12) \
            else _run_311(go())
    finally:
        reporter.close()
    if received:
        outcome.interrupted = True
        outcome.signal = received[0]  # type: ignore[attr-defined]
    return outcome


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (``pip install 'fastio-dl[speed]'``): measurably less CPU per file."""
    if os.environ.get("FASTIO_DL_NO_UVLOOP"):
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def _tune_malloc() -> None:
    """Keep freed receive buffers in the heap instead of returning them to the OS.

    Bodies arrive as ~256 KiB bytes objects; glibc would mmap/munmap or trim the heap for each
    batch, and re-faulting fresh pages cost up to 40% of wall time on 1 GiB downloads (measured
    with tests.benchmarks B2). Bounded: at most 64 MiB of free heap is kept.
    """
    if sys.platform != "linux":
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold, m_arena_max = -1, -3, -8
        libc.mallopt(m_arena_max, 2)  # writer threads need no heaps of their own
        libc.mallopt(m_mmap_threshold, 16 * 1024 * 1024)
        libc.mallopt(m_trim_threshold, 32 * 1024 * 1024)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def _run_311(main: Any) -> Any:
    factory = _loop_factory()
    if factory is None:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def exit_code_of(outcome: Outcome) -> int:
    if outcome.interrupted:
        return 128 + getattr(outcome, "signal", signal.SIGINT)
    if outcome.fatal is not None:
        raise outcome.fatal
    return int(ExitCode.FAILED if outcome.failed else ExitCode.OK)


def build_settings(**flags: Any) -> Settings:
    return load_settings(flags)


def make_run_reporter(progress: str, json_out: bool, quiet: bool, debug: bool, settings: Settings) -> Reporter:
    secrets = frozenset({settings.token} if settings.token else set())
    return make_reporter(
        check_progress(progress),
        stderr=sys.stderr,
        stdout=sys.stdout,
        json_results=json_out,
        quiet=quiet,
        debug=debug,
        secrets=secrets,
    )


# ----------------------------------------------------------------------------- commands


@app.command()
def get(
    refs: Annotated[
        list[str],
        typer.Argument(help="Node ids, ws:/share: references or Fast.io URLs; - reads them from stdin.",
                       show_default=False),
    ],
    dest: DestOpt = Path("."),
    workspace: WorkspaceOpt = None,
    share: ShareOpt = None,
    concurrency: ConcurrencyOpt = 8,
    retries: RetriesOpt = 5,
    stall_timeout: StallOpt = 60.0,
    backoff: BackoffOpt = 1.0,
    max_retry_wait: MaxWaitOpt = 300.0,
    progress: ProgressOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    no_clobber: NoClobberOpt = False,
    token: TokenOpt = None,
    api_base: ApiBaseOpt = None,
    ca_bundle: CaBundleOpt = None,
    read_mode: ReadModeOpt = "auto",
    segments: SegmentsOpt = 4,
    segment_threshold: SegmentThresholdOpt = "64M",
    debug: DebugOpt = False,
) -> None:
    """Download files and whole folders (recursively) into DEST."""

    def body() -> int:
        check_progress(progress)
        texts = read_ref_lines(refs)
        if not texts:
            raise UsageError("no references given", "pass node ids, ws:/share: references or URLs")
        parsed = [parse_ref(t, workspace=workspace, share=share) for t in texts]
        settings = build_settings(
            token=token, api_base=api_base, ca_bundle=ca_bundle, dest=dest, workspace=workspace,
            share=share, concurrency=concurrency, retries=retries, stall_timeout=stall_timeout,
            backoff_initial=backoff, max_retry_wait=max_retry_wait, no_clobber=no_clobber, debug=debug,
            read_mode=check_read_mode(read_mode), segments=segments,
            segment_threshold=parse_size(segment_threshold, "--segment-threshold"),
        )
        reporter = make_run_reporter(progress, json_out, quiet, debug, settings)
        outcome = run_engine(settings, [Target(r) for r in parsed], reporter)
        return exit_code_of(outcome)

    guarded(debug, body)


@app.command()
def demo(
    dest: Annotated[
        Path | None, typer.Option("-d", "--dest", help="Where to download (default: a temporary directory).")
    ] = None,
    files: Annotated[int, typer.Option("--files", min=1, help="Files in the sample workspace.")] = 150,
    concurrency: ConcurrencyOpt = 8,
    progress: ProgressOpt = "auto",
    debug: DebugOpt = False,
) -> None:
    """Start the bundled emulator with sample data and download it all, live panel and all."""
    from fastio_dl.demo import run_demo

    def body() -> int:
        check_progress(progress)
        with tempfile.TemporaryDirectory(prefix="fastio-dl-demo-") as tmp:
            target = dest or Path(tmp)
            return run_demo(
                target,
                files=files,
                concurrency=concurrency,
                make_reporter_for=lambda s: make_run_reporter(progress, False, False, debug, s),
                run=run_engine,
                keep=dest is not None,
            )

    guarded(debug, body)


@app.command()
def sync(
    manifest: Annotated[
        str, typer.Argument(help="Manifest file of 'REF [DEST]' lines, or - for stdin.", show_default=False)
    ],
    dest: DestOpt = Path("."),
    workspace: WorkspaceOpt = None,
    share: ShareOpt = None,
    concurrency: ConcurrencyOpt = 8,
    retries: RetriesOpt = 5,
    stall_timeout: StallOpt = 60.0,
    backoff: BackoffOpt = 1.0,
    max_retry_wait: MaxWaitOpt = 300.0,
    progress: ProgressOpt = "auto",
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    delete: Annotated[
        bool, typer.Option("--delete", help="Remove tracked files that left the manifest or the remote.")
    ] = False,
    max_delete: Annotated[
        int | None, typer.Option("--max-delete", min=0, help="Abort before deleting more than N files.")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would change; change nothing.")] = False,
    wait_lock: Annotated[
        float, typer.Option("--wait-lock", min=0.0, help="Seconds to wait for another sync's lock.")
    ] = 0.0,
    failed_manifest: Annotated[
        Path | None, typer.Option("--failed-manifest", help="Write the lines whose files failed here.")
    ] = None,
    allow_empty: Annotated[bool, typer.Option("--allow-empty", help="Accept a manifest with no lines.")] = False,
    token: TokenOpt = None,
    api_base: ApiBaseOpt = None,
    ca_bundle: CaBundleOpt = None,
    read_mode: ReadModeOpt = "auto",
    segments: SegmentsOpt = 4,
    segment_threshold: SegmentThresholdOpt = "64M",
    debug: DebugOpt = False,
) -> None:
    """Bring DEST up to date with a manifest: only new or changed files move."""
    from fastio_dl.state import State
    from fastio_dl.storage import human_bytes
    from fastio_dl.sync import SyncPolicy, delete_stale, destination_lock, stale_paths, state_path

    def body() -> int:
        check_progress(progress)
        text, name = _read_manifest(manifest)
        parsed = parse_manifest(text, name, workspace=workspace, share=share, allow_empty=allow_empty)
        settings = build_settings(
            token=token, api_base=api_base, ca_bundle=ca_bundle, dest=dest, workspace=workspace,
            share=share, concurrency=concurrency, retries=retries, stall_timeout=stall_timeout,
            backoff_initial=backoff, max_retry_wait=max_retry_wait, debug=debug,
            read_mode=check_read_mode(read_mode), segments=segments,
            segment_threshold=parse_size(segment_threshold, "--segment-threshold"),
        )
        if settings.token is None:
            raise AuthError("no API token", "pass --token, or set FASTIO_TOKEN or FASTIO_API_KEY")
        dest.mkdir(parents=True, exist_ok=True)
        with destination_lock(dest, wait_lock):
            state = State(state_path(dest))
            try:
                recorder = Recorder()
                reporter = Fanout(make_run_reporter(progress, json_out, quiet, debug, settings), recorder)
                policy = SyncPolicy(state, dry_run=dry_run)
                outcome = run_engine(settings, parsed.targets, reporter, policy=policy, dry_run=dry_run)
                if failed_manifest is not None:
                    _write_failed_manifest(failed_manifest, parsed.lines, outcome.failed_targets)
                if outcome.interrupted or outcome.fatal is not None:
                    return exit_code_of(outcome)
                code = exit_code_of(outcome)
                stale = stale_paths(state, outcome.planned_paths)
                say = (lambda line: typer.echo(line, err=True)) if not quiet else (lambda line: None)
                if stale and outcome.plan_failures:
                    say(f"not deleting or reporting {len(stale)} tracked file(s): part of the plan "
                        "failed, so the remote listing is incomplete")
                    stale = []
                if dry_run:
                    _dry_run_report(recorder, stale, delete, say, human_bytes)
                    return code
                if stale and not delete:
                    for relpath in stale:
                        say(f"gone from manifest or remote: {relpath} (kept; --delete removes it)")
                elif stale:
                    if max_delete is not None and len(stale) > max_delete:
                        typer.echo(
                            f"fastio-dl: error: {len(stale)} files would be deleted, over --max-delete "
                            f"{max_delete}; nothing deleted. Check the manifest, or raise --max-delete",
                            err=True,
                        )
                        return int(ExitCode.FAILED)
                    result = delete_stale(dest, state, stale)
                    for relpath in result.deleted:
                        say(f"deleted: {dest / relpath}")
                    for relpath in result.kept_modified:
                        say(f"kept {dest / relpath}: modified since fastio-dl wrote it; no longer tracked")
                return code
            finally:
                state.close()

    guarded(debug, body)


def _read_manifest(manifest: str) -> tuple[str, str]:
    if manifest == "-":
        return sys.stdin.read(), "<stdin>"
    path = Path(manifest)
    try:
        return path.read_text(encoding="utf-8"), manifest
    except FileNotFoundError:
        raise UsageError(f"manifest {manifest} does not exist", "give a manifest path or - for stdin") from None
    except UnicodeDecodeError:
        raise UsageError(f"manifest {manifest} is not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"cannot read manifest {manifest}: {exc.strerror}") from None


def _write_failed_manifest(path: Path, lines: dict[int, str], failed: list[Target]) -> None:
    numbers = sorted({t.line for t in failed if t.line is not None})
    text = "".join(f"{lines[n]}\n" for n in numbers)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _dry_run_report(
    recorder: Recorder, stale: list[str], delete: bool, say: Callable[[str], None],
    human_bytes: Callable[[float], str],
) -> None:
    counts = {"would download": [0, 0], "would replace": [0, 0], "would adopt": [0, 0]}
    for event in recorder.finished():
        for label, bucket in counts.items():
            if event.reason and label in event.reason:
                bucket[0] += 1
                bucket[1] += event.bytes
    parts = [f"{label.split()[1]} {n} ({human_bytes(b)})" for label, (n, b) in counts.items()]
    verb = "delete" if delete else "report as gone"
    say(f"dry run: would {', '.join(parts)}; {verb} {len(stale)}")
    for relpath in stale:
        say(f"dry run: would {verb}: {relpath}")


def entrypoint() -> None:
    app()


if __name__ == "__main__":
    entrypoint()
