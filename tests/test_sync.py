"""sync against the emulator: incremental, exact, locked, and safe to kill."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

from fastio_dl import syncing
from fastio_dl.emulator import BytesBlob, DatasetSpec, SeededBlob
from fastio_dl.manifest import parse_manifest
from fastio_dl.policy import in_shard
from fastio_dl.syncing import destination_lock
from tests.conftest import Served, files_only, tree_digests, write_manifest


@pytest.fixture
def synced(make_served, tmp_path: Path):
    served: Served = make_served(DatasetSpec(files=40, depth=2, fanout=2, max_size=40_000))
    manifest = write_manifest(tmp_path / "m.txt", [f"ws:{served.ws}/root"])
    dest = tmp_path / "dest"
    first = served.cli("sync", str(manifest), "-d", str(dest), "--json")
    assert first.exit_code == 0, first.stderr
    return served, manifest, dest, first


def test_first_sync_downloads_everything(synced) -> None:
    served, _manifest, dest, first = synced
    assert files_only(dest) == served.expected()
    assert first.summary()["downloaded"] == 40
    assert (dest / ".fastio-dl" / "state.db").is_file()


def test_second_sync_moves_nothing_and_mints_no_token(synced) -> None:
    served, manifest, dest, _ = synced
    served.server.call(served.emulator.reset_counters)
    again = served.cli("sync", str(manifest), "-d", str(dest), "--json")
    assert again.exit_code == 0
    assert again.summary()["downloaded"] == 0 and again.summary()["skipped"] == 42  # + note, link
    counters = served.emulator.counters
    assert counters["tokens_minted"] == 0 and counters["requestread"] == 0 and counters["read"] == 0
    # The listings and the token check at the start: nothing else.
    assert set(k for k in counters if not k.startswith("status:")) <= {"list", "check", "requests"}
    assert counters["check"] == 1


def test_skipped_files_leftovers_are_tidied_and_nothing_else(synced) -> None:
    # A run killed between the rename and the sidecar cleanup leaves NAME.part.json; a stale
    # NAME.part may lie beside a file that is complete. Other .part files are not ours to drop.
    served, manifest, dest, _ = synced
    finals = sorted(p for p in dest.rglob("*.bin") if ".fastio-dl" not in p.parts)
    tidied = [Path(f"{p}{suffix}") for p in finals[:3] for suffix in (".part", ".part.json")]
    for path in tidied:
        path.write_bytes(b"left over")
    unrelated = finals[0].with_name("not-planned.bin.part")
    unrelated.write_bytes(b"someone else's")
    again = served.cli("sync", str(manifest), "-d", str(dest), "--json")
    assert again.exit_code == 0, again.stderr
    assert again.summary()["downloaded"] == 0
    assert not [p for p in tidied if p.exists()]
    assert unrelated.read_bytes() == b"someone else's"


def test_changed_remote_file_is_replaced_others_untouched(synced) -> None:
    served, manifest, dest, _ = synced
    files = list(served.space.files())
    changed = files[5]
    before = {p: (os.stat(p).st_ino, os.stat(p).st_mtime_ns) for p in dest.rglob("*.bin")}
    served.server.call(lambda: served.space.replace(changed.id, BytesBlob(b"new version")))
    result = served.cli("sync", str(manifest), "-d", str(dest), "--json")
    assert result.exit_code == 0, result.stderr
    assert result.summary()["downloaded"] == 1
    target = dest / served.space.path_of(changed.id)
    assert target.read_bytes() == b"new version"
    for path, ident in before.items():
        if path != target:
            assert (os.stat(path).st_ino, os.stat(path).st_mtime_ns) == ident
    assert files_only(dest) == served.expected()


def test_dry_run_changes_nothing(make_served, tmp_path: Path) -> None:
    served: Served = make_served(DatasetSpec(files=8, depth=1, fanout=2))
    dest = tmp_path / "dest"
    manifest = write_manifest(tmp_path / "m.txt", [f"ws:{served.ws}/root"])
    result = served.cli("sync", str(manifest), "-d", str(dest), "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "dry run: would download 8" in result.stderr
    assert files_only(dest) == {}
    assert served.stat("tokens_minted") == 0 and served.stat("read") == 0


def test_untracked_identical_file_is_adopted(make_served, tmp_path: Path) -> None:
    served: Served = make_served(DatasetSpec(files=3, depth=0, odd_names=False))
    node = next(iter(served.space.files()))
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / node.name).write_bytes(node.blob.read(0, node.blob.size))
    manifest = write_manifest(tmp_path / "m.txt", [f"ws:{served.ws}/{node.id}"])
    result = served.cli("sync", str(manifest), "-d", str(dest), "--json")
    assert result.exit_code == 0
    assert result.summary()["skipped"] == 1 and served.stat("read") == 0


def test_manifest_dest_column(served: Served, tmp_path: Path) -> None:
    node = next(iter(served.space.files()))
    folder = next(
        n for n in served.space.nodes.values() if n.type == "folder" and n.parent == "root"
    )
    manifest = write_manifest(
        tmp_path / "m.txt",
        [
            f"ws:{served.ws}/{node.id}   renamed dir/my file.bin  ",
            f"ws:{served.ws}/{folder.id} mirror/sub",
        ],
    )
    dest = tmp_path / "dest"
    result = served.cli("sync", str(manifest), "-d", str(dest))
    assert result.exit_code == 0, result.stderr
    assert (dest / "renamed dir" / "my file.bin").read_bytes() == node.blob.read(0, node.blob.size)
    prefix = served.space.path_of(folder.id) + "/"
    below = {
        k.removeprefix(prefix): v for k, v in served.expected().items() if k.startswith(prefix)
    }
    assert below and tree_digests(dest / "mirror" / "sub") == below
    assert not (dest / folder.name).exists()


def test_bad_manifest_lines_all_reported_nothing_downloaded(served: Served, tmp_path: Path) -> None:
    good = next(iter(served.space.files())).id
    manifest = write_manifest(
        tmp_path / "m.txt",
        [
            f"ws:{served.ws}/{good} a.bin",  # line 3: fine
            "not-a-ref",  # line 4
            f"ws:{served.ws}/{good} /etc/passwd",  # line 5: absolute
            f"ws:{served.ws}/{good} ../up.bin",  # line 6: escapes
            f"ws:{served.ws}/{good} a.bin",  # line 7: same DEST as line 3
        ],
    )
    result = served.cli("sync", str(manifest), "-d", str(tmp_path / "dest"))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert [line.split(":")[1] for line in lines] == ["4", "5", "6", "7"]
    assert all(line.startswith(f"{manifest}:") for line in lines)
    assert served.stat("requests") == 0


def test_empty_manifest_needs_allow_empty(served: Served, tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m.txt", [])
    assert served.cli("sync", str(manifest), "-d", str(tmp_path / "d")).exit_code == 2
    assert (
        served.cli("sync", str(manifest), "-d", str(tmp_path / "d"), "--allow-empty").exit_code == 0
    )


def test_manifest_from_stdin_and_failed_manifest(served: Served, tmp_path: Path) -> None:
    good = next(iter(served.space.files())).id
    missing = "2" + "z" * 28
    text = f"ws:{served.ws}/{good}\nws:{served.ws}/{missing} lost.bin\n"
    failed = tmp_path / "failed.txt"
    result = served.cli(
        "sync", "-", "-d", str(tmp_path / "d"), "--failed-manifest", str(failed), input=text
    )
    assert result.exit_code == 1
    assert failed.read_text() == f"ws:{served.ws}/{missing} lost.bin\n"
    assert parse_manifest(failed.read_text(), "failed.txt").targets[0].ref.node == missing


@contextlib.contextmanager
def lock_holder(dest: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that holds DEST's lock until its standard input closes."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path\n"
            "from fastio_dl.syncing import destination_lock\n"
            "with destination_lock(Path(sys.argv[1])):\n"
            "    print('locked', flush=True); sys.stdin.read()",
            str(dest),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        holder.kill()
        holder.wait()


@dataclass
class LockPauses:
    """The pauses of a sync that found its destination's lock taken; ``before`` runs first."""

    seconds: list[float] = field(default_factory=list)
    before: Callable[[], None] = lambda: None

    def sleep(self, seconds: float) -> None:
        self.seconds.append(seconds)
        self.before()
        time.sleep(seconds)


