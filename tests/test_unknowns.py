"""The real API's unknowns (issue 14): every doubt ends in a loud error, never a wrong result,
and ``sync --delete`` never destroys on doubt. The real CLI against the emulator, answering in
each of the alternative ways the contract lists (fastio-api.md sections 2, 4, 5 and 7)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastio_dl.emulator import (
    LIST_SHAPES,
    DatasetSpec,
    Emulator,
    EmulatorThread,
    Refusal,
    Store,
    Switches,
    generate,
)
from tests.conftest import Served, files_only, write_manifest

READABLE_SHAPES = ("choice", "array", "items", "files", "wrapped", "id_keyed")
DOUBTFUL_SHAPES = ("unknown_key", "cursor_elsewhere", "has_more_no_cursor")


def test_every_shape_is_classified() -> None:
    assert set(READABLE_SHAPES) | set(DOUBTFUL_SHAPES) == set(LIST_SHAPES)


# ----------------------------------------------------------------------------- 1, 2: listings


@pytest.fixture
def small_pages(make_served) -> Served:
    """A nested tree whose folders span several pages (the server's page is 4 children)."""
    served: Served = make_served(DatasetSpec(files=30, depth=1, fanout=2, max_size=2000))
    served.emulator.switches.list_page_size = 4
    return served


@pytest.mark.parametrize("shape", READABLE_SHAPES)
def test_readable_list_shapes_download_everything(
    small_pages: Served, tmp_path: Path, shape: str
) -> None:
    small_pages.emulator.switches.list_shape = shape
    dest = tmp_path / "dest"
    result = small_pages.cli("get", f"ws:{small_pages.ws}/root", "-d", str(dest), "--json")
    assert result.exit_code == 0, result.stderr
    assert files_only(dest) == small_pages.expected()


@pytest.mark.parametrize("shape", DOUBTFUL_SHAPES)
def test_doubtful_list_shapes_fail_the_folder_loudly(
    small_pages: Served, tmp_path: Path, shape: str
) -> None:
    small_pages.emulator.switches.list_shape = shape
    result = small_pages.cli(
        "get", f"ws:{small_pages.ws}/root", "-d", str(tmp_path / "d"), "--json"
    )
    assert result.exit_code == 1, result.stderr
    failures = [r for r in result.files() if r["status"] == "failed"]
    assert failures and all(r["error"].startswith("listing ") for r in failures)
    assert result.summary()["failed"] == len(failures)


def test_unknown_key_names_the_keys_and_debug_shows_the_redacted_shape(
    served: Served, tmp_path: Path
) -> None:
    served.emulator.switches.list_shape = "unknown_key"
    plain = served.cli("get", f"ws:{served.ws}/root", "-d", str(tmp_path / "a"))
    assert plain.exit_code == 1
    assert "listing root: unrecognised answer (keys: data, next_cursor, result)" in plain.stderr
    assert "answer shape" not in plain.stderr
    debug = served.cli("get", f"ws:{served.ws}/root", "-d", str(tmp_path / "b"), "--debug")
    assert debug.exit_code == 1
    assert 'answer shape: {"result": "bool", "data": [{"id": "str"' in debug.stderr
    # Values are replaced by their types: no name of any node is shown.
    assert not any(node.name in debug.stderr for node in served.space.files())


@pytest.mark.parametrize("shape", LIST_SHAPES)
def test_sync_delete_under_every_list_shape_keeps_every_local_file(
    small_pages: Served, tmp_path: Path, shape: str
) -> None:
    dest = tmp_path / "dest"
    lines = [f"ws:{small_pages.ws}/root"]
    first = small_pages.cli("sync", str(write_manifest(tmp_path / "m.txt", lines)), "-d", str(dest))
    assert first.exit_code == 0, first.stderr
    before = files_only(dest)
    assert before == small_pages.expected()
    small_pages.emulator.switches.list_shape = shape
    again = small_pages.cli(
        "sync", str(tmp_path / "m.txt"), "-d", str(dest), "--delete", "--max-delete", "100%"
    )
    assert again.exit_code == (0 if shape in READABLE_SHAPES else 1), again.stderr
    assert files_only(dest) == before
    assert "deleted:" not in again.stderr


def test_a_server_loop_of_cursors_fails_the_folder(small_pages: Served, tmp_path: Path) -> None:
    # The third page points back at the second: the listing never ends by itself.
    small_pages.emulator.switches.list_shape = "array"
    original = small_pages.emulator.endpoints.list_folder

    async def looping(request):  # type: ignore[no-untyped-def]
        response = await original(request)
        if request.query.get("cursor") not in (None, "4"):
            import json

            body = json.loads(response.body)
            body["next_cursor"] = "4"
            response.body = json.dumps(body).encode()
        return response

    small_pages.emulator.endpoints.list_folder = looping  # type: ignore[method-assign]
    small_pages.emulator.app = small_pages.emulator._make_app()
    server = EmulatorThread(small_pages.emulator).start()
    try:
        dest = tmp_path / "d"
        served = Served(server, small_pages.emulator, small_pages.space)
        result = served.cli("get", f"ws:{served.ws}/root", "-d", str(dest), "--json")
    finally:
        server.stop()
    assert result.exit_code == 1
    assert any("a second time" in (r["error"] or "") for r in result.files())


# ----------------------------------------------------------------------------- 2: the guard


def test_delete_guard_refuses_a_mass_deletion_and_max_delete_lifts_it(
    make_served, tmp_path: Path
) -> None:
    served: Served = make_served(
        DatasetSpec(files=24, depth=0, notes=0, links=0, odd_names=False, max_size=100)
    )
    nodes = list(served.space.files())
    dest = tmp_path / "dest"
    all_lines = [f"ws:{served.ws}/{n.id}" for n in nodes]
    assert (
        served.cli(
            "sync", str(write_manifest(tmp_path / "m.txt", all_lines)), "-d", str(dest)
        ).exit_code
        == 0
    )
    # 13 of 24 tracked files would go: more than half and more than 10.
    m = write_manifest(tmp_path / "m.txt", all_lines[:11])
    refused = served.cli("sync", str(m), "-d", str(dest), "--delete")
    assert refused.exit_code == 1
    assert "13 of 24 tracked files would be deleted" in refused.stderr
    assert "nothing deleted" in refused.stderr
    assert len(files_only(dest)) == 24
    # A percentage below the share, or a count below the number: still refused.
    assert (
        served.cli("sync", str(m), "-d", str(dest), "--delete", "--max-delete", "50%").exit_code
        == 1
    )
    assert (
        served.cli("sync", str(m), "-d", str(dest), "--delete", "--max-delete", "12").exit_code == 1
    )
    assert len(files_only(dest)) == 24
    # The dry run says it would refuse, and deletes nothing either.
    dry = served.cli("sync", str(m), "-d", str(dest), "--delete", "--dry-run")
    assert dry.exit_code == 0 and "would refuse" in dry.stderr
    assert len(files_only(dest)) == 24
    allowed = served.cli("sync", str(m), "-d", str(dest), "--delete", "--max-delete", "13")
    assert allowed.exit_code == 0, allowed.stderr
    assert len(files_only(dest)) == 11


def test_delete_guard_lets_small_deletions_through(make_served, tmp_path: Path) -> None:
    served: Served = make_served(
        DatasetSpec(files=12, depth=0, notes=0, links=0, odd_names=False, max_size=100)
    )
    lines = [f"ws:{served.ws}/{n.id}" for n in served.space.files()]
    dest = tmp_path / "dest"
    assert (
        served.cli(
            "sync", str(write_manifest(tmp_path / "m.txt", lines)), "-d", str(dest)
        ).exit_code
        == 0
    )
    # 10 of 12: more than half, but not more than 10.
    result = served.cli(
        "sync", str(write_manifest(tmp_path / "m.txt", lines[:2])), "-d", str(dest), "--delete"
    )
    assert result.exit_code == 0, result.stderr
    assert len(files_only(dest)) == 2


@pytest.mark.parametrize("bad", ["many", "-1", "150%", "x%"])
def test_max_delete_takes_a_count_or_a_percentage(served: Served, tmp_path: Path, bad: str) -> None:
    m = write_manifest(tmp_path / "m.txt", [f"ws:{served.ws}/root"])
    result = served.cli("sync", str(m), "-d", str(tmp_path / "d"), "--delete", "--max-delete", bad)
    assert result.exit_code == 2
    assert "--max-delete takes a count like 50 or a percentage like 25%" in result.stderr


def test_sync_delete_deletes_nothing_when_a_workspace_refuses(make_served, tmp_path: Path) -> None:
    served: Served = make_served(DatasetSpec(files=8, depth=0, notes=0, links=0, max_size=100))
    dest = tmp_path / "dest"
    m = write_manifest(tmp_path / "m.txt", [f"ws:{served.ws}/root"])
    assert served.cli("sync", str(m), "-d", str(dest)).exit_code == 0
    served.emulator.switches.refusals = [Refusal(401, 10545, "Not a member", space=served.ws)]
    result = served.cli("sync", str(m), "-d", str(dest), "--delete", "--max-delete", "100%")
    assert result.exit_code == 1
    assert "not a member of this workspace" in result.stderr
    assert len(files_only(dest)) == 8


# ----------------------------------------------------------------------------- 3: refusals


@pytest.fixture
def two_workspaces() -> Served:
    store = Store(seed=3)
    good = store.add_space("workspace", "good", "1111111111111111111")
    generate(good, DatasetSpec(files=12, depth=1, fanout=2, max_size=3000, seed=3))
    closed = store.add_space("workspace", "closed", "2222222222222222222")
    generate(closed, DatasetSpec(files=5, depth=0, max_size=3000, seed=4))
    emulator = Emulator(store, Switches())
    emulator.switches.refusals = [
        Refusal(401, 10545, "You are not a member of this workspace", space=closed.id)
    ]
    server = EmulatorThread(emulator).start()
    yield Served(server, emulator, good)
    server.stop()


def test_a_workspace_that_refuses_does_not_stop_the_other(
    two_workspaces: Served, tmp_path: Path
) -> None:
    served = two_workspaces
    dest = tmp_path / "dest"
    result = served.cli(
        "get",
        "ws:2222222222222222222/root",
        f"ws:{served.ws}/root",
        "-d",
        str(dest),
        "--json",
    )
    assert result.exit_code == 1, result.stderr
    assert files_only(dest) == served.expected()
    failed = [r for r in result.files() if r["status"] == "failed"]
    assert len(failed) == 1
    error = failed[0]["error"]
    assert "HTTP 401 You are not a member of this workspace (code 10545)" in error
    assert "not a member of this workspace; ask an owner" in error
    assert "check the token" not in result.stderr
    assert served.stat("check") == 1  # at the start; the 401 seconds later needs no other


def test_a_restricted_file_fails_alone_with_the_servers_text(
    served: Served, tmp_path: Path
) -> None:
    target = next(iter(served.space.files()))
    served.emulator.switches.refusals = [
        Refusal(403, 10560, "File is restricted", endpoints=("read", "requestread"), node=target.id)
    ]
    dest = tmp_path / "dest"
    result = served.cli("get", f"ws:{served.ws}/root", "-d", str(dest), "--json")
    assert result.exit_code == 1
    failed = [r for r in result.files() if r["status"] == "failed"]
    assert [r["node_id"] for r in failed] == [target.id]
    assert "HTTP 403 File is restricted (code 10560)" in failed[0]["error"]
    assert "outside the token's scope" in failed[0]["error"]
    assert result.summary()["downloaded"] == len(served.expected()) - 1


def test_a_file_not_shared_with_you_fails_alone(served: Served, tmp_path: Path) -> None:
    target = next(iter(served.space.files()))
    served.emulator.switches.refusals = [
        Refusal(401, 115069, "Not shared with you", endpoints=("details",), node=target.id)
    ]
    others = [n for n in served.space.files() if n.id != target.id][:3]
    refs = [f"ws:{served.ws}/{n.id}" for n in [target, *others]]
    result = served.cli("get", *refs, "-d", str(tmp_path / "d"), "--json")
    assert result.exit_code == 1, result.stderr
    assert result.summary()["downloaded"] == 3
    (failed,) = [r for r in result.files() if r["status"] == "failed"]
    assert "Not shared with you" in failed["error"]


def test_a_dead_token_at_the_start_stops_the_run_with_exit_3(
    served: Served, tmp_path: Path
) -> None:
    result = served.cli("get", f"ws:{served.ws}/root", "-d", str(tmp_path / "d"), token="dead")
    assert result.exit_code == 3
    assert "check the token" in result.stderr
    assert served.stat("read") == 0


def test_a_token_that_dies_mid_run_stops_it_with_exit_3(make_served, tmp_path: Path) -> None:
    served: Served = make_served(DatasetSpec(files=30, depth=0, max_size=1000, notes=0, links=0))
    # The token check, the listing and a few read tokens pass; then the token is revoked.
    served.emulator.switches.revoke_tokens_after = 8
    result = served.cli(
        "get", f"ws:{served.ws}/root", "-d", str(tmp_path / "d"), "--read-mode", "token", "-j", "2"
    )
    assert result.exit_code == 3, result.stderr
    assert "the API refused the token" in result.stderr


@pytest.mark.parametrize(("status", "code"), [(401, 10545), (403, 10560)])
def test_token_mode_requestread_refusal_fails_files_and_ends(
    served: Served, tmp_path: Path, status: int, code: int
) -> None:
    served.emulator.switches.refusals = [
        Refusal(status, code, "Refused", endpoints=("requestread",))
    ]
    result = served.cli(
        "get", f"ws:{served.ws}/root", "-d", str(tmp_path / "d"), "--read-mode", "token", "--json"
    )
    assert result.exit_code == 1
    assert result.summary()["failed"] == len(served.expected())
    assert served.stat("read") == 0


# ----------------------------------------------------------------------------- 6: envelopes


def test_yes_no_envelopes_are_understood(served: Served, tmp_path: Path) -> None:
    served.emulator.switches.yes_no = True
    dest = tmp_path / "dest"
    missing = "2" + "z" * 28
    result = served.cli(
        "get", f"ws:{served.ws}/root", f"ws:{served.ws}/{missing}", "-d", str(dest), "--json"
    )
    assert result.exit_code == 1  # the missing node: the all-failed bulk 404 says "no"
    assert files_only(dest) == served.expected()
    (failed,) = [r for r in result.files() if r["status"] == "failed"]
    assert "not found" in failed["error"].lower()


def test_a_refusal_under_http_200_is_not_retried(served: Served, tmp_path: Path) -> None:
    target = next(iter(served.space.files()))
    served.emulator.switches.refusals = [
        Refusal(200, 1650, "Read not allowed", endpoints=("requestread",), node=target.id)
    ]
    result = served.cli(
        "get",
        f"ws:{served.ws}/{target.id}",
        "-d",
        str(tmp_path / "d"),
        "--read-mode",
        "token",
        "--json",
    )
    assert result.exit_code == 1
    assert "Read not allowed" in result.files()[0]["error"]
    assert served.stat("requestread") == 1


def test_reads_ask_for_the_stored_bytes_as_they_are(served: Served, tmp_path: Path) -> None:
    result = served.cli("get", f"ws:{served.ws}/root", "-d", str(tmp_path / "d"))
    assert result.exit_code == 0, result.stderr
    reads = [r for r in served.emulator.reads if r["endpoint"] == "read"]
    assert reads and all(r["accept_encoding"] == "identity" for r in reads)
    assert served.stat("check") == 1  # the token, checked once at the start


def test_every_read_pins_the_listed_version(make_served, tmp_path: Path) -> None:
    served: Served = make_served(DatasetSpec(files=6, depth=0, notes=0, links=0, min_size=10))
    nodes = list(served.space.files())
    listed = {n.id: n.version for n in nodes}
    result = served.cli(
        "get", f"ws:{served.ws}/root", "-d", str(tmp_path / "d"), "--read-mode", "token"
    )
    assert result.exit_code == 0, result.stderr
    reads = served.emulator.reads
    assert {r["endpoint"] for r in reads} == {"read", "requestread"}
    assert all(r["version_id"] == listed[r["node"]] for r in reads)


def test_a_file_replaced_mid_run_is_read_as_listed(make_served, tmp_path: Path) -> None:
    from fastio_dl.emulator import BytesBlob

    served: Served = make_served(DatasetSpec(files=1, depth=0, notes=0, links=0, min_size=10))
    (node,) = served.space.files()
    old = node.blob.read(0, node.blob.size)
    original = served.emulator.reading.read

    async def replace_then_read(request):  # type: ignore[no-untyped-def]
        if node.version == node.versions[0].id:
            served.space.replace(node.id, BytesBlob(b"a newer version"))
        return await original(request)

    served.emulator.reading.read = replace_then_read  # type: ignore[method-assign]
    served.emulator.app = served.emulator._make_app()
    with EmulatorThread(served.emulator) as server:
        again = Served(server, served.emulator, served.space)
        result = again.cli("get", f"ws:{again.ws}/{node.id}", "-d", str(tmp_path / "d"))
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "d" / node.name).read_bytes() == old
