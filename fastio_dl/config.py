"""Frozen run settings and where each value came from.

Only this module reads ``os.environ``, and only when :func:`load_settings` is called.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_API_BASE = "https://api.fast.io/current"
DEFAULT_CONCURRENCY = 8
DEFAULT_RETRIES = 5
DEFAULT_STALL_TIMEOUT = 60.0
DEFAULT_CONNECT_TIMEOUT = 30.0
DEFAULT_BACKOFF_INITIAL = 1.0
DEFAULT_MAX_RETRY_WAIT = 300.0
# Read-token lookahead: tokens live about 2 h, so a small queue minted just ahead of the
# download slots keeps them fresh while hiding the round trip.
TOKEN_LOOKAHEAD_FACTOR = 2

TOKEN_ENV_VARS = ("FASTIO_TOKEN", "FASTIO_API_KEY")
API_BASE_ENV = "FASTIO_API_BASE"
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


def resolve_token(flag: str | None, env: dict[str, str]) -> tuple[Secret | None, str]:
    """Token precedence of the official CLI: flag, FASTIO_TOKEN, FASTIO_API_KEY, stored file."""
    if flag and flag.strip():
        return Secret(flag.strip()), "--token"
    for name in TOKEN_ENV_VARS:
        value = env.get(name, "").strip()
        if value:
            return Secret(value), f"env {name}"
    stored = _official_cli_token(env)
    if stored:
        return Secret(stored.strip()), "fastio-cli credentials (default profile)"
    return None, "unset"


def load_settings(flags: dict[str, Any], env: dict[str, str] | None = None) -> Settings:
    """Build settings from flags (None means 'not given') over the environment and defaults."""
    environ = dict(os.environ) if env is None else env
    sources: dict[str, str] = {}
    values: dict[str, Any] = {}
    token, sources["token"] = resolve_token(flags.pop("token", None), environ)
    values["token"] = token
    api_base = flags.pop("api_base", None)
    if api_base:
        sources["api_base"] = "--api-base"
    elif environ.get(API_BASE_ENV, "").strip():
        api_base, sources["api_base"] = environ[API_BASE_ENV].strip(), f"env {API_BASE_ENV}"
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
