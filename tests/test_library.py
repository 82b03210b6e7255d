"""The library API: the README's "Use from Python" example, run against the emulator."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

import fastio_dl
from fastio_dl.config import Settings
from fastio_dl.emulator import DEFAULT_TOKEN
from tests.conftest import Served, files_only

ROOT = Path(__file__).resolve().parent.parent


def readme_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Use from Python\n", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_example_downloads_and_syncs(
    served: Served,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FASTIO_TOKEN", DEFAULT_TOKEN)
    # The example names no server: here it is the emulator.
    monkeypatch.setattr(
        fastio_dl, "Settings", functools.partial(Settings, api_base=served.server.api_base)
    )
    code = readme_example().replace("WORKSPACE_ID", served.ws)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out.splitlines()
    files = len(served.expected())
    assert f"{files} downloaded, 0 failed" in out
    assert sum(line.startswith("downloaded mirror/") for line in out) == files
    assert out[-1] == f"{files} files already there, now tracked;"
    assert files_only(tmp_path / "mirror") == served.expected()


def test_a_stopper_ends_a_run_as_an_interrupt_does(served: Served, tmp_path: Path) -> None:
    stopper = fastio_dl.Stopper()
    stopper.stop()  # before the run starts: nothing starts
    settings = Settings(token=DEFAULT_TOKEN, api_base=served.server.api_base, dest=tmp_path)
    outcome = fastio_dl.download([f"ws:{served.ws}/root"], settings, stopper=stopper)
    assert outcome.interrupted and outcome.downloaded == 0
    failed = {f.kind for f in outcome.files if f.status == "failed"}
    assert failed == {fastio_dl.Kind.NOT_STARTED}
    assert not any(tmp_path.rglob("*.bin"))


def test_a_plain_token_string_never_shows_in_a_repr() -> None:
    settings = Settings(token="tok-1234567890")
    assert "tok-1234567890" not in repr(settings)


def test_the_package_exports_what_it_lists() -> None:
    for name in fastio_dl.__all__:
        assert getattr(fastio_dl, name) is not None
    with pytest.raises(AttributeError):
        _ = fastio_dl.no_such_name  # type: ignore[attr-defined]
