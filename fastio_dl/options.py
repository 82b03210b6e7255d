"""The command-line options: how each is declared, its value parsed and checked, and the
settings built from a command's values.

Every option made with :func:`opt` also reads ``FASTIO_DL_<OPTION>`` from the environment; the
config file fills in below that (see :func:`fastio_dl.cli.main`). Each default comes from one
constant (:mod:`fastio_dl.config`, :mod:`fastio_dl.reporting`) that the commands' signatures
and :class:`~fastio_dl.config.Settings` share.
"""

# No ``from __future__ import annotations``: the option types below are read by typer as they
# are (see cli.py).
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from fastio_dl import __version__
from fastio_dl.config import (
    CONFIG_ENV,
    DEFAULT_SEGMENT_THRESHOLD,
    FILE_ONLY_KEYS,
    FSYNC_MODES,
    READ_MODES,
    ConfigFile,
    Settings,
    default_config_path,
    env_value,
    load_settings,
    option_env,
)
from fastio_dl.errors import UsageError, missing_token_error
from fastio_dl.reporting import PROGRESS_MODES


def opt(*decls: str, help: str, **kwargs: Any) -> Any:
    """An option that also reads FASTIO_DL_<LONG NAME> from the environment."""
    long_name = next(d for d in decls if d.startswith("--"))
    return typer.Option(*decls, help=help, envvar=option_env(long_name), show_envvar=True, **kwargs)


# ----------------------------------------------------------------------------- shared options

DestOpt = Annotated[Path, opt("-d", "--dest", help="Destination directory.")]
WorkspaceOpt = Annotated[
    str | None, opt("-w", "--workspace", help="Default workspace for bare node ids.")
]
ShareOpt = Annotated[str | None, opt("-s", "--share", help="Default share for bare node ids.")]
ConcurrencyOpt = Annotated[
    int, opt("-j", "--concurrency", min=1, max=256, help="Files transferred at once.")
]
RetriesOpt = Annotated[int, opt("--retries", min=0, max=100, help="Retries per file and API call.")]
StallOpt = Annotated[
    float, opt("--stall-timeout", min=0.1, help="Seconds without a byte before a read is retried.")
]
BackoffOpt = Annotated[
    float, opt("--backoff", min=0.0, help="First retry wait in seconds (doubles, with jitter).")
]
MaxWaitOpt = Annotated[
    float, opt("--max-retry-wait", min=0.0, help="Cap on any single retry wait, in seconds.")
]
ProgressOpt = Annotated[
    str,
    opt(
        "--progress",
        help="auto (live panel on a terminal, plain lines otherwise), rich, plain, json or none.",
    ),
]
JsonOpt = Annotated[
    bool, opt("--json", help="Write one JSON object per file, then a summary, to stdout.")
]
QuietOpt = Annotated[bool, opt("-q", "--quiet", help="Print only errors and the final summary.")]
NoClobberOpt = Annotated[
    bool, opt("--no-clobber", help="Keep an existing local file that differs from the remote.")
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
    bool, opt("--notes", help="Save notes as NAME.md (their markdown) instead of skipping them.")
]
PasswordFileOpt = Annotated[
    Path | None,
    opt(
        "--password-file",
        help="File whose first line is a File Share's link password "
        "(else FASTIO_FILESHARE_PASSWORD).",
    ),
]
CaBundleOpt = Annotated[
    Path | None, opt("--ca-bundle", help="PEM file of CAs to trust (else SSL_CERT_FILE).")
]
ReadModeOpt = Annotated[
    str,
    opt(
        "--read-mode",
        help="auto: read with the API token, minting a read token only if refused; "
        "token: a read token per file; bearer: the API token only.",
    ),
]
SegmentsOpt = Annotated[
    int,
    opt("--segments", min=1, max=32, help="Ranged connections per large file (1: one stream)."),
]
SegmentThresholdOpt = Annotated[
    str, opt("--segment-threshold", help="Files at least this large use --segments (e.g. 64M).")
]
ShardOpt = Annotated[
    str | None,
    opt(
        "--shard",
        help="K/N: take only this host's share of the files (0 <= K < N), split by node id.",
    ),
]
LimitRateOpt = Annotated[
    str | None, opt("--limit-rate", help="Total bytes per second over all transfers, e.g. 20M.")
]
LogFileOpt = Annotated[
    Path | None, opt("--log-file", help="Append timestamped log lines to this file.")
]
DebugOpt = Annotated[bool, opt("--debug", help="Show tracebacks and debug notices.")]
FsyncOpt = Annotated[
    str,
    opt(
        "--fsync",
        help="batch: small files reach the disk in groups (one syncfs each) before they are "
        "recorded or reported; each: an fsync per file before it gets its name.",
    ),
]


# ----------------------------------------------------------------------------- per command


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fastio-dl {__version__}")
        raise typer.Exit()


VersionOpt = Annotated[
    bool,
    typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar=CONFIG_ENV,
        show_envvar=True,
        help="TOML config file (default: fastio-dl/config.toml in the user config dir).",
    ),
]

