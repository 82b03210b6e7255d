"""Options: one default for each, sizes read and written back the same way."""

from __future__ import annotations

import pytest
from typer.main import get_command

from fastio_dl.cli import app
from fastio_dl.config import EMPTY_CONFIG, Settings
from fastio_dl.errors import UsageError
from fastio_dl.options import parse_size, size_text, transfer_settings

DEFAULTS_SHARED = (
    "dest",
    "concurrency",
    "retries",
    "stall_timeout",
    "backoff_initial",
    "max_retry_wait",
    "no_clobber",
    "read_mode",
    "segments",
    "segment_threshold",
    "shard",
    "limit_rate",
    "fsync",
    "notes",
)


@pytest.mark.parametrize("command", ["get", "sync"])
def test_a_command_left_at_its_defaults_builds_the_library_defaults(command: str) -> None:
    params = get_command(app).commands[command].params  # type: ignore[attr-defined]
    values = {param.name: param.default for param in params}
    settings = transfer_settings(values, EMPTY_CONFIG)
    library = Settings()
    assert {name: getattr(settings, name) for name in DEFAULTS_SHARED} == {
        name: getattr(library, name) for name in DEFAULTS_SHARED
    }


@pytest.mark.parametrize("size", [0, 1, 1000, 1024, 1536, 64 * 1024**2, 3 * 1024**3, 2 * 1024**4])
def test_a_size_written_as_an_option_reads_back_the_same(size: int) -> None:
    assert parse_size(size_text(size), "--x") == size


def test_size_text_picks_the_largest_whole_unit() -> None:
    assert [size_text(n) for n in (64 * 1024**2, 1536, 1024**3, 7)] == ["64M", "1536", "1G", "7"]
    with pytest.raises(UsageError):
        parse_size("-1M", "--segment-threshold")