@pytest.fixture
def pauses(monkeypatch: pytest.MonkeyPatch) -> LockPauses:
    noted = LockPauses()
    clock = SimpleNamespace(monotonic=time.monotonic, sleep=noted.sleep)
    monkeypatch.setattr(syncing, "time", clock)
    return noted


@pytest.mark.parametrize("wait", [0.0, 0.5])
def test_a_sync_on_a_locked_destination_exits_4(
    served: Served, tmp_path: Path, pauses: LockPauses, wait: float
) -> None:
    dest = tmp_path / "dest"
    manifest = write_manifest(tmp_path / "m.txt", [f"ws:{served.ws}/root"])
    with lock_holder(dest) as holder:
        started = time.monotonic()
        result = served.cli("sync", str(manifest), "-d", str(dest), "--wait-lock", str(wait))
        waited = time.monotonic() - started
        assert result.exit_code == 4
        assert f"another fastio-dl sync (pid {holder.pid}) is running on {dest}" in result.stderr
        assert "--wait-lock SECONDS" in result.stderr
        assert served.stat("requests") == 0  # the lock comes before any request
        assert waited >= wait and bool(pauses.seconds) == (wait > 0)
    # the killed holder's lock does not block the next run
    assert served.cli("sync", str(manifest), "-d", str(dest)).exit_code == 0


