"""Frozen run settings and where each value came from.

Only this module reads ``os.environ``, and only when :func:`load_settings` is called.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_API_BASE = "https://api.fast.io/current"
DEFAULT_CONCURRENCY = 16
DEFAULT_RETRIES = 5
DEFAULT_STALL_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = 30.0
DEFAULT_BACKOFF_INITIAL = 1.0
DEFAULT_MAX_RETRY_WAIT = 300.0
TOKEN_ENV_VARS = ("FASTIO_DL_TOKEN", "FASTIO_TOKEN", "FASTIO_API_KEY")
API_BASE_ENVS = ("FASTIO_DL_API_BASE", "FASTIO_API_BASE")
OFFICIAL_CLI_CREDENTIALS = Path("fastio-cli") / "credentials.json"


class Secret(str):
    """A string that never shows itself in ``repr`` (settings are logged with --debug)."""

    def __repr__(self) -> str:
        return "Secret('***')"


@dataclass(frozen=True)
class Settings:
    api_base: str = DEFAULT_API_BASE
    token: Secret | None = None
    workspace: str | None = None
    share: str | None = None
    dest: Path = Path(".")
    concurrency: int = DEFAULT_CONCURRENCY
    retries: int = DEFAULT_RETRIES
    stall_timeout: float = DEFAULT_STALL_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    backoff_initial: float = DEFAULT_BACKOFF_INITIAL
    max_retry_wait: float = DEFAULT_MAX_RETRY_WAIT
    no_clobber: bool = False
    debug: bool = False
    ca_bundle: Path | None = None
    # auto: read with the API token, minting a read token only if that is refused (401);
    # token: mint a read token per file; bearer: the API token only
    read_mode: str = "auto"
    shard: tuple[int, int] | None = None  # (K, N): this host takes the files with hash % N == K
    limit_rate: int = 0  # total bytes per second over all transfers (0: no limit)
    log_file: Path | None = None
    segments: int = 4  # ranged requests per large file (1: one stream)
    segment_threshold: int = 64 * 1024 * 1024
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)


def _official_cli_token(env: dict[str, str]) -> str | None:
    """Read the ``default`` profile of the official Fast.io CLI, when it is there."""
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".config")
    path = Path(base) / OFFICIAL_CLI_CREDENTIALS
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    profile = (data.get("profiles") or {}).get("default") if isinstance(data, dict) else None
    if not isinstance(profile, dict):
        return None
    value = profile.get("api_key") or profile.get("token")
    return value if isinstance(value, str) and value.strip() else None


def resolve_token(
    flag: str | None, env: dict[str, str], from_file: str | None = None
) -> tuple[Secret | None, str]:
    """Token precedence of the official CLI: flag (or FASTIO_DL_TOKEN), FASTIO_TOKEN,
    FASTIO_API_KEY; then our config file; then the official CLI's stored credentials."""
    if flag and flag.strip():
        return Secret(flag.strip()), "--token"
    for name in TOKEN_ENV_VARS:
        value = env.get(name, "").strip()
        if value:
            return Secret(value), f"env {name}"
    if from_file and str(from_file).strip():
        return Secret(str(from_file).strip()), "config file"
    stored = _official_cli_token(env)
    if stored:
        return Secret(stored.strip()), "fastio-cli credentials (default profile)"
    return None, "unset"


def load_settings(
    flags: dict[str, Any],
    env: dict[str, str] | None = None,
    file_values: dict[str, Any] | None = None,
) -> Settings:
    """Build settings from flags (None means 'not given') over the environment and defaults.

    ``file_values`` holds the config file's ``token``/``api-base``: they rank below the
    environment variables the official CLI uses.
    """
    environ = dict(os.environ) if env is None else env
    from_file = file_values or {}
    sources: dict[str, str] = {}
    values: dict[str, Any] = {}
    token, sources["token"] = resolve_token(
        flags.pop("token", None), environ, from_file.get("token")
    )
    values["token"] = token
    api_base = flags.pop("api_base", None)
    if api_base:
        sources["api_base"] = "--api-base"
    elif any(environ.get(name, "").strip() for name in API_BASE_ENVS):
        name = next(n for n in API_BASE_ENVS if environ.get(n, "").strip())
        api_base, sources["api_base"] = environ[name].strip(), f"env {name}"
    elif from_file.get("api-base"):
        api_base, sources["api_base"] = str(from_file["api-base"]), "config file"
    else:
        api_base, sources["api_base"] = DEFAULT_API_BASE, "default"
    values["api_base"] = api_base.rstrip("/")
    ca_bundle = flags.pop("ca_bundle", None)
    if ca_bundle is None and environ.get("SSL_CERT_FILE"):
        ca_bundle = Path(environ["SSL_CERT_FILE"])
    values["ca_bundle"] = ca_bundle
    for name, value in flags.items():
        if value is not None:
            values[name] = value
            sources[name] = "flag"
    return Settings(**values, sources=sources)


