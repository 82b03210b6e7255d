"""The Typer CLI: parse arguments, build settings, run the event loop once, map the exit code.

With :mod:`fastio_dl.options` (the options themselves, their values and the settings built
from them), the only module that imports typer; the event loop starts in
:mod:`fastio_dl.process`. Every option also reads ``FASTIO_DL_<OPTION>`` from the environment
and a key of the config file; precedence is flag > environment > config file > default (Click's
own order for envvar and default_map).
"""

# No ``from __future__ import annotations`` here: typer reads every command's annotations on
# every run (typing.get_type_hints), and as strings each one costs an eval (~3 ms at start-up).
import json
import signal
import sys
import tempfile
import traceback
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from fastio_dl import __version__
from fastio_dl.client import FastioClient
from fastio_dl.config import (
    DEFAULT_BACKOFF_INITIAL,
    DEFAULT_CONCURRENCY,
    DEFAULT_DEST,
    DEFAULT_FSYNC,
    DEFAULT_MAX_RETRY_WAIT,
    DEFAULT_READ_MODE,
    DEFAULT_RETRIES,
    DEFAULT_SEGMENTS,
    DEFAULT_STALL_TIMEOUT,
    DEFAULT_WAIT_LOCK,
    EMPTY_CONFIG,
    ConfigFile,
    Settings,
    default_config_path,
    load_config_file,
)
from fastio_dl.errors import ExitCode, FastioDlError, UsageError, redact
from fastio_dl.events import Reporter
from fastio_dl.manifest import ManifestError, parse_manifest, read_manifest
from fastio_dl.models import Outcome, Target
from fastio_dl.options import (
    SEGMENT_THRESHOLD_TEXT,
    AllowEmptyOpt,
    ApiBaseOpt,
    BackoffOpt,
    CaBundleOpt,
    ConcurrencyOpt,
    ConfigOpt,
    DebugOpt,
    DeleteOpt,
    DestOpt,
    DoctorJsonOpt,
    DoctorRefArg,
    DryRunOpt,
    FailedManifestOpt,
    FsyncOpt,
    JsonOpt,
    LimitRateOpt,
    ListNotesOpt,
    ListRefArg,
    LogFileOpt,
    ManifestArg,
    ManifestOutOpt,
    MaxDeleteOpt,
    MaxWaitOpt,
    NoClobberOpt,
    NotesOpt,
    PasswordFileOpt,
    ProfileOpt,
    ProgressOpt,
    QuietOpt,
    ReadModeOpt,
    RecursiveOpt,
    RefsArg,
    RetriesOpt,
    SegmentsOpt,
    SegmentThresholdOpt,
    ShardOpt,
    ShareOpt,
    StallOpt,
    TokenOpt,
    VerifyDestArg,
    VerifyManifestArg,
    VersionOpt,
    VersionsOpt,
    WaitLockOpt,
    WorkspaceOpt,
    api_settings,
    check_choice,
    command_params,
    config_defaults,
    describe_config,
    read_ref_lines,
    transfer_settings,
)
from fastio_dl.process import Interrupts, leave_now, run_async
from fastio_dl.refs import parse_ref
from fastio_dl.reporting import DEFAULT_PROGRESS, PROGRESS_MODES, make_console_reporter
from fastio_dl.runner import require_token, run_engine, sync_async
from fastio_dl.syncing import parse_max_delete

T = TypeVar("T")