def test_wait_lock_runs_once_the_other_sync_ends(
    served: Served, tmp_path: Path, pauses: LockPauses
) -> None:
    dest = tmp_path / "dest"
    manifest = write_manifest(tmp_path / "m.txt", [f"ws:{served.ws}/root"])
    with lock_holder(dest) as holder:

        def end_the_other_run() -> None:
            assert holder.stdin is not None
            if not holder.stdin.closed:
                holder.stdin.close()
                holder.wait(10)

        pauses.before = end_the_other_run
        result = served.cli("sync", str(manifest), "-d", str(dest), "--wait-lock", "30", "--json")
        assert holder.returncode == 0  # it ended by itself, which released the lock
    assert result.exit_code == 0, result.stderr
    assert pauses.seconds  # the run met the lock taken, waited, then ran
    assert files_only(dest) == served.expected()
    assert (dest / ".fastio-dl" / "lock").read_text().strip() == str(os.getpid())


def test_lock_is_exclusive_in_process(tmp_path: Path) -> None:
    from fastio_dl.errors import LockedError

    with (
        destination_lock(tmp_path),
        pytest.raises(LockedError),
        destination_lock(tmp_path, wait=0.3),
    ):
        pass


def test_sync_killed_mid_run_is_completed_by_the_next(make_served, tmp_path: Path) -> None:
    served: Served = make_served(
        DatasetSpec(
            files=6, depth=0, min_size=400_000, max_size=600_000, odd_names=False, notes=0, links=0
        )
    )
    big = served.server.call(
        lambda: served.space.add_file("root", "big.bin", SeededBlob(99, 6_000_000))
    )
    served.emulator.switches.bandwidth = 2_000_000
    dest = tmp_path / "dest"
    manifest = write_manifest(tmp_path / "m.txt", [f"ws:{served.ws}/root"])
    proc = subprocess.Popen(
        served.argv("sync", str(manifest), "-d", str(dest), "--progress", "none", "-j", "4"),
    )
    deadline = time.monotonic() + 20
    part = dest / "big.bin.part"
    while time.monotonic() < deadline and not (part.exists() and part.stat().st_size > 1_000_000):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert part.exists() and not (dest / "big.bin").exists()
    kept = part.stat().st_size
    served.emulator.switches.bandwidth = 0
    served.reset_after_kill()
    result = served.cli("sync", str(manifest), "-d", str(dest), "--json")
    assert result.exit_code == 0, result.stderr
    assert files_only(dest) == served.expected()
    assert not list(dest.rglob("*.part*"))
    # the big file resumed where the killed run's .part ended
    ranges = [r["range"] for r in served.emulator.reads if r["node"] == big.id]
    assert ranges == [f"bytes={kept}-"]


# ----------------------------------------------------------------------------- --delete guards


