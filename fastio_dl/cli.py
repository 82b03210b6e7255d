"""The Typer CLI: parse arguments, build settings, run the event loop once, map the exit code.

The only module that imports typer (the event loop starts in :mod:`fastio_dl.process`). Every
option also reads ``FASTIO_DL_<OPTION>`` from the environment and a key of the config file;
precedence is flag > environment > config file > default (Click's own order for envvar and
default_map).
"""

# No ``from __future__ import annotations`` here: typer reads every command's annotations on
# every run (typing.get_type_hints), and as strings each one costs an eval (~3 ms at start-up).
import asyncio
import json
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TextIO, TypeVar, cast

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
    DEFAULT_SEGMENT_THRESHOLD,
    DEFAULT_SEGMENTS,
    DEFAULT_STALL_TIMEOUT,
    EMPTY_CONFIG,
    FILE_ONLY_KEYS,
    FSYNC_MODES,
    READ_MODES,
    ConfigFile,
    Settings,
    default_config_path,
    env_value,
    load_config_file,
    load_settings,
    option_env,
)
from fastio_dl.errors import ExitCode, FastioDlError, UsageError, missing_token_error, redact
from fastio_dl.events import Fanout, Reporter
from fastio_dl.manifest import ManifestError, parse_manifest, read_manifest
from fastio_dl.models import Outcome, Target
from fastio_dl.process import leave_now, run_async
from fastio_dl.refs import Ref, parse_ref
from fastio_dl.reporting import DEFAULT_PROGRESS, PROGRESS_MODES, make_reporter
from fastio_dl.runner import Stopper, require_token, run_engine, sync_async
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


def _opt(*decls: str, help: str, **kwargs: Any) -> Any:
    """An option that also reads FASTIO_DL_<LONG NAME> from the environment."""
    long_name = next(d for d in decls if d.startswith("--"))
    return typer.Option(*decls, help=help, envvar=option_env(long_name), show_envvar=True, **kwargs)


# ----------------------------------------------------------------------------- shared options

