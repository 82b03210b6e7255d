"""The official Fast.io CLI's profiles and stored logins: find them, choose one, write back.

``fastio auth login`` keeps two files in the OS config directory (Rust's ``dirs::config_dir()``)
under ``fastio-cli/``:

* ``config.json``: ``{default_profile, profiles: {NAME: {api_base, auth_method}}}``
* ``credentials.json`` (mode 0600): ``{profiles: {NAME: {token, refresh_token, api_key,
  expires_at, user_id, email, auth_method}}}``

An OAuth login's access token lasts about an hour; its refresh token gets a new one
(``POST /oauth/token/``, done by :class:`fastio_dl.client.FastioClient`). The new tokens are
written back here so that the official CLI sees them too. This module never reads
``os.environ`` itself: :mod:`fastio_dl.config` hands it the environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

CLI_DIR = "fastio-cli"
CONFIG_JSON = "config.json"
CREDENTIALS_JSON = "credentials.json"
DEFAULT_PROFILE = "default"
PROFILE_ENV = "FASTIO_PROFILE"
#: The official CLI's OAuth client: its refresh tokens are bound to it.
OAUTH_CLIENT_ID = "fastio-cli"
#: A token with less than this left is refreshed before the run (the official CLI warns at 5 min).
REFRESH_MARGIN = 300


class Secret(str):
    """A string that never shows itself in ``repr`` (settings are logged with --debug)."""

    def __repr__(self) -> str:
        return "Secret('***')"


class CredentialsError(Exception):
    """A credentials or config file that exists but cannot be used (message names the file)."""


@dataclass(frozen=True)
class StoredLogin:
    """One profile's login, as the official CLI stored it."""

    profile: str
    path: Path  # credentials.json it came from (and goes back to)
    token: Secret
    is_api_key: bool
    refresh_token: Secret | None = None
    expires_at: int | None = None  # unix seconds; None: does not expire (API keys)
    email: str | None = None
    user_id: str | None = None

    def seconds_left(self, now: float | None = None) -> float | None:
        if self.is_api_key or self.expires_at is None:
            return None
        return self.expires_at - (time.time() if now is None else now)

    def needs_refresh(self, now: float | None = None) -> bool:
        left = self.seconds_left(now)
        return left is not None and left < REFRESH_MARGIN

    def is_expired(self, now: float | None = None) -> bool:
        left = self.seconds_left(now)
        return left is not None and left <= 0

    def describe(self, now: float | None = None) -> str:
        """``profile work (…/credentials.json), expires 2026-… UTC (in 42 min)``: no secret."""
        text = f"profile {self.profile} ({self.path})"
        if self.is_api_key:
            return text + ", API key (does not expire)"
        if self.expires_at is None:
            return text + ", no expiry recorded"
        left = self.seconds_left(now) or 0.0
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.expires_at))
        if left <= 0:
            return text + f", expired {when} ({_span(-left)} ago)"
        return text + f", expires {when} (in {_span(left)})"


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"


@dataclass(frozen=True)
class Profile:
    """The active profile: its name, why it was chosen, and its api_base if config.json has one."""

    name: str
    source: str  # --profile | env FASTIO_PROFILE | config file | config.json default_profile | ...
    api_base: str | None
    directory: Path | None


def _platform() -> str:
    return sys.platform


def cli_config_dir(env: dict[str, str], platform: str | None = None) -> Path | None:
    """Where the official CLI keeps its files: ``dirs::config_dir()`` + ``fastio-cli``.

    Linux and other Unixes: ``$XDG_CONFIG_HOME`` (when absolute) or ``~/.config``; macOS:
    ``~/Library/Application Support``; Windows: ``%APPDATA%`` (the roaming profile).
    """
    platform = platform or _platform()
    home = env.get("HOME", "").strip() or env.get("USERPROFILE", "").strip()
    if platform == "win32":
        base = env.get("APPDATA", "").strip()
        if not base and home:
            base = str(Path(home) / "AppData" / "Roaming")
        return Path(base) / CLI_DIR if base else None
    if platform == "darwin":
        return Path(home) / "Library" / "Application Support" / CLI_DIR if home else None
    xdg = env.get("XDG_CONFIG_HOME", "").strip()
    if xdg and os.path.isabs(xdg):  # dirs ignores a relative XDG_CONFIG_HOME, as the spec says
        return Path(xdg) / CLI_DIR
    return Path(home) / ".config" / CLI_DIR if home else None