RefsArg = Annotated[
    list[str],
    typer.Argument(
        help="Node ids, ws:/share: references or Fast.io URLs; - reads them from stdin.",
        show_default=False,
    ),
]
ManifestArg = Annotated[
    str,
    typer.Argument(help="Manifest file of 'REF [DEST]' lines, or - for stdin.", show_default=False),
]
DeleteOpt = Annotated[
    bool, opt("--delete", help="Remove tracked files that left the manifest or the remote.")
]
MaxDeleteOpt = Annotated[
    str | None,
    opt(
        "--max-delete",
        help="With --delete: delete nothing when more than N files, or P% of the tracked "
        "files, would go (default: more than half and more than 10; 100% lifts it).",
    ),
]
DryRunOpt = Annotated[bool, opt("--dry-run", help="Say what would change; change nothing.")]
WaitLockOpt = Annotated[
    float, opt("--wait-lock", min=0.0, help="Seconds to wait for another sync's lock.")
]
FailedManifestOpt = Annotated[
    Path | None, opt("--failed-manifest", help="Write the lines whose files failed here.")
]
AllowEmptyOpt = Annotated[bool, opt("--allow-empty", help="Accept a manifest with no lines.")]
ListRefArg = Annotated[
    str, typer.Argument(help="A folder (or file) reference.", show_default=False)
]
RecursiveOpt = Annotated[bool, opt("-r", "--recursive", help="List the whole subtree.")]
ManifestOutOpt = Annotated[
    bool, opt("--manifest", help="Print a manifest (REF DEST lines) that sync accepts.")
]
ListNotesOpt = Annotated[
    bool, opt("--notes", help="Show notes as the NAME.md files get --notes saves.")
]
VersionsOpt = Annotated[
    bool, opt("--versions", help="List a file's versions (ids for REF@VERSION).")
]
VerifyDestArg = Annotated[Path, typer.Argument(help="The local tree to check.", show_default=False)]
VerifyManifestArg = Annotated[
    str | None,
    typer.Argument(
        help="Check against the remote via this manifest (default: the sync state).",
        show_default=False,
    ),
]
DoctorRefArg = Annotated[
    str | None,
    typer.Argument(
        help="A file or folder to try as well (details, listing, a read).", show_default=False
    ),
]
DoctorJsonOpt = Annotated[
    bool,
    opt(
        "--json",
        help="One JSON object for a bug report: shapes, key names, statuses and "
        "header names only, no values.",
    ),
]


# ----------------------------------------------------------------------------- values


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


# ----------------------------------------------------------------------------- settings


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


def api_settings(
    values: dict[str, Any], config: ConfigFile, *, need_token: bool = True
) -> Settings:
    """Settings for the commands that only call the API (ls, verify, doctor)."""
    flags = {
        "token": values.get("token"),
        "profile": values.get("profile"),
        "password_file": values.get("password_file"),
        "api_base": values.get("api_base"),
        "ca_bundle": values.get("ca_bundle"),
        "debug": values["debug"],
    }
    settings = load_settings(flags, file_values=config.low_precedence_values())
    if need_token and settings.token is None:
        raise missing_token_error()
    return settings


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


def config_defaults(
    params: dict[str, dict[str, str]], file: ConfigFile
) -> dict[str, dict[str, Any]]:
    """Click's ``default_map`` from the config file: command -> parameter -> value (the keys
    that rank below the environment, like ``token``, are left to :func:`load_settings`)."""
    return {
        command: {
            param: file.value(command, option)
            for option, param in options.items()
            if file.has(command, option) and option not in FILE_ONLY_KEYS
        }
        for command, options in params.items()
    }


# ----------------------------------------------------------------------------- config show


def describe_config(group: Any, file: ConfigFile, profile: str | None) -> Iterator[str]:
    """``config show``: each option's effective value and where it came from, then the login.

    ``group`` is the running Click group (its commands' parameters hold the defaults)."""
    yield f"config file: {file.path or default_config_path()[0]}" + (
        "" if file.path else " (not present)"
    )
    seen: set[str] = set()
    for command_name in ("get", "sync", "ls", "verify"):
        command = group.commands[command_name]
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
            yield f"{key} = {json.dumps(value, default=str)}  ({source})"
    settings = load_settings({"profile": profile}, file_values=file.low_precedence_values())
    token = settings.token
    masked = "unset" if token is None else ("****" + token[-4:] if len(token) > 8 else "****")
    yield f"profile = {settings.sources['profile']}"
    yield f"token = {masked}  ({settings.sources['token']})"
    login = settings.login
    if login is not None and login.needs_refresh():
        yield (
            "  the next run renews it (POST /oauth/token/) and stores the new one there"
            if login.refresh_token
            else "  it has no refresh token: run `fastio auth login`, or use an API key"
        )
    yield f"api-base = {settings.api_base!r}  ({settings.sources['api_base']})"


_SHOWN_APART = ("--help", "--token", "--api-base", "--profile", "--debug")