@pytest.fixture
def tracked(make_served, tmp_path: Path):
    """Twelve flat files synced one manifest line each: (served, nodes, manifest, dest)."""
    served: Served = make_served(
        DatasetSpec(files=12, depth=0, notes=0, links=0, odd_names=False, max_size=2000)
    )
    nodes = sorted(served.space.files(), key=lambda n: n.name)
    dest = tmp_path / "dest"
    manifest = write_manifest(tmp_path / "m.txt", [f"ws:{served.ws}/{n.id}" for n in nodes])
    first = served.cli("sync", str(manifest), "-d", str(dest))
    assert first.exit_code == 0, first.stderr
    return served, nodes, manifest, dest


def test_delete_removes_exactly_the_tracked_files_that_left(tracked) -> None:
    served, nodes, manifest, dest = tracked
    (dest / "mine.txt").write_text("untracked")
    write_manifest(manifest, [f"ws:{served.ws}/{n.id}" for n in nodes[2:]])
    kept = served.cli("sync", str(manifest), "-d", str(dest))
    assert kept.exit_code == 0, kept.stderr
    assert sorted(line for line in kept.stderr.splitlines() if line.startswith("gone")) == [
        f"gone from manifest or remote: {n.name} (kept; --delete removes it)" for n in nodes[:2]
    ]
    assert len(list(dest.glob("*.bin"))) == 12
    result = served.cli("sync", str(manifest), "-d", str(dest), "--delete")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in dest.glob("*.bin")) == [n.name for n in nodes[2:]]
    assert (dest / "mine.txt").read_text() == "untracked"


def test_a_plan_failure_deletes_and_reports_nothing(tracked) -> None:
    served, nodes, manifest, dest = tracked
    missing = "2" + "z" * 28
    write_manifest(
        manifest, [f"ws:{served.ws}/{n.id}" for n in nodes[3:]] + [f"ws:{served.ws}/{missing}"]
    )
    before = files_only(dest)
    result = served.cli("sync", str(manifest), "-d", str(dest), "--delete", "--max-delete", "100%")
    assert result.exit_code == 1
    assert "not deleting or reporting 3 tracked file(s): part of the plan failed" in result.stderr
    assert "deleted:" not in result.stderr and "gone from manifest" not in result.stderr
    assert files_only(dest) == before
    # Still tracked: once the plan is whole again, the next --delete removes them.
    write_manifest(manifest, [f"ws:{served.ws}/{n.id}" for n in nodes[3:]])
    again = served.cli("sync", str(manifest), "-d", str(dest), "--delete")
    assert again.exit_code == 0, again.stderr
    assert sorted(p.name for p in dest.glob("*.bin")) == [n.name for n in nodes[3:]]


def test_delete_keeps_a_file_the_user_modified(tracked) -> None:
    served, nodes, manifest, dest = tracked
    rewritten, appended, untouched = (dest / n.name for n in nodes[:3])
    rewritten.write_bytes(bytes(len(rewritten.read_bytes())))  # same size, new bytes and mtime
    with appended.open("ab") as handle:
        handle.write(b"a line of my own")
    write_manifest(manifest, [f"ws:{served.ws}/{n.id}" for n in nodes[3:]])
    result = served.cli("sync", str(manifest), "-d", str(dest), "--delete")
    assert result.exit_code == 0, result.stderr
    assert rewritten.exists() and appended.exists() and not untouched.exists()
    assert f"deleted: {untouched}" in result.stderr
    for path in (rewritten, appended):
        assert f"kept {path}: modified since fastio-dl wrote it; no longer tracked" in result.stderr
    # No longer tracked: a later run neither reports nor deletes them.
    again = served.cli("sync", str(manifest), "-d", str(dest), "--delete")
    assert again.exit_code == 0 and again.stderr.count(str(dest)) == 0, again.stderr
    assert rewritten.exists() and appended.exists()


