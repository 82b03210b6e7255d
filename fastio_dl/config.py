"""Frozen run settings and where each value came from.

Only this module reads ``os.environ``, and only when :func:`load_settings` is called.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastio_dl.credentials import (
    CredentialsError,
    Profile,
    Secret,
    StoredLogin,
    choose_profile,
    known_profiles,
    load_login,
)

DEFAULT_API_BASE = "https://api.fast.io/current"
DEFAULT_CONCURRENCY = 16
DEFAULT_RETRIES = 5
DEFAULT_STALL_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = 30.0
DEFAULT_BACKOFF_INITIAL = 1.0
DEFAULT_MAX_RETRY_WAIT = 300.0
DEFAULT_DEST = Path(".")
READ_MODES = ("auto", "token", "bearer")
DEFAULT_READ_MODE = READ_MODES[0]
DEFAULT_SEGMENTS = 4
DEFAULT_SEGMENT_THRESHOLD = 64 * 1024 * 1024
FSYNC_MODES = ("batch", "each")
DEFAULT_FSYNC = FSYNC_MODES[0]
DEFAULT_WAIT_LOCK = 0.0  # seconds a sync waits for another sync of its destination
TOKEN_ENV_VARS = ("FASTIO_DL_TOKEN", "FASTIO_TOKEN", "FASTIO_API_KEY")
API_BASE_ENVS = ("FASTIO_DL_API_BASE", "FASTIO_API_BASE")

__all__ = ["Secret", "Settings", "load_settings"]


@dataclass(frozen=True)
class Settings:
    api_base: str = DEFAULT_API_BASE
    token: str | None = None  # kept as a Secret (never shown in a repr), whatever is passed
    workspace: str | None = None
    share: str | None = None
    dest: Path = DEFAULT_DEST
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
    read_mode: str = DEFAULT_READ_MODE
    shard: tuple[int, int] | None = None  # (K, N): this host takes the files with hash % N == K
    limit_rate: int = 0  # total bytes per second over all transfers (0: no limit)
    log_file: Path | None = None
    segments: int = DEFAULT_SEGMENTS  # ranged requests per large file (1: one stream)
    segment_threshold: int = DEFAULT_SEGMENT_THRESHOLD
    # batch: small files made durable in groups (one syncfs per group) before they are
    # recorded or reported; each: an fsync per file before it gets its name
    fsync: str = DEFAULT_FSYNC
    notes: bool = False  # save notes as NAME.md (readnote) instead of skipping them
    #: a File Share's link password (FASTIO_FILESHARE_PASSWORD or --password-file)
    fileshare_password: Secret | None = field(default=None, repr=False)
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    #: the official CLI's stored login the token came from (refreshed and written back there)
    login: StoredLogin | None = field(default=None, compare=False, repr=False)
    profile: Profile | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.token is not None and not isinstance(self.token, Secret):
            object.__setattr__(self, "token", Secret(self.token))


def resolve_token(
    flag: str | None,
    env: dict[str, str],
    from_file: str | None = None,
    profile: Profile | None = None,
) -> tuple[Secret | None, str, StoredLogin | None]:
    """Token precedence of the official CLI: flag (or FASTIO_DL_TOKEN), FASTIO_TOKEN,
    FASTIO_API_KEY; then our config file; then the active profile's stored login."""
    if flag and flag.strip():
        return Secret(flag.strip()), "--token", None
    for name in TOKEN_ENV_VARS:
        value = env.get(name, "").strip()
        if value:
            return Secret(value), f"env {name}", None
    if from_file and str(from_file).strip():
        return Secret(str(from_file).strip()), "config file", None
    if profile is None:
        return None, "unset", None
    login = _stored_login(profile)
    if login is not None:
        return login.token, f"fastio-cli {login.describe()}", login
    return None, "unset", None


PASSWORD_ENV = "FASTIO_FILESHARE_PASSWORD"


def _fileshare_password(path: Path | None, env: dict[str, str]) -> Secret | None:
    """``--password-file`` (its first line), else ``FASTIO_FILESHARE_PASSWORD``; never a flag
    value, which would show in ``ps`` and the shell history."""
    from fastio_dl.errors import UsageError

    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise UsageError(f"cannot read --password-file {path}: {why}") from None
        lines = text.splitlines()
        password = lines[0] if lines else ""
        if not password:
            raise UsageError(f"--password-file {path} is empty", "put the link password in it")
        return Secret(password)
    value = env.get(PASSWORD_ENV, "")
    return Secret(value) if value else None


def _stored_login(profile: Profile) -> StoredLogin | None:
    from fastio_dl.errors import UsageError

    try:
        login = load_login(profile)
    except CredentialsError as exc:
        raise UsageError(
            str(exc), "fix or remove the file (fastio auth login writes it again)"
        ) from None
    explicit = profile.source not in ("default",) and not profile.source.startswith(
        "default_profile"
    )
    if login is None and explicit:
        names = known_profiles(profile)
        if profile.name not in names:
            raise UsageError(
                f"no Fast.io CLI profile {profile.name!r} ({profile.source})",
                f"known profiles: {', '.join(names)}"
                if names
                else f"run `fastio auth login --profile {profile.name}`",
            )
    return login


def load_settings(
    flags: dict[str, Any],
    env: dict[str, str] | None = None,
    file_values: dict[str, Any] | None = None,
) -> Settings:
    """Build settings from flags (None means 'not given') over the environment and defaults.

    ``file_values`` holds the config file's ``token``/``api-base``: they rank below the
    environment variables the official CLI uses.
    """
    from fastio_dl.errors import UsageError

    environ = dict(os.environ) if env is None else env
    from_file = file_values or {}
    sources: dict[str, str] = {}
    values: dict[str, Any] = {}
    profile_flag = flags.pop("profile", None)
    try:
        profile = choose_profile(environ, profile_flag, from_file.get("profile"))
    except CredentialsError as exc:
        raise UsageError(str(exc), "fix or remove the file") from None
    token, sources["token"], login = resolve_token(
        flags.pop("token", None), environ, from_file.get("token"), profile
    )
    values["token"] = token
    values["login"] = login
    values["profile"] = profile
    password_file = flags.pop("password_file", None)
    values["fileshare_password"] = _fileshare_password(password_file, environ)
    sources["profile"] = f"{profile.name} ({profile.source})"
    api_base = flags.pop("api_base", None)
    if api_base:
        sources["api_base"] = "--api-base"
    elif any(environ.get(name, "").strip() for name in API_BASE_ENVS):
        name = next(n for n in API_BASE_ENVS if environ.get(n, "").strip())
        api_base, sources["api_base"] = environ[name].strip(), f"env {name}"
    elif from_file.get("api-base"):
        api_base, sources["api_base"] = str(from_file["api-base"]), "config file"
    elif profile.api_base:
        api_base = profile.api_base
        sources["api_base"] = f"fastio-cli profile {profile.name} (config.json)"
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
FILE_ONLY_KEYS = ("token", "api-base", "profile")


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
        """``token``/``api-base``/``profile`` from the file, for :func:`load_settings`."""
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
                f"keys are long option names, e.g. concurrency = {DEFAULT_CONCURRENCY}",
            )
        common[name] = value
    return ConfigFile(path, common, tables)