DestOpt = Annotated[Path, _opt("-d", "--dest", help="Destination directory.")]
WorkspaceOpt = Annotated[
    str | None, _opt("-w", "--workspace", help="Default workspace for bare node ids.")
]
ShareOpt = Annotated[str | None, _opt("-s", "--share", help="Default share for bare node ids.")]
ConcurrencyOpt = Annotated[
    int, _opt("-j", "--concurrency", min=1, max=256, help="Files transferred at once.")
]
RetriesOpt = Annotated[
    int, _opt("--retries", min=0, max=100, help="Retries per file and API call.")
]
StallOpt = Annotated[
    float, _opt("--stall-timeout", min=0.1, help="Seconds without a byte before a read is retried.")
]
BackoffOpt = Annotated[
    float, _opt("--backoff", min=0.0, help="First retry wait in seconds (doubles, with jitter).")
]
MaxWaitOpt = Annotated[
    float, _opt("--max-retry-wait", min=0.0, help="Cap on any single retry wait, in seconds.")
]
ProgressOpt = Annotated[
    str,
    _opt(
        "--progress",
        help="auto (live panel on a terminal, plain lines otherwise), rich, plain, json or none.",
    ),
]
JsonOpt = Annotated[
    bool, _opt("--json", help="Write one JSON object per file, then a summary, to stdout.")
]
QuietOpt = Annotated[bool, _opt("-q", "--quiet", help="Print only errors and the final summary.")]
NoClobberOpt = Annotated[
    bool, _opt("--no-clobber", help="Keep an existing local file that differs from the remote.")
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        help="API token (else FASTIO_DL_TOKEN, FASTIO_TOKEN, FASTIO_API_KEY, config).",
        show_default=False,
    ),
]
ApiBaseOpt = Annotated[
    str | None,
    typer.Option(
        "--api-base",
        help="API base URL (else FASTIO_DL_API_BASE, FASTIO_API_BASE, config).",
        show_default=False,
    ),
]
ProfileOpt = Annotated[
    str | None,
    typer.Option(
        "--profile",
        help="Official Fast.io CLI profile for the stored login and api_base "
        "(else FASTIO_PROFILE, config, config.json's default_profile, default).",
        show_default=False,
    ),
]
NotesOpt = Annotated[
    bool, _opt("--notes", help="Save notes as NAME.md (their markdown) instead of skipping them.")
]
PasswordFileOpt = Annotated[
    Path | None,
    _opt(
        "--password-file",
        help="File whose first line is a File Share's link password "
        "(else FASTIO_FILESHARE_PASSWORD).",
    ),
]
CaBundleOpt = Annotated[
    Path | None, _opt("--ca-bundle", help="PEM file of CAs to trust (else SSL_CERT_FILE).")
]
ReadModeOpt = Annotated[
    str,
    _opt(
        "--read-mode",
        help="auto: read with the API token, minting a read token only if refused; "
        "token: a read token per file; bearer: the API token only.",
    ),
]
SegmentsOpt = Annotated[
    int,
    _opt("--segments", min=1, max=32, help="Ranged connections per large file (1: one stream)."),
]
SegmentThresholdOpt = Annotated[
    str, _opt("--segment-threshold", help="Files at least this large use --segments (e.g. 64M).")
]
ShardOpt = Annotated[
    str | None,
    _opt(
        "--shard",
        help="K/N: take only this host's share of the files (0 <= K < N), split by node id.",
    ),
]
LimitRateOpt = Annotated[
    str | None, _opt("--limit-rate", help="Total bytes per second over all transfers, e.g. 20M.")
]
LogFileOpt = Annotated[
    Path | None, _opt("--log-file", help="Append timestamped log lines to this file.")
]
DebugOpt = Annotated[bool, _opt("--debug", help="Show tracebacks and debug notices.")]
FsyncOpt = Annotated[
    str,
    _opt(
        "--fsync",
        help="batch: small files reach the disk in groups (one syncfs each) before they are "
        "recorded or reported; each: an fsync per file before it gets its name.",
    ),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fastio-dl {__version__}")
        raise typer.Exit()


def command_params(group: Any) -> dict[str, dict[str, str]]:
    """For each command of the (already built) Click group: long option name -> parameter name.

    Takes the group from the running context: building it again from the Typer app costs as
    much as a whole small download (measured with py-spy).
    """
    out: dict[str, dict[str, str]] = {}
    for name, command in group.commands.items():
        options = {
            opt[2:]: param.name
            for param in command.params
            for opt in getattr(param, "opts", [])
            if opt.startswith("--") and opt != "--help"
        }
        out[name] = options
    return out


@app.callback()
def main(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar="FASTIO_DL_CONFIG",
            show_envvar=True,
            help="TOML config file (default: fastio-dl/config.toml in the user config dir).",
        ),
    ] = None,
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
    ctx.default_map = {
        command: {
            param: loaded.value(command, option)
            for option, param in options.items()
            if loaded.has(command, option) and option not in FILE_ONLY_KEYS
        }
        for command, options in params.items()
    }


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


# ----------------------------------------------------------------------------- argument checks


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


def check_choice(option: str, value: str, choices: Iterable[str]) -> str:
    options = tuple(choices)
    if value not in options:
        raise UsageError(f"{option} must be one of {', '.join(options)}, not {value!r}")
    return value


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


def size_text(size: int) -> str:
    """A size as :func:`parse_size` reads it, in the largest unit that divides it (64M)."""
    for unit, factor in reversed(_UNITS.items()):
        if size % factor == 0 and (size or not unit):
            return f"{size // factor}{unit}"
    return str(size)


SEGMENT_THRESHOLD_TEXT = size_text(DEFAULT_SEGMENT_THRESHOLD)  # the option's default, as typed


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None or not text.strip():
        return None
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard takes K/N, like 0/4, not {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"--shard {text}: need 0 <= K < N")
    return index, count


# ----------------------------------------------------------------------------- running the engine


def transfer_settings(values: dict[str, Any], config: ConfigFile) -> Settings:
    """Settings from a command's parameters (their names match across get and sync)."""
    flags = {
        "token": values.get("token"),
        "profile": values.get("profile"),
        "password_file": values.get("password_file"),
        "notes": values.get("notes", False),
        "api_base": values.get("api_base"),
        "ca_bundle": values.get("ca_bundle"),
        "dest": values["dest"],
        "workspace": values.get("workspace"),
        "share": values.get("share"),
        "concurrency": values["concurrency"],
        "retries": values["retries"],
        "stall_timeout": values["stall_timeout"],
        "backoff_initial": values["backoff"],
        "max_retry_wait": values["max_retry_wait"],
        "no_clobber": values.get("no_clobber", False),
        "debug": values["debug"],
        "read_mode": check_choice("--read-mode", values["read_mode"], READ_MODES),
        "segments": values["segments"],
        "segment_threshold": parse_size(values["segment_threshold"], "--segment-threshold"),
        "shard": parse_shard(values.get("shard")),
        "limit_rate": parse_size(values["limit_rate"], "--limit-rate")
        if values.get("limit_rate")
        else 0,
        "log_file": values.get("log_file"),
        "fsync": check_choice("--fsync", values["fsync"], FSYNC_MODES),
    }
    check_choice("--progress", values["progress"], PROGRESS_MODES)
    return load_settings(flags, file_values=config.low_precedence_values())


