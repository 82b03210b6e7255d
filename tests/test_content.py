"""Notes, versions and File Shares against the emulator, through the real CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from fastio_dl.emulator import BytesBlob, DatasetSpec, EmulatorThread, build
from fastio_dl.emulator.data import Node
from tests.conftest import Served, tree_digests, write_manifest

NOTE_TEXT = "# Note 0\n\nWritten here.\n"


def the_note(served: Served) -> Node:
    return next(n for n in served.space.nodes.values() if n.type == "note")


def a_file(served: Served, name: str = "quarterly report.pdf") -> Node:
    return next(n for n in served.space.files() if n.name == name)


# ----------------------------------------------------------------------------- notes


def test_notes_are_skipped_and_counted_without_notes(served: Served, tmp_path: Path) -> None:
    result = served.cli("get", f"ws:{served.ws}/root", "-d", str(tmp_path), "--json")
    assert result.exit_code == 0, result.stderr
    skipped = [f for f in result.files() if f["status"] == "skipped"]
    assert {Path(f["path"]).name for f in skipped} == {"note-0", "link-0"}
    assert not list(tmp_path.rglob("*.md"))
    assert served.stat("readnote") == 0


def test_get_notes_saves_each_note_as_markdown(served: Served, tmp_path: Path) -> None:
    result = served.cli("get", f"ws:{served.ws}/root", "-d", str(tmp_path), "--notes", "--json")
    assert result.exit_code == 0, result.stderr
    note = tmp_path / served.space.path_of(the_note(served).id)
    saved = note.with_name("note-0.md")
    assert saved.read_text(encoding="utf-8") == NOTE_TEXT
    assert result.summary()["downloaded"] == len(served.expected()) + 1
    assert result.summary()["skipped"] == 1  # the link
    # again: the text is read and compared, the file left as it is
    again = served.cli("get", f"ws:{served.ws}/root", "-d", str(tmp_path), "--notes", "--json")
    record = next(f for f in again.files() if f["path"].endswith("note-0.md"))
    assert record["status"] == "skipped"


def _synced_with_notes(served: Served, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A sync --notes of the whole workspace: the manifest, the destination, the saved note."""
    manifest = write_manifest(tmp_path / "m.txt", [f"ws:{served.ws}/root"])
    dest = tmp_path / "out"
    first = served.cli("sync", str(manifest), "-d", str(dest), "--notes")
    assert first.exit_code == 0, first.stderr
    saved = next(dest.rglob("note-0.md"))
    assert saved.read_text() == NOTE_TEXT
    return manifest, dest, saved


def test_sync_tracks_notes_by_version(served: Served, tmp_path: Path) -> None:
    manifest, dest, saved = _synced_with_notes(served, tmp_path)
    assert served.stat("readnote") == 1
    # unchanged version: not even read again
    second = served.cli("sync", str(manifest), "-d", str(dest), "--notes", "--json")
    assert second.exit_code == 0
    assert served.stat("readnote") == 1
    record = next(f for f in second.files() if f["path"].endswith("note-0.md"))
    assert record["status"] == "skipped"
    # an edit makes a new version: the new text replaces the old
    note = the_note(served)
    served.server.call(lambda: served.space.replace(note.id, BytesBlob(b"# Note 0\n\nEdited.\n")))
    third = served.cli("sync", str(manifest), "-d", str(dest), "--notes")
    assert third.exit_code == 0, third.stderr
    assert saved.read_text() == "# Note 0\n\nEdited.\n"
    assert served.stat("readnote") == 2


def test_sync_delete_without_notes_keeps_the_saved_notes(served: Served, tmp_path: Path) -> None:
    """Leaving --notes off selects less; it does not make the saved notes "gone" (as rsync
    keeps excluded files without --delete-excluded). A note deleted remotely still goes."""
    manifest, dest, saved = _synced_with_notes(served, tmp_path)
    plain = served.cli("sync", str(manifest), "-d", str(dest), "--delete")
    assert plain.exit_code == 0, plain.stderr
    assert saved.read_text() == NOTE_TEXT
    assert "deleted" not in plain.stdout + plain.stderr
    note = the_note(served)
    served.server.call(lambda: served.space.remove(note.id))
    gone = served.cli("sync", str(manifest), "-d", str(dest), "--delete", "--notes")
    assert gone.exit_code == 0, gone.stderr
    assert not saved.exists()


def test_a_note_link_downloads_that_note_only(served: Served, tmp_path: Path) -> None:
    note = the_note(served)
    url = f"https://acme.fast.io/workspace/{served.ws}/storage/root?note={note.id}"
    result = served.cli("get", url, "-d", str(tmp_path), "--json")
    assert result.exit_code == 0, result.stderr
    assert tree_digests(tmp_path) == {"note-0.md": hashlib.sha256(NOTE_TEXT.encode()).hexdigest()}


def test_ls_notes_shows_the_saved_names_and_manifest_lines(served: Served) -> None:
    plain = served.cli("ls", f"ws:{served.ws}/root", "--manifest")
    assert "note-0" not in plain.stdout
    listed = served.cli("ls", f"ws:{served.ws}/root", "--manifest", "--notes")
    note = the_note(served)
    assert f"ws:{served.ws}/{note.id} note-0.md" in listed.stdout.splitlines()


# ----------------------------------------------------------------------------- versions


def _two_versions(served: Served) -> tuple[Node, str, bytes]:
    node = a_file(served)
    old_id = node.version
    assert old_id is not None and node.blob is not None
    old = bytes(node.blob.read(0, node.blob.size))
    served.server.call(lambda: served.space.replace(node.id, BytesBlob(b"the new text" * 1000)))
    return node, old_id, old