def test_a_shard_deletes_only_its_own_files(tracked) -> None:
    served, nodes, manifest, dest = tracked
    shard_of = {n.id: next(k for k in range(2) if in_shard(n.id, (k, 2))) for n in nodes}
    gone = {k: [n for n in nodes if shard_of[n.id] == k][:2] for k in range(2)}
    assert all(len(g) == 2 for g in gone.values())  # the seed gives each shard two to lose
    left = [n for n in nodes if n not in gone[0] + gone[1]]
    write_manifest(manifest, [f"ws:{served.ws}/{n.id}" for n in left])
    result = served.cli("sync", str(manifest), "-d", str(dest), "--delete", "--shard", "0/2")
    assert result.exit_code == 0, result.stderr
    names = {p.name for p in dest.glob("*.bin")}
    assert names == {n.name for n in left + gone[1]}
    other = served.cli("sync", str(manifest), "-d", str(dest), "--delete", "--shard", "1/2")
    assert other.exit_code == 0, other.stderr
    assert {p.name for p in dest.glob("*.bin")} == {n.name for n in left}


@pytest.mark.parametrize(("flags", "verb"), [(["--delete"], "delete"), ([], "report as gone")])
def test_a_dry_run_lists_what_it_would_delete(tracked, flags: list[str], verb: str) -> None:
    served, nodes, manifest, dest = tracked
    write_manifest(manifest, [f"ws:{served.ws}/{n.id}" for n in nodes[2:]])
    before = files_only(dest)
    result = served.cli("sync", str(manifest), "-d", str(dest), "--dry-run", *flags)
    assert result.exit_code == 0, result.stderr
    assert (
        f"dry run: would download 0 (0 B), replace 0 (0 B), adopt 0 (0 B); {verb} 2"
        in result.stderr
    )
    listed = sorted(line for line in result.stderr.splitlines() if f"would {verb}:" in line)
    assert listed == sorted(f"dry run: would {verb}: {n.name}" for n in nodes[:2])
    assert files_only(dest) == before and "deleted:" not in result.stderr
    # The dry run forgot nothing: the real run deletes the same two.
    real = served.cli("sync", str(manifest), "-d", str(dest), "--delete")
    assert sorted(
        line for line in real.stderr.splitlines() if line.startswith("deleted:")
    ) == sorted(f"deleted: {dest / n.name}" for n in nodes[:2])


def test_a_large_unchanged_tree_is_settled_page_by_page_yet_checked_file_by_file(
    make_served, tmp_path: Path
) -> None:
    """Up-to-date files are reported as their listing page is planned (not queued); each once,
    and a file changed locally, or under a directory that now leads outside, is not among them."""
    served: Served = make_served(DatasetSpec(files=300, depth=1, fanout=2, notes=0, links=0))
    manifest = write_manifest(tmp_path / "m.txt", [f"ws:{served.ws}/root"])
    dest = tmp_path / "dest"
    assert served.cli("sync", str(manifest), "-d", str(dest), "--json").exit_code == 0
    finals = sorted(p for p in dest.rglob("*") if p.is_file() and ".fastio-dl" not in p.parts)
    folders = sorted({p.parent for p in finals} - {dest})
    assert len(finals) == 300 and len(folders) == 2
    edited = [p for p in finals if p.parent == folders[0]][-1]  # late in its page
    edited.write_bytes(b"edited here")
    outside = tmp_path / "outside"
    folders[1].rename(outside)
    folders[1].symlink_to(outside)
    served.server.call(served.emulator.reset_counters)
    again = served.cli("sync", str(manifest), "-d", str(dest), "--json")
    assert again.exit_code != 0
    by_path: dict[str, list[dict[str, object]]] = {}
    for line in again.files():
        by_path.setdefault(str(line["path"]), []).append(line)
    assert sorted(by_path) == sorted(map(str, finals)) and all(
        len(v) == 1 for v in by_path.values()
    )
    status = {path: lines[0]["status"] for path, lines in by_path.items()}
    assert status[str(edited)] == "downloaded" and edited.read_bytes() != b"edited here"
    assert {status[str(p)] for p in finals if p.parent == folders[1]} == {"failed"}
    assert all(
        status[str(p)] == "skipped" for p in finals if p.parent != folders[1] and p != edited
    )
    behind_link = [p for p in finals if p.parent == folders[1]][-1]
    assert "outside the destination" in str(by_path[str(behind_link)][0]["error"])
    assert served.emulator.counters["read"] == 1
