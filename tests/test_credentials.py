"""The official Fast.io CLI's logins: where they live per OS, which profile, refresh, write-back."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fastio_dl import credentials
from fastio_dl.cli import app
from fastio_dl.config import load_settings
from fastio_dl.credentials import choose_profile, cli_config_dir, load_login
from fastio_dl.emulator import DatasetSpec
from fastio_dl.errors import UsageError
from tests.conftest import Served, tree_digests


def write_cli_files(
    directory: Path,
    profiles: dict[str, dict[str, Any]],
    *,
    default_profile: str | None = None,
    api_bases: dict[str, str] | None = None,
) -> Path:
    """Lay out config.json and credentials.json as `fastio auth login` leaves them."""
    directory.mkdir(parents=True, exist_ok=True)
    if default_profile is not None or api_bases:
        config = {
            "default_profile": default_profile or "default",
            "profiles": {
                name: {"api_base": base, "auth_method": "pkce"}
                for name, base in (api_bases or {}).items()
            },
        }
        (directory / "config.json").write_text(json.dumps(config))
    path = directory / "credentials.json"
    path.write_text(json.dumps({"profiles": profiles}, indent=2))
    path.chmod(0o600)
    return path


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


# ----------------------------------------------------------------------------- where they live


@pytest.mark.parametrize(
    ("platform", "env", "expected"),
    [
        ("linux", {"HOME": "/home/ann", "XDG_CONFIG_HOME": "/xdg"}, "/xdg/fastio-cli"),
        ("linux", {"HOME": "/home/ann"}, "/home/ann/.config/fastio-cli"),
        # dirs ignores a relative XDG_CONFIG_HOME, as the XDG spec says
        ("linux", {"HOME": "/home/ann", "XDG_CONFIG_HOME": "rel"}, "/home/ann/.config/fastio-cli"),
        ("freebsd14", {"HOME": "/home/ann"}, "/home/ann/.config/fastio-cli"),
        (
            "darwin",
            {"HOME": "/Users/ann", "XDG_CONFIG_HOME": "/xdg"},
            "/Users/ann/Library/Application Support/fastio-cli",
        ),
        (
            "win32",
            {"APPDATA": "/c/Users/ann/AppData/Roaming"},
            "/c/Users/ann/AppData/Roaming/fastio-cli",
        ),
        ("win32", {"USERPROFILE": "/c/Users/ann"}, "/c/Users/ann/AppData/Roaming/fastio-cli"),
        ("linux", {}, None),
    ],
)
def test_the_official_cli_directory_per_platform(
    platform: str, env: dict[str, str], expected: str | None
) -> None:
    found = cli_config_dir(env, platform)
    assert (found.as_posix() if found else None) == expected


@pytest.mark.parametrize("platform", ["linux", "darwin", "win32"])
def test_a_login_is_found_where_the_platform_keeps_it(
    platform: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    env = {"HOME": str(home), "APPDATA": str(tmp_path / "roaming")}
    directory = {
        "linux": home / ".config" / "fastio-cli",
        "darwin": home / "Library" / "Application Support" / "fastio-cli",
        "win32": tmp_path / "roaming" / "fastio-cli",
    }[platform]
    write_cli_files(directory, {"default": {"api_key": "key-" + platform}})
    monkeypatch.setattr(credentials, "_platform", lambda: platform)
    settings = load_settings({}, env)
    assert settings.token == "key-" + platform
    assert settings.login is not None and settings.login.path == directory / "credentials.json"
    assert f"profile default ({directory / 'credentials.json'})" in settings.sources["token"]


# ----------------------------------------------------------------------------- which profile


def test_profile_choice_flag_then_env_then_config_json_then_default(tmp_path: Path) -> None:
    directory = tmp_path / "cfg" / "fastio-cli"
    write_cli_files(
        directory,
        {name: {"api_key": f"key-{name}"} for name in ("default", "work", "ci", "home")},
        default_profile="work",
        api_bases={"work": "https://work.example/current", "default": "https://d.example/current"},
    )
    env = {"HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path / "cfg")}
    assert load_settings({"profile": "home"}, {**env, "FASTIO_PROFILE": "ci"}).token == "key-home"
    assert load_settings({}, {**env, "FASTIO_PROFILE": "ci"}).token == "key-ci"
    chosen = load_settings({}, env)
    assert chosen.token == "key-work"
    assert chosen.sources["profile"].startswith("work (default_profile in ")
    # the profile's api_base is used when nothing else names one
    assert chosen.api_base == "https://work.example/current"
    assert "profile work" in chosen.sources["api_base"]
    assert load_settings({"api_base": "http://x/current"}, env).api_base == "http://x/current"
    (directory / "config.json").unlink()
    assert load_settings({}, env).token == "key-default"


def test_an_api_key_wins_over_a_token_in_a_profile(tmp_path: Path) -> None:
    directory = tmp_path / "fastio-cli"
    write_cli_files(directory, {"default": {"token": "jwt", "api_key": "key", "expires_at": 1}})
    login = load_login(choose_profile({"XDG_CONFIG_HOME": str(tmp_path), "HOME": "/h"}))
    assert login is not None and login.token == "key" and login.is_api_key
    assert not login.needs_refresh()


def test_an_unknown_profile_is_a_usage_error_naming_the_known_ones(tmp_path: Path) -> None:
    write_cli_files(tmp_path / "fastio-cli", {"default": {"api_key": "k"}, "work": {}})
    env = {"XDG_CONFIG_HOME": str(tmp_path), "HOME": "/h"}
    with pytest.raises(UsageError, match=r"no Fast\.io CLI profile 'wrok'") as info:
        load_settings({"profile": "wrok"}, env)
    assert info.value.hint == "known profiles: default, work"


def test_a_broken_credentials_file_is_one_clear_line(tmp_path: Path) -> None:
    directory = tmp_path / "config" / "fastio-cli"
    directory.mkdir(parents=True)
    (directory / "credentials.json").write_text("{not json")
    code, _out, err = run("ls", "ws:1234567890123456789/root", "--api-base", "http://127.0.0.1:9")
    assert code == 2
    assert err.count("\n") == 1 and "credentials.json is not valid JSON" in err


# ----------------------------------------------------------------------------- refresh


def _login_files(
    tmp_path: Path, served: Served, *, expires_in: float, refresh: str | None, access: str
) -> Path:
    profile: dict[str, Any] = {
        "token": access,
        "expires_at": int(time.time() + expires_in),
        "user_id": "1234567890123456789",
        "email": "ann@example.invalid",
        "auth_method": "pkce",
        "field_from_a_newer_cli": {"kept": True},
    }
    if refresh:
        profile["refresh_token"] = refresh
    return write_cli_files(
        tmp_path / "config" / "fastio-cli",
        {"work": profile, "default": {"api_key": "an-untouched-key"}},
        default_profile="work",
        api_bases={"work": served.server.api_base, "default": "https://api.fast.io/current"},
    )


def test_an_expired_login_is_refreshed_and_written_back(tmp_path: Path, served: Served) -> None:
    access, refresh = served.emulator.issue_login()
    served.emulator.tokens.discard(access)  # the server has let it go too
    path = _login_files(tmp_path, served, expires_in=-60, refresh=refresh, access=access)
    before = json.loads(path.read_text())
    dest = tmp_path / "out"
    code, out, err = run("get", f"ws:{served.ws}/root", "-d", str(dest), "--progress", "plain")
    assert code == 0, err
    assert tree_digests(dest) == served.expected()
    assert served.emulator.oauth_forms == [
        {"grant_type": "refresh_token", "refresh_token": refresh, "client_id": "fastio-cli"}
    ]
    after = json.loads(path.read_text())
    work = after["profiles"]["work"]
    assert work["token"] != access and work["token"] in served.emulator.tokens
    assert (
        work["refresh_token"] != refresh and work["refresh_token"] in served.emulator.refresh_tokens
    )
    assert abs(work["expires_at"] - (time.time() + 3600)) < 60
    for key in ("user_id", "email", "auth_method", "field_from_a_newer_cli"):
        assert work[key] == before["profiles"]["work"][key]
    assert after["profiles"]["default"] == before["profiles"]["default"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    # no temporary file left beside it
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.json", "credentials.json"]
    for secret in (access, refresh, work["token"], work["refresh_token"]):
        assert secret not in out + err


def test_a_login_about_to_expire_is_refreshed_before_the_run(
    tmp_path: Path, served: Served
) -> None:
    access, refresh = served.emulator.issue_login()
    path = _login_files(tmp_path, served, expires_in=120, refresh=refresh, access=access)
    code, _out, err = run("ls", f"ws:{served.ws}/root")
    assert code == 0, err
    assert len(served.emulator.oauth_forms) == 1
    assert json.loads(path.read_text())["profiles"]["work"]["token"] != access


def test_a_fresh_login_is_used_as_it_is(tmp_path: Path, served: Served) -> None:
    access, refresh = served.emulator.issue_login()
    path = _login_files(tmp_path, served, expires_in=3000, refresh=refresh, access=access)
    before = path.read_text()
    code, _out, err = run("ls", f"ws:{served.ws}/root")
    assert code == 0, err
    assert served.emulator.oauth_forms == [] and path.read_text() == before


def test_an_expired_login_without_a_refresh_token_exits_3(tmp_path: Path, served: Served) -> None:
    access, _refresh = served.emulator.issue_login()
    _login_files(tmp_path, served, expires_in=-5, refresh=None, access=access)
    code, _out, err = run("get", f"ws:{served.ws}/root", "-d", str(tmp_path / "o"))
    assert code == 3
    assert err.startswith("fastio-dl: error: the stored login expired (fastio-cli profile work)")
    assert "run `fastio auth login`, or use an API key" in err
    assert served.stat("requests") == 0


def test_a_refused_refresh_exits_3_without_printing_secrets(tmp_path: Path, served: Served) -> None:
    access, refresh = served.emulator.issue_login()
    served.emulator.refresh_tokens.clear()  # revoked on the server
    path = _login_files(tmp_path, served, expires_in=-5, refresh=refresh, access=access)
    before = path.read_text()
    code, out, err = run("ls", f"ws:{served.ws}/root")
    assert code == 3
    assert "refreshing it failed: HTTP 400 refresh token unknown or spent" in err
    assert refresh not in out + err and access not in out + err
    assert path.read_text() == before


def test_config_show_names_the_profile_file_and_expiry(tmp_path: Path, served: Served) -> None:
    access, refresh = served.emulator.issue_login()
    path = _login_files(tmp_path, served, expires_in=-120, refresh=refresh, access=access)
    code, out, err = run("config", "show")
    assert code == 0, err
    assert "profile = work (default_profile in " in out
    token_line = next(line for line in out.splitlines() if line.startswith("token = "))
    assert f"profile work ({path})" in token_line and ", expired " in token_line
    assert "the next run renews it" in out
    assert f"api-base = {served.server.api_base!r}" in out
    assert access not in out and refresh not in out
    code, out, _err = run("config", "show", "--profile", "default")
    assert "profile = default (--profile)" in out and "API key (does not expire)" in out


# ----------------------------------------------------------------------------- mid-run


def test_a_login_that_dies_mid_run_is_renewed_once_and_the_run_goes_on(
    tmp_path: Path, make_served: Any
) -> None:
    served = make_served(DatasetSpec(files=40, depth=2, fanout=2, max_size=16 * 1024))
    access, refresh = served.emulator.issue_login()
    # alive for the token check and the first listings, then refused (10011) from then on
    served.emulator.token_deaths[access] = 4
    path = _login_files(tmp_path, served, expires_in=3000, refresh=refresh, access=access)
    dest = tmp_path / "out"
    code, out, err = run("get", f"ws:{served.ws}/root", "-d", str(dest), "--progress", "plain")
    assert code == 0, err
    assert tree_digests(dest) == served.expected()
    assert len(served.emulator.oauth_forms) == 1
    assert served.stat("status:401") >= 1
    stored = json.loads(path.read_text())["profiles"]["work"]
    assert stored["token"] != access and stored["token"] in served.emulator.tokens
    assert access not in out + err and refresh not in out + err


def test_a_mid_run_death_is_renewed_only_once(tmp_path: Path, make_served: Any) -> None:
    served = make_served(DatasetSpec(files=40, depth=2, fanout=2, max_size=16 * 1024))
    access, refresh = served.emulator.issue_login()
    served.emulator.token_deaths[access] = 4
    _login_files(tmp_path, served, expires_in=3000, refresh=refresh, access=access)
    real_issue = served.emulator.issue_login

    def issue_a_short_lived_login() -> tuple[str, str]:
        new_access, new_refresh = real_issue()
        served.emulator.token_deaths[new_access] = 0  # the renewed token dies at once too
        return new_access, new_refresh

    served.emulator.issue_login = issue_a_short_lived_login  # type: ignore[method-assign]
    code, _out, err = run("get", f"ws:{served.ws}/root", "-d", str(tmp_path / "o"))
    assert code == 3
    assert len(served.emulator.oauth_forms) == 1
    assert "the API refused the token" in err


def test_a_mid_run_death_without_a_refresh_token_exits_3(tmp_path: Path, make_served: Any) -> None:
    served = make_served(DatasetSpec(files=40, depth=2, fanout=2, max_size=16 * 1024))
    access, _refresh = served.emulator.issue_login()
    served.emulator.token_deaths[access] = 4
    _login_files(tmp_path, served, expires_in=3000, refresh=None, access=access)
    code, _out, err = run("get", f"ws:{served.ws}/root", "-d", str(tmp_path / "o"))
    assert code == 3
    assert served.emulator.oauth_forms == []
    assert "the API refused the token" in err