def _read_json(path: Path) -> dict[str, Any] | None:
    """The file's object, None when it does not exist; CredentialsError when it is unusable."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not text.strip():
        return None  # the official CLI re-creates an empty config.json: treat it as absent
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CredentialsError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise CredentialsError(f"{path} does not hold a JSON object")
    return data


def _profiles(data: dict[str, Any] | None) -> dict[str, Any]:
    profiles = (data or {}).get("profiles")
    return profiles if isinstance(profiles, dict) else {}


def choose_profile(
    env: dict[str, str],
    flag: str | None = None,
    from_file: str | None = None,
    platform: str | None = None,
) -> Profile:
    """``--profile``, else ``FASTIO_PROFILE``, else fastio-dl's config file ``profile``, else
    config.json's ``default_profile``, else ``default``."""
    directory = cli_config_dir(env, platform)
    config = _read_json(directory / CONFIG_JSON) if directory else None
    name, source = None, ""
    for value, where in (
        (flag, "--profile"),
        (env.get(PROFILE_ENV), f"env {PROFILE_ENV}"),
        (from_file, "config file"),
    ):
        if value and value.strip():
            name, source = value.strip(), where
            break
    if name is None:
        default = (config or {}).get("default_profile")
        if isinstance(default, str) and default.strip() and directory is not None:
            name, source = default.strip(), f"default_profile in {directory / CONFIG_JSON}"
        else:
            name, source = DEFAULT_PROFILE, "default"
    settings = _profiles(config).get(name)
    api_base = settings.get("api_base") if isinstance(settings, dict) else None
    if not (isinstance(api_base, str) and api_base.strip()):
        api_base = None
    return Profile(name, source, api_base.strip() if api_base else None, directory)


def load_login(profile: Profile) -> StoredLogin | None:
    """The profile's stored login; None when there is none. An ``api_key`` wins over ``token``."""
    if profile.directory is None:
        return None
    path = profile.directory / CREDENTIALS_JSON
    entry = _profiles(_read_json(path)).get(profile.name)
    if not isinstance(entry, dict):
        return None
    api_key = _text(entry.get("api_key"))
    token = _text(entry.get("token"))
    if api_key:
        return StoredLogin(
            profile.name, path, Secret(api_key), True, email=_text(entry.get("email"))
        )
    if not token:
        return None
    refresh = _text(entry.get("refresh_token"))
    expires = entry.get("expires_at")
    try:
        expires_at = int(expires) if expires is not None else None
    except (TypeError, ValueError):
        raise CredentialsError(
            f"{path}: profile {profile.name!r} has expires_at {expires!r}, not unix seconds"
        ) from None
    return StoredLogin(
        profile=profile.name,
        path=path,
        token=Secret(token),
        is_api_key=False,
        refresh_token=Secret(refresh) if refresh else None,
        expires_at=expires_at,
        email=_text(entry.get("email")),
        user_id=_text(entry.get("user_id")),
    )


def known_profiles(profile: Profile) -> list[str]:
    """Profile names in config.json and credentials.json (for the message about a wrong one)."""
    if profile.directory is None:
        return []
    names: set[str] = set()
    for name in (CONFIG_JSON, CREDENTIALS_JSON):
        with contextlib.suppress(CredentialsError):
            names |= set(_profiles(_read_json(profile.directory / name)))
    return sorted(names)


def _text(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


def reread(login: StoredLogin) -> StoredLogin | None:
    """The same profile's login as the file holds it now (another process may have refreshed)."""
    try:
        profile = Profile(login.profile, "", None, login.path.parent)
        again = load_login(profile)
    except CredentialsError:
        return None
    return again if again is not None and again.path == login.path else None


def write_back(
    login: StoredLogin, access_token: str, refresh_token: str | None, expires_at: int | None
) -> StoredLogin:
    """Store refreshed tokens in the profile, keeping every other field and profile as it is.

    The file is read again just before writing (the official CLI or another run may have
    changed it since), written to a new file with mode 0600 in the same directory, flushed to
    disk and renamed over the old one: a crash leaves the old file or the new, never half.
    """
    data = _read_json(login.path) or {}
    profiles = data.setdefault("profiles", {})
    if not isinstance(profiles, dict):
        raise CredentialsError(f"{login.path}: 'profiles' is not an object")
    entry = profiles.setdefault(login.profile, {})
    if not isinstance(entry, dict):
        raise CredentialsError(f"{login.path}: profile {login.profile!r} is not an object")
    entry["token"] = access_token
    if refresh_token:
        entry["refresh_token"] = refresh_token
    if expires_at is not None:
        entry["expires_at"] = expires_at
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    tmp = login.path.with_name(f".{login.path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    # O_EXCL: never follow or reuse something already there; 0600 from the first byte.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, login.path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return replace(
        login,
        token=Secret(access_token),
        refresh_token=Secret(refresh_token) if refresh_token else login.refresh_token,
        expires_at=expires_at,
    )