def make_run_reporter(
    values: dict[str, Any], settings: Settings, output_closed: Callable[[], None]
) -> Reporter:
    secrets = frozenset({settings.token} if settings.token else set())
    from fastio_dl.reporting.pipe import WatchedStream

    reporter = make_reporter(
        values["progress"],
        stderr=cast(TextIO, WatchedStream(sys.stderr, output_closed)),
        stdout=cast(TextIO, WatchedStream(sys.stdout, output_closed)),
        json_results=values["json_out"],
        quiet=values["quiet"],
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


class Interrupts:
    """What stops a CLI run cleanly: SIGINT or SIGTERM (a second one leaves at once), or
    standard output or error losing its reader (``| head``), as SIGPIPE would."""

    def __init__(self) -> None:
        self.stopper = Stopper()
        self.received: list[int] = []
        self.running = False

    def output_closed(self) -> None:
        if self.running and not self.received:
            self.received.append(signal.SIGPIPE)
            self.stopper.stop("output closed")

    def signalled(self, signum: int) -> None:
        if self.received:
            os._exit(128 + signum)  # second signal: leave at once
        self.received.append(signum)
        self.stopper.stop("interrupted")

    def run(self, job: Callable[[Stopper], Awaitable[T]]) -> T:
        """Run ``job`` in the process's one event loop with the signals wired to the stopper."""

        async def go() -> T:
            loop = asyncio.get_running_loop()
            installed = []
            for signum in (signal.SIGINT, signal.SIGTERM):
                try:
                    loop.add_signal_handler(signum, self.signalled, signum)
                    installed.append(signum)
                except (NotImplementedError, RuntimeError, ValueError):
                    pass  # not the main thread (tests) or not supported
            self.running = True
            try:
                return await job(self.stopper)
            finally:
                self.running = False
                for signum in installed:
                    loop.remove_signal_handler(signum)

        return run_async(go)

    def mark(self, outcome: Outcome) -> Outcome:
        if self.received:
            outcome.interrupted = True
            outcome.signal = self.received[0]
        return outcome


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
    refs: Annotated[
        list[str],
        typer.Argument(
            help="Node ids, ws:/share: references or Fast.io URLs; - reads them from stdin.",
            show_default=False,
        ),
    ],
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
    manifest: Annotated[
        str,
        typer.Argument(
            help="Manifest file of 'REF [DEST]' lines, or - for stdin.", show_default=False
        ),
    ],
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
    delete: Annotated[
        bool, _opt("--delete", help="Remove tracked files that left the manifest or the remote.")
    ] = False,
    max_delete: Annotated[
        str | None,
        _opt(
            "--max-delete",
            help="With --delete: delete nothing when more than N files, or P% of the tracked "
            "files, would go (default: more than half and more than 10; 100% lifts it).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, _opt("--dry-run", help="Say what would change; change nothing.")
    ] = False,
    wait_lock: Annotated[
        float, _opt("--wait-lock", min=0.0, help="Seconds to wait for another sync's lock.")
    ] = 0.0,
    failed_manifest: Annotated[
        Path | None, _opt("--failed-manifest", help="Write the lines whose files failed here.")
    ] = None,
    allow_empty: Annotated[
        bool, _opt("--allow-empty", help="Accept a manifest with no lines.")
    ] = False,
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
    ref: Annotated[str, typer.Argument(help="A folder (or file) reference.", show_default=False)],
    recursive: Annotated[bool, _opt("-r", "--recursive", help="List the whole subtree.")] = False,
    json_out: JsonOpt = False,
    manifest_out: Annotated[
        bool, _opt("--manifest", help="Print a manifest (REF DEST lines) that sync accepts.")
    ] = False,
    notes: Annotated[
        bool, _opt("--notes", help="Show notes as the NAME.md files get --notes saves.")
    ] = False,
    versions: Annotated[
        bool, _opt("--versions", help="List a file's versions (ids for REF@VERSION).")
    ] = False,
    workspace: WorkspaceOpt = None,
    share: ShareOpt = None,
    token: TokenOpt = None,
    profile: ProfileOpt = None,
    api_base: ApiBaseOpt = None,
    ca_bundle: CaBundleOpt = None,
    debug: DebugOpt = False,
) -> None:
    """List a folder: a table, JSON lines (--json) or a manifest (--manifest)."""
    from fastio_dl.errors import human_bytes
    from fastio_dl.listing import Entry, list_entries

    def body() -> int:
        parsed = parse_ref(ref, workspace=workspace, share=share)
        settings_args = (config_file(ctx), token, api_base, ca_bundle, debug, profile)
        if versions:
            if manifest_out or recursive:
                raise UsageError("--versions lists one file: no --manifest or --recursive")
            return _print_versions(parsed, json_out, _api_settings(*settings_args))
        settings = _api_settings(*settings_args)

        async def collect() -> list[Entry]:
            # Lines and JSON go out as the listing arrives, without a flush (a system call) per
            # line: a million entries cost no memory. Only the table keeps them, for its widths.
            kept: list[Entry] = []
            out = sys.stdout
            async with FastioClient.open(settings, max_connections=4) as client:
                try:
                    async for entry in list_entries(
                        client, parsed, recursive=recursive, notes=notes
                    ):
                        if manifest_out:
                            wanted = entry.kind == "file" or (notes and entry.kind == "note")
                            if wanted or (entry.kind == "folder" and not recursive):
                                out.write(entry.manifest_line() + "\n")
                        elif json_out:
                            out.write(json.dumps(entry.record(), ensure_ascii=False) + "\n")
                        else:
                            kept.append(entry)
                finally:
                    out.flush()
                    _echo_warnings(client)
            return kept

        entries = run_async(collect)
        if not (manifest_out or json_out):
            rows = [
                (
                    e.kind,
                    human_bytes(int(e.node.get("size") or 0)) if e.kind == "file" else "-",
                    str(e.node.get("modified") or ""),
                    e.node_id,
                    e.path.as_posix(),
                )
                for e in entries
            ]
            widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(_LS_HEADER)]
            for row in [_LS_HEADER, *rows]:
                typer.echo(
                    "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                )
        return 0

    guarded(debug, body)


_LS_HEADER = ("TYPE", "SIZE", "MODIFIED", "ID", "PATH")
_VERSIONS_HEADER = ("VERSION", "SIZE", "CREATED", "HASH", "")


def _print_versions(ref: Ref, json_out: bool, settings: Settings) -> int:
    """``ls --versions REF``: one row per version, the current one marked."""
    from fastio_dl.errors import human_bytes
    from fastio_dl.listing import VersionRow, list_versions

    async def collect() -> list[VersionRow]:
        async with FastioClient.open(settings, max_connections=4) as client:
            try:
                return await list_versions(client, ref)
            finally:
                _echo_warnings(client)

    rows = run_async(collect)
    if json_out:
        for row in rows:
            typer.echo(json.dumps(row.record(), ensure_ascii=False))
        return 0
    table = [
        (
            row.version,
            human_bytes(row.size) if row.size is not None else "?",
            row.created or "",
            f"{row.hash_algo}:{row.hash}" if row.hash else "",
            "(current)" if row.current else "",
        )
        for row in rows
    ]
    widths = [max([len(h), *(len(r[i]) for r in table)]) for i, h in enumerate(_VERSIONS_HEADER)]
    for line in [_VERSIONS_HEADER, *table]:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
    return 0


def _api_settings(
    config: ConfigFile,
    token: str | None,
    api_base: str | None,
    ca_bundle: Path | None,
    debug: bool,
    profile: str | None = None,
) -> Settings:
    settings = load_settings(
        {
            "token": token,
            "profile": profile,
            "api_base": api_base,
            "ca_bundle": ca_bundle,
            "debug": debug,
        },
        file_values=config.low_precedence_values(),
    )
    if settings.token is None:
        raise missing_token_error()
    return settings


# ----------------------------------------------------------------------------- verify


@app.command()
def verify(
    ctx: typer.Context,
    dest: Annotated[Path, typer.Argument(help="The local tree to check.", show_default=False)],
    manifest: Annotated[
        str | None,
        typer.Argument(
            help="Check against the remote via this manifest (default: the sync state).",
            show_default=False,
        ),
    ] = None,
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
    from fastio_dl.state import State
    from fastio_dl.syncing import state_path
    from fastio_dl.verify import compare, expected_from_state, expected_from_targets

    def body() -> int:
        if not dest.is_dir():
            raise UsageError(f"{dest} is not a directory")
        unresolved: list[str] = []
        if manifest is not None:
            text, name = read_manifest(manifest)
            parsed = parse_manifest(text, name, workspace=workspace, share=share)
            settings = _api_settings(config_file(ctx), token, api_base, ca_bundle, debug, profile)

            async def resolve() -> tuple[dict[str, Any], list[str]]:
                async with FastioClient.open(settings, max_connections=8) as client:
                    try:
                        return await expected_from_targets(client, parsed.targets)
                    finally:
                        _echo_warnings(client)

            expected, unresolved = run_async(resolve)
        else:
            if not state_path(dest).is_file():
                raise UsageError(
                    f"{dest} has no sync state", "give a MANIFEST to check against the remote"
                )
            state = State(state_path(dest))
            try:
                expected = expected_from_state(state)
            finally:
                state.close()
        report = compare(dest, expected)
        report.unresolved = unresolved
        rows = (
            [("missing", p, None) for p in report.missing]
            + [("changed", p, d) for p, d in report.changed]
            + [("extra", p, None) for p in report.extra]
            + [("unresolved", u, None) for u in unresolved]
        )
        for status, path, detail in rows:
            if json_out:
                typer.echo(
                    json.dumps({"event": "file", "status": status, "path": path, "detail": detail})
                )
            else:
                typer.echo(f"{status}: {path}" + (f" ({detail})" if detail else ""), err=True)
        summary = {
            "event": "summary",
            "ok": len(report.ok),
            "missing": len(report.missing),
            "changed": len(report.changed),
            "extra": len(report.extra),
            "unverified_hash": len(report.unverifiable),
            "unresolved": len(unresolved),
        }
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
    ref: Annotated[
        str | None,
        typer.Argument(
            help="A file or folder to try as well (details, listing, a read).", show_default=False
        ),
    ] = None,
    json_out: Annotated[
        bool,
        _opt(
            "--json",
            help="One JSON object for a bug report: shapes, key names, statuses and "
            "header names only, no values.",
        ),
    ] = False,
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
    from fastio_dl.doctor import Check, Doctor, scrubbed

    def body() -> int:
        parsed = parse_ref(ref, workspace=workspace, share=share) if ref else None
        settings = load_settings(
            {
                "token": token,
                "profile": profile,
                "password_file": password_file,
                "api_base": api_base,
                "ca_bundle": ca_bundle,
                "debug": debug,
            },
            file_values=config_file(ctx).low_precedence_values(),
        )

        async def examine() -> list[Check]:
            async with FastioClient.open(settings, max_connections=4) as client:
                try:
                    return await Doctor(client, settings).run(parsed)
                finally:
                    _echo_warnings(client)

        checks = run_async(examine)
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
    guarded(debug, lambda: _show_config(ctx, profile))


def _show_config(ctx: typer.Context, profile: str | None) -> int:
    file = config_file(ctx)
    group = ctx.find_root().command
    typer.echo(
        f"config file: {file.path or default_config_path()[0]}"
        + ("" if file.path else " (not present)")
    )
    seen: set[str] = set()
    for command_name in ("get", "sync", "ls", "verify"):
        command = group.commands[command_name]  # type: ignore[attr-defined]  # a Click group
        for param in command.params:
            longs = [o for o in getattr(param, "opts", []) if o.startswith("--")]
            if not longs or longs[0] in seen or longs[0] in _SHOWN_APART:
                continue
            seen.add(longs[0])
            env = option_env(longs[0])
            key = longs[0][2:]
            if env_value(env):
                value, source = env_value(env), f"env {env}"
            elif file.has(command_name, key):
                value, source = file.value(command_name, key), f"file {file.path}"
            else:
                value, source = param.default, "default"
            typer.echo(f"{key} = {json.dumps(value, default=str)}  ({source})")
    settings = load_settings({"profile": profile}, file_values=file.low_precedence_values())
    token = settings.token
    masked = "unset" if token is None else ("****" + token[-4:] if len(token) > 8 else "****")
    typer.echo(f"profile = {settings.sources['profile']}")
    typer.echo(f"token = {masked}  ({settings.sources['token']})")
    login = settings.login
    if login is not None and login.needs_refresh():
        typer.echo(
            "  the next run renews it (POST /oauth/token/) and stores the new one there"
            if login.refresh_token
            else "  it has no refresh token: run `fastio auth login`, or use an API key"
        )
    typer.echo(f"api-base = {settings.api_base!r}  ({settings.sources['api_base']})")
    return 0


_SHOWN_APART = ("--help", "--token", "--api-base", "--profile", "--debug")


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