def test_ls_versions_lists_ids_sizes_and_the_current_one(served: Served) -> None:
    node, old_id, old = _two_versions(served)
    result = served.cli("ls", f"ws:{served.ws}/{node.id}", "--versions", "--json")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["version"], r["size"], r["current"]) for r in rows] == [
        (old_id, len(old), False),
        (node.version, 12000, True),
    ]
    assert rows[0]["ref"] == f"ws:{served.ws}/{node.id}@{old_id}"
    assert rows[0]["hash"] == hashlib.sha256(old).hexdigest()


def test_get_a_version_downloads_and_verifies_that_version(served: Served, tmp_path: Path) -> None:
    node, old_id, old = _two_versions(served)
    result = served.cli("get", f"ws:{served.ws}/{node.id}@{old_id}", "-d", str(tmp_path))
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / node.name).read_bytes() == old
    missing = served.cli("get", f"ws:{served.ws}/{node.id}@vnosuchversion", "-d", str(tmp_path))
    assert missing.exit_code == 1
    assert "has no version 'vnosuchversion'" in missing.stderr
    assert "ls --versions" in missing.stderr


def test_a_version_and_the_current_file_do_not_share_a_path(served: Served, tmp_path: Path) -> None:
    node, old_id, _old = _two_versions(served)
    result = served.cli(
        "get",
        f"ws:{served.ws}/{node.id}",
        f"ws:{served.ws}/{node.id}@{old_id}",
        "-d",
        str(tmp_path),
    )
    assert result.exit_code == 1
    assert "is already taken" in result.stderr


# ----------------------------------------------------------------------------- File Shares


def test_a_public_file_share_needs_no_token(served: Served, tmp_path: Path) -> None:
    node = a_file(served)
    share = served.server.call(lambda: served.emulator.store.add_fileshare(served.space, node.id))
    result = served.cli("get", f"fileshare:{share.id}", "-d", str(tmp_path), token=None)
    assert result.exit_code == 0, result.stderr
    assert tree_digests(tmp_path) == {node.name: node.blob.digest("sha256")}  # type: ignore[union-attr]
    assert served.stat("fileshare_read") == 1
    assert all("Authorization" not in r["headers"] for r in served.emulator.requests)


def test_a_file_share_password_goes_only_in_its_header(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = a_file(served)
    share = served.server.call(
        lambda: served.emulator.store.add_fileshare(served.space, node.id, password="s3cret-pw")
    )
    refused = served.cli("get", f"fileshare:{share.id}", "-d", str(tmp_path / "a"))
    assert refused.exit_code == 1
    assert "needs FASTIO_FILESHARE_PASSWORD or --password-file" in refused.stderr
    monkeypatch.setenv("FASTIO_FILESHARE_PASSWORD", "s3cret-pw")
    served.emulator.requests.clear()
    done = served.cli("get", f"fileshare:{share.id}", "-d", str(tmp_path / "b"), "--json")
    assert done.exit_code == 0, done.stderr
    assert (tmp_path / "b" / node.name).stat().st_size == node.blob.size  # type: ignore[union-attr]
    sent = {r["path"]: r["headers"].get("x-ve-password") for r in served.emulator.requests}
    assert {p for p in sent if "/fileshare/" in p} == {
        f"/current/fileshare/{share.id}/details/",
        f"/current/fileshare/{share.id}/storage/read/",
    }
    # the password goes to the File Share's own endpoints and nowhere else
    assert all((pw == "s3cret-pw") == ("/fileshare/" in p) for p, pw in sent.items())
    assert "s3cret-pw" not in done.stdout + done.stderr


def test_a_wrong_password_file_fails_that_link(served: Served, tmp_path: Path) -> None:
    node = a_file(served)
    share = served.server.call(
        lambda: served.emulator.store.add_fileshare(served.space, node.id, password="right")
    )
    pw = tmp_path / "pw"
    pw.write_text("wrong\n")
    result = served.cli(
        "get", f"fileshare:{share.id}", "-d", str(tmp_path / "o"), "--password-file", str(pw)
    )
    assert result.exit_code == 1
    assert "HTTP 401 Wrong password (code 1650); check the link password" in result.stderr
    empty = tmp_path / "empty"
    empty.write_text("")
    usage = served.cli("get", f"fileshare:{share.id}", "--password-file", str(empty))
    assert usage.exit_code == 2 and "is empty" in usage.stderr


def test_a_file_share_read_never_follows_a_redirect_to_another_origin(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other_emulator, _space = build(DatasetSpec(files=1, notes=0, links=0))
    with EmulatorThread(other_emulator) as other:
        node = a_file(served)
        share = served.server.call(
            lambda: served.emulator.store.add_fileshare(served.space, node.id, password="pw")
        )
        served.emulator.switches.redirect_reads_to = other.base_url
        monkeypatch.setenv("FASTIO_FILESHARE_PASSWORD", "pw")
        result = served.cli("get", f"fileshare:{share.id}", "-d", str(tmp_path))
        assert result.exit_code == 1
        assert "redirect to another origin not followed" in result.stderr
        assert other_emulator.counters["requests"] == 0
        assert not (tmp_path / node.name).exists()


def test_a_file_share_version(served: Served, tmp_path: Path) -> None:
    node, old_id, old = _two_versions(served)
    share = served.server.call(lambda: served.emulator.store.add_fileshare(served.space, node.id))
    result = served.cli("get", f"fileshare:{share.id}@{old_id}", "-d", str(tmp_path), token=None)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / node.name).read_bytes() == old
