"""Durability: a state record never claims a file that a crash could still lose.

The group sync (``syncfs``) and the state commit are observed from inside a real sync against
the emulator: every record committed must name a file that a sync finished with on disk.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from fastio_dl import durability, storage
from fastio_dl import state as state_module
from fastio_dl.emulator import DatasetSpec
from fastio_dl.state import State
from tests.conftest import Served, tree_digests


def _on_disk(dest: Path) -> set[str]:
    return {
        p.relative_to(dest).as_posix()
        for p in dest.rglob("*")
        if p.is_file() and ".fastio-dl" not in p.parts
    }


@pytest.fixture
def watched(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Counts group syncs and records what was on disk when each one ran, and checks every
    state commit against it."""
    dest = tmp_path / "dest"
    seen: dict[str, object] = {"syncs": 0, "synced": set(), "committed": [], "late": []}
    real_syncfs, real_put_many = durability.syncfs, State.put_many

    def syncfs(fd: int) -> None:
        # What is on disk when the sync starts is what the sync covers.
        covered = _on_disk(dest) if dest.exists() else set()
        real_syncfs(fd)
        seen["syncs"] += 1  # type: ignore[operator]
        seen["synced"] |= covered  # type: ignore[operator]

    def put_many(self: State, records: object) -> None:
        records = list(records)  # type: ignore[call-overload]
        for record in records:
            seen["committed"].append(record.path)  # type: ignore[attr-defined]
            if record.path not in seen["synced"]:  # type: ignore[operator]
                seen["late"].append(record.path)  # type: ignore[attr-defined]
        real_put_many(self, records)

    monkeypatch.setattr(durability, "syncfs", syncfs)
    monkeypatch.setattr(state_module.State, "put_many", put_many)
    return dest, seen


def test_records_are_committed_only_after_a_group_sync_covers_their_files(
    make_served, tmp_path: Path, watched
) -> None:
    if not durability.has_syncfs():
        pytest.skip("syncfs(2) is Linux-only; elsewhere every file is fsynced on its own")
    dest, seen = watched
    served: Served = make_served(DatasetSpec(files=120, depth=1, fanout=3, max_size=3000))
    manifest = tmp_path / "m.txt"
    manifest.write_text(f"ws:{served.ws}/root\n", encoding="utf-8")
    result = served.cli("sync", str(manifest), "-d", str(dest), "--json", "-j", "8")
    assert result.exit_code == 0, result.stderr
    assert result.summary()["downloaded"] == 120
    assert sorted(seen["committed"]) == sorted(_on_disk(dest))  # type: ignore[arg-type]
    assert seen["late"] == []  # no record came before the sync that covered its file
    # Grouped: far fewer syncs than files.
    assert 1 <= seen["syncs"] < 120  # type: ignore[operator]
    # An untracked identical file is adopted: recorded after a sync too.
    db = State(dest / ".fastio-dl" / "state.db")
    victim = sorted(_on_disk(dest))[0]
    db.forget(victim)
    db.close()
    seen["committed"], seen["synced"] = [], set()
    again = served.cli("sync", str(manifest), "-d", str(dest), "--json")
    assert again.exit_code == 0, again.stderr
    assert seen["committed"] == [victim] and seen["late"] == []
    assert any("adopted" in line for line in again.stderr.splitlines())


def test_a_failed_group_sync_records_nothing_and_fails_its_files(
    make_served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not durability.has_syncfs():
        pytest.skip("syncfs(2) is Linux-only; elsewhere every file is fsynced on its own")

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(durability, "syncfs", broken)
    served: Served = make_served(DatasetSpec(files=10, depth=0, max_size=2000))
    manifest = tmp_path / "m.txt"
    manifest.write_text(f"ws:{served.ws}/root\n", encoding="utf-8")
    dest = tmp_path / "dest"
    result = served.cli("sync", str(manifest), "-d", str(dest), "--json")
    assert result.exit_code == 1
    failed = [r for r in result.files() if r["status"] == "failed"]
    assert len(failed) == 10
    assert all("could not make the file durable" in r["error"] for r in failed)
    db = State(dest / ".fastio-dl" / "state.db")
    try:
        assert db.get(Path(failed[0]["path"]).relative_to(dest).as_posix()) is None
        assert list(db.paths()) == []
    finally:
        db.close()
    # The next run does not trust the unrecorded files blindly: it hashes them, adopts them.
    monkeypatch.undo()
    again = served.cli("sync", str(manifest), "-d", str(dest), "--json")
    assert again.exit_code == 0, again.stderr
    assert again.summary()["downloaded"] == 0
    assert tree_digests(dest).items() >= served.expected().items()


def test_fsync_each_syncs_every_file_before_its_name_and_no_group(
    make_served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    named: list[str] = []
    synced_before_named: list[bool] = []
    fsynced: set[int] = set()
    real_fsync, real_link = os.fsync, os.link

    def fsync(fd: int) -> None:
        fsynced.add(os.fstat(fd).st_ino)
        real_fsync(fd)

    def link(src: str, dst: object, **kwargs: object) -> None:
        fd = int(str(src).rsplit("/", 1)[-1])
        synced_before_named.append(os.fstat(fd).st_ino in fsynced)
        named.append(str(dst))
        real_link(src, dst, **kwargs)  # type: ignore[arg-type]

    def syncfs(fd: int) -> None:
        raise AssertionError("--fsync each must not group syncs")

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(durability, "syncfs", syncfs)
    served: Served = make_served(DatasetSpec(files=12, depth=0, max_size=2000))
    dest = tmp_path / "dest"
    result = served.cli("get", f"ws:{served.ws}/root", "-d", str(dest), "--fsync", "each")
    assert result.exit_code == 0, result.stderr
    assert tree_digests(dest) == served.expected()
    if storage.UNNAMED_FILES:  # small files are linked in from unnamed files
        assert len(named) == 12 and all(synced_before_named)


def test_large_files_sync_their_directories_not_the_file_system(
    make_served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file over 1 MiB is fsynced before its rename; only its name is left to make durable.
    A syncfs would also write out every other program's dirty data on that file system (a
    large download beside another large write would pay for both): its directory is fsynced
    instead, before the record that claims it is committed."""
    dirs_synced: set[int] = set()
    late: list[str] = []
    syncfs_calls: list[int] = []
    real_fsync, real_put_many = os.fsync, State.put_many

    def fsync(fd: int) -> None:
        real_fsync(fd)
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            dirs_synced.add(st.st_ino)

    def put_many(self: State, records: object) -> None:
        records = list(records)  # type: ignore[call-overload]
        for record in records:
            parent = (dest / record.path).parent  # type: ignore[attr-defined]
            if parent.stat().st_ino not in dirs_synced:
                late.append(record.path)  # type: ignore[attr-defined]
        real_put_many(self, records)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(durability, "syncfs", lambda fd: syncfs_calls.append(fd))
    monkeypatch.setattr(State, "put_many", put_many)
    served: Served = make_served(
        DatasetSpec(files=3, depth=1, fanout=2, min_size=1_100_000, max_size=1_500_000)
    )
    manifest = tmp_path / "m.txt"
    manifest.write_text(f"ws:{served.ws}/root\n", encoding="utf-8")
    dest = tmp_path / "dest"
    result = served.cli("sync", str(manifest), "-d", str(dest), "--json")
    assert result.exit_code == 0, result.stderr
    assert result.summary()["downloaded"] == 3
    assert tree_digests(dest).items() >= served.expected().items()
    assert syncfs_calls == []
    assert late == []
    assert dirs_synced  # the check above saw directories fsynced, not nothing at all