# ----------------------------------------------------------------------------- config file

CONFIG_ENV = "FASTIO_DL_CONFIG"
OPTION_ENV_PREFIX = "FASTIO_DL_"
CONFIG_NAME = "config.toml"
#: Keys the config file may set only at low precedence (env FASTIO_TOKEN etc. must win).
FILE_ONLY_KEYS = ("token", "api-base")


def uvloop_wanted(env: dict[str, str] | None = None) -> bool:
    """``FASTIO_DL_NO_UVLOOP=1`` keeps the standard asyncio loop (for comparisons)."""
    environ = os.environ if env is None else env
    return not environ.get("FASTIO_DL_NO_UVLOOP")


def env_value(name: str) -> str | None:
    """An environment variable, for ``config show`` (the one other reader of the environment)."""
    return os.environ.get(name) or None


def option_env(name: str) -> str:
    """An option's environment variable: ``--max-retry-wait`` -> ``FASTIO_DL_MAX_RETRY_WAIT``."""
    return OPTION_ENV_PREFIX + name.lstrip("-").replace("-", "_").upper()


def default_config_path(env: dict[str, str] | None = None) -> tuple[Path, str]:
    """``FASTIO_DL_CONFIG``, else ``<user config dir>/fastio-dl/config.toml`` (platformdirs)."""
    environ = dict(os.environ) if env is None else env
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV]).expanduser(), f"env {CONFIG_ENV}"
    if sys.platform.startswith("linux"):
        # What platformdirs answers on Linux, without its import (5 ms of every run).
        base = environ.get("XDG_CONFIG_HOME", "").strip() or os.path.expanduser("~/.config")
        return Path(base) / "fastio-dl" / CONFIG_NAME, "user config dir"
    from platformdirs import user_config_dir

    return Path(user_config_dir("fastio-dl")) / CONFIG_NAME, "user config dir"


@dataclass(frozen=True)
class ConfigFile:
    """A parsed config file: top-level keys apply to every command, a ``[get]`` table to one."""

    path: Path | None
    common: dict[str, Any]
    commands: dict[str, dict[str, Any]]

    def value(self, command: str, key: str) -> Any:
        key = key.replace("_", "-")
        table = self.commands.get(command, {})
        return table[key] if key in table else self.common.get(key)

    def has(self, command: str, key: str) -> bool:
        key = key.replace("_", "-")
        return key in self.commands.get(command, {}) or key in self.common

    def low_precedence_values(self) -> dict[str, Any]:
        """``token``/``api-base`` from the file, for :func:`load_settings` (below the env)."""
        return {key: self.common[key] for key in FILE_ONLY_KEYS if key in self.common}


EMPTY_CONFIG = ConfigFile(None, {}, {})


def load_config_file(path: Path, *, required: bool, commands: dict[str, set[str]]) -> ConfigFile:
    """Read a TOML config; every key must be an option of some command (``commands``)."""
    from fastio_dl.errors import UsageError

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        if required:
            raise UsageError(f"config file {path} does not exist") from None
        return EMPTY_CONFIG
    except OSError as exc:
        raise UsageError(f"cannot read config file {path}: {exc.strerror}") from None
    import tomllib  # only when there is a file: most runs have none

    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    known = set().union(*commands.values()) if commands else set()
    common: dict[str, Any] = {}
    tables: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key in commands:
            table = {k.replace("_", "-"): v for k, v in value.items()}
            unknown = sorted(set(table) - commands[key])
            if unknown:
                raise UsageError(f"config file {path}: [{key}] has no option {unknown[0]!r}")
            tables[key] = table
            continue
        name = key.replace("_", "-")
        if name not in known:
            raise UsageError(
                f"config file {path}: unknown option {key!r}",
                "keys are long option names, e.g. concurrency = 16",
            )
        common[name] = value
    return ConfigFile(path, common, tables)