app = typer.Typer(
    name="fastio-dl",
    help="Fast, verified, resumable bulk downloads from Fast.io workspaces and shares.",
    pretty_exceptions_enable=False,  # locals may hold tokens
    no_args_is_help=True,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
config_app = typer.Typer(help="Show the effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@app.callback()
def main(
    ctx: typer.Context,
    version: VersionOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Fast, verified, resumable bulk downloads from Fast.io workspaces and shares."""
    params = command_params(ctx.command)
    try:
        path = config or default_config_path()[0]
        commands = {name: set(options) for name, options in params.items()}
        loaded = load_config_file(path, required=config is not None, commands=commands)
    except UsageError as exc:
        _fail(exc.message, exc.hint, int(exc.exit_code))
    ctx.obj = loaded  # the commands find it with config_file(ctx): no state outlives the run
    # Click ranks default_map below flags and environment variables: exactly what we want.
    ctx.default_map = config_defaults(params, loaded)


def config_file(ctx: typer.Context) -> ConfigFile:
    """The config file that :func:`main` loaded for this invocation."""
    return ctx.find_object(ConfigFile) or EMPTY_CONFIG


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
        _fail(
            f"unexpected {type(exc).__name__}: {exc}", "run again with --debug for a traceback", 1
        )
    raise typer.Exit(code)


def _print_traceback() -> None:
    # Tracebacks can quote URLs and headers: they pass through the same redaction as any line.
    typer.echo(redact(traceback.format_exc()), err=True)


# ----------------------------------------------------------------------------- running the engine


def make_run_reporter(
    values: dict[str, Any], settings: Settings, output_closed: Callable[[], None]
) -> Reporter:
    return make_console_reporter(
        values["progress"],
        json_results=values["json_out"],
        quiet=values["quiet"],
        settings=settings,
        output_closed=output_closed,
    )


def _echo_warnings(client: FastioClient) -> None:
    while client.warnings:
        typer.echo(f"fastio-dl: warning: {client.warnings.pop(0)}", err=True)


def exit_code_of(outcome: Outcome) -> int:
    if outcome.interrupted:
        return 128 + (outcome.signal or signal.SIGINT)
    if outcome.fatal is not None:
        raise outcome.fatal
    return int(ExitCode.FAILED if outcome.failed else ExitCode.OK)


def _say(quiet: bool) -> Callable[[str], None]:
    return (lambda line: None) if quiet else (lambda line: typer.echo(line, err=True))


# ----------------------------------------------------------------------------- get


@app.command()
def get(
    ctx: typer.Context,
    refs: RefsArg,
    dest: DestOpt = DEFAULT_DEST,
    workspace: WorkspaceOpt = None,
    share: ShareOpt = None,
    concurrency: ConcurrencyOpt = DEFAULT_CONCURRENCY,
    retries: RetriesOpt = DEFAULT_RETRIES,
    stall_timeout: StallOpt = DEFAULT_STALL_TIMEOUT,
    backoff: BackoffOpt = DEFAULT_BACKOFF_INITIAL,
    max_retry_wait: MaxWaitOpt = DEFAULT_MAX_RETRY_WAIT,
    progress: ProgressOpt = DEFAULT_PROGRESS,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    no_clobber: NoClobberOpt = False,
    notes: NotesOpt = False,
    password_file: PasswordFileOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    api_base: ApiBaseOpt = None,
    ca_bundle: CaBundleOpt = None,
    read_mode: ReadModeOpt = DEFAULT_READ_MODE,
    segments: SegmentsOpt = DEFAULT_SEGMENTS,
    segment_threshold: SegmentThresholdOpt = SEGMENT_THRESHOLD_TEXT,
    shard: ShardOpt = None,
    limit_rate: LimitRateOpt = None,
    log_file: LogFileOpt = None,
    fsync: FsyncOpt = DEFAULT_FSYNC,
    debug: DebugOpt = False,
) -> None:
    """Download files and whole folders (recursively) into DEST."""
    values = dict(locals())

    def body() -> int:
        settings = transfer_settings(values, config_file(ctx))
        texts = read_ref_lines(refs)
        if not texts:
            raise UsageError("no references given", "pass node ids, ws:/share: references or URLs")
        targets = [Target(parse_ref(t, workspace=workspace, share=share)) for t in texts]
        require_token(settings, targets)
        interrupts = Interrupts()
        reporter = make_run_reporter(values, settings, interrupts.output_closed)
        try:
            outcome = interrupts.run(
                lambda stopper: run_engine(settings, targets, reporter, stopper=stopper)
            )
        finally:
            reporter.close()
        return exit_code_of(interrupts.mark(outcome))

    guarded(debug, body)


# ----------------------------------------------------------------------------- sync


@app.command()
def sync(
    ctx: typer.Context,
    manifest: ManifestArg,
    dest: DestOpt = DEFAULT_DEST,
    workspace: WorkspaceOpt = None,
    share: ShareOpt = None,
    concurrency: ConcurrencyOpt = DEFAULT_CONCURRENCY,
    retries: RetriesOpt = DEFAULT_RETRIES,
    stall_timeout: StallOpt = DEFAULT_STALL_TIMEOUT,
    backoff: BackoffOpt = DEFAULT_BACKOFF_INITIAL,
    max_retry_wait: MaxWaitOpt = DEFAULT_MAX_RETRY_WAIT,
    progress: ProgressOpt = DEFAULT_PROGRESS,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    delete: DeleteOpt = False,
    max_delete: MaxDeleteOpt = None,
    dry_run: DryRunOpt = False,
    wait_lock: WaitLockOpt = DEFAULT_WAIT_LOCK,
    failed_manifest: FailedManifestOpt = None,
    allow_empty: AllowEmptyOpt = False,
    notes: NotesOpt = False,
    password_file: PasswordFileOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    api_base: ApiBaseOpt = None,
    ca_bundle: CaBundleOpt = None,
    read_mode: ReadModeOpt = DEFAULT_READ_MODE,
    segments: SegmentsOpt = DEFAULT_SEGMENTS,
    segment_threshold: SegmentThresholdOpt = SEGMENT_THRESHOLD_TEXT,
    shard: ShardOpt = None,
    limit_rate: LimitRateOpt = None,
    log_file: LogFileOpt = None,
    fsync: FsyncOpt = DEFAULT_FSYNC,
    debug: DebugOpt = False,
) -> None:
    """Bring DEST up to date with a manifest: only new or changed files move."""
    values = dict(locals())

    def body() -> int:
        settings = transfer_settings(values, config_file(ctx))
        limit = parse_max_delete(max_delete)
        text, name = read_manifest(manifest)
        parsed = parse_manifest(
            text, name, workspace=workspace, share=share, allow_empty=allow_empty
        )
        require_token(settings, parsed.targets)
        dest.mkdir(parents=True, exist_ok=True)  # before a --log-file inside it is opened
        interrupts = Interrupts()
        reporter = make_run_reporter(values, settings, interrupts.output_closed)
        try:
            result = interrupts.run(
                lambda stopper: sync_async(
                    parsed,
                    settings,
                    delete=delete,
                    max_delete=limit,
                    dry_run=dry_run,
                    wait_lock=wait_lock,
                    failed_manifest=failed_manifest,
                    reporter=reporter,
                    stopper=stopper,
                    record=False,
                )
            )
        finally:
            reporter.close()
        code = exit_code_of(interrupts.mark(result.outcome))
        if result.report is None:
            return code
        say = _say(quiet)
        for line in result.report.lines:
            (typer.echo(f"fastio-dl: {line}", err=True) if line.startswith("error") else say(line))
        return max(code, result.report.code)

    guarded(debug, body)


# ----------------------------------------------------------------------------- ls


@app.command("ls")
def list_command(
    ctx: typer.Context,
    ref: ListRefArg,
    recursive: RecursiveOpt = False,
    json_out: JsonOpt = False,
    manifest_out: ManifestOutOpt = False,
    notes: ListNotesOpt = False,
    versions: VersionsOpt = False,
    workspace: WorkspaceOpt = None,
    share: ShareOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    api_base: ApiBaseOpt = None,
    ca_bundle: CaBundleOpt = None,
    debug: DebugOpt = False,
) -> None:
    """List a folder: a table, JSON lines (--json) or a manifest (--manifest)."""
    from fastio_dl.listing import LS_HEADER, VERSIONS_HEADER, list_versions, table, write_listing

    values = dict(locals())

    def body() -> int:
        parsed = parse_ref(ref, workspace=workspace, share=share)
        if versions and (manifest_out or recursive):
            raise UsageError("--versions lists one file: no --manifest or --recursive")
        settings = api_settings(values, config_file(ctx))
        if versions:
            rows = _call_api(settings, 4, lambda client: list_versions(client, parsed))
            if json_out:
                for row in rows:
                    typer.echo(json.dumps(row.record(), ensure_ascii=False))
            else:
                _echo_lines(table(VERSIONS_HEADER, [row.table_row() for row in rows]))
            return 0
        entries = _call_api(
            settings,
            4,
            lambda client: write_listing(
                client,
                parsed,
                sys.stdout,
                recursive=recursive,
                notes=notes,
                manifest=manifest_out,
                json_lines=json_out,
            ),
        )
        if not (manifest_out or json_out):
            _echo_lines(table(LS_HEADER, [entry.table_row() for entry in entries]))
        return 0

    guarded(debug, body)


def _call_api(
    settings: Settings, connections: int, job: Callable[[FastioClient], Awaitable[T]]
) -> T:
    """Run ``job`` with a client of its own in the event loop; its warnings go to stderr."""

    async def call() -> T:
        async with FastioClient.open(settings, max_connections=connections) as client:
            try:
                return await job(client)
            finally:
                _echo_warnings(client)

    return run_async(call)


def _echo_lines(lines: Iterable[str], *, err: bool = False) -> None:
    for line in lines:
        typer.echo(line, err=err)


# ----------------------------------------------------------------------------- verify


@app.command()
def verify(
    ctx: typer.Context,
    dest: VerifyDestArg,
    manifest: VerifyManifestArg = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    workspace: WorkspaceOpt = None,
    share: ShareOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    api_base: ApiBaseOpt = None,
    ca_bundle: CaBundleOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Re-hash local files against the remote hashes (or the sync state); report drift."""
    from fastio_dl.verify import compare, expected_from_state, expected_from_targets

    values = dict(locals())

    def body() -> int:
        if not dest.is_dir():
            raise UsageError(f"{dest} is not a directory")
        unresolved: list[str] = []
        if manifest is not None:
            text, name = read_manifest(manifest)
            parsed = parse_manifest(text, name, workspace=workspace, share=share)
            settings = api_settings(values, config_file(ctx))
            expected, unresolved = _call_api(
                settings, 8, lambda client: expected_from_targets(client, parsed.targets)
            )
        else:
            expected = expected_from_state(dest)
        report = compare(dest, expected)
        report.unresolved = unresolved
        for status, path, detail in report.rows():
            if json_out:
                typer.echo(
                    json.dumps({"event": "file", "status": status, "path": path, "detail": detail})
                )
            else:
                typer.echo(f"{status}: {path}" + (f" ({detail})" if detail else ""), err=True)
        summary = report.summary()
        if json_out:
            typer.echo(json.dumps(summary))
        elif not quiet or not report.clean:
            typer.echo(
                ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in summary.items() if k != "event"),
                err=True,
            )
        return 0 if report.clean else int(ExitCode.FAILED)

    guarded(debug, body)


# ----------------------------------------------------------------------------- doctor


@app.command()
def doctor(
    ctx: typer.Context,
    ref: DoctorRefArg = None,
    json_out: DoctorJsonOpt = False,
    workspace: WorkspaceOpt = None,
    share: ShareOpt = None,
    password_file: PasswordFileOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    api_base: ApiBaseOpt = None,
    ca_bundle: CaBundleOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Check, one line each, that the API, the token and REF work with this fastio-dl."""
    from fastio_dl.doctor import Doctor, scrubbed

    values = dict(locals())

    def body() -> int:
        parsed = parse_ref(ref, workspace=workspace, share=share) if ref else None
        settings = api_settings(values, config_file(ctx), need_token=False)
        checks = _call_api(settings, 4, lambda client: Doctor(client, settings).run(parsed))
        if json_out:
            report = {"fastio_dl": __version__, "checks": [scrubbed(c.report) for c in checks]}
            typer.echo(json.dumps(report, sort_keys=True))
        else:
            for check in checks:
                typer.echo(f"{'ok  ' if check.ok else 'FAIL'}  {redact(check.line)}")
        return 0 if all(c.ok for c in checks) else int(ExitCode.FAILED)

    guarded(debug, body)


# ----------------------------------------------------------------------------- config show


@config_app.command("show")
def config_show(ctx: typer.Context, profile: ProfileOpt = None, debug: DebugOpt = False) -> None:
    """Print each effective option value and where it came from (flag > env > file > default)."""

    def body() -> int:
        _echo_lines(describe_config(ctx.find_root().command, config_file(ctx), profile))
        return 0

    guarded(debug, body)


# ----------------------------------------------------------------------------- demo


@app.command()
def demo(
    dest: Annotated[
        Path | None,
        typer.Option("-d", "--dest", help="Where to download (default: a temporary directory)."),
    ] = None,
    files: Annotated[
        int, typer.Option("--files", min=1, help="Files in the sample workspace.")
    ] = 150,
    concurrency: ConcurrencyOpt = DEFAULT_CONCURRENCY,
    progress: ProgressOpt = DEFAULT_PROGRESS,
    debug: DebugOpt = False,
) -> None:
    """Start the bundled emulator with sample data and download it all, live panel and all."""
    from fastio_dl.demo import run_demo

    def body() -> int:
        check_choice("--progress", progress, PROGRESS_MODES)
        values = {"progress": progress, "json_out": False, "quiet": False}
        interrupts = Interrupts()
        with tempfile.TemporaryDirectory(prefix="fastio-dl-demo-") as tmp:
            return run_demo(
                dest or Path(tmp),
                files=files,
                concurrency=concurrency,
                make_reporter_for=lambda s: make_run_reporter(values, s, interrupts.output_closed),
                run=lambda job: interrupts.mark(interrupts.run(job)),
                keep=dest is not None,
            )

    guarded(debug, body)


def entrypoint() -> None:
    try:
        app()
    except SystemExit as exc:
        leave_now(exc.code)
        raise


if __name__ == "__main__":
    entrypoint()
