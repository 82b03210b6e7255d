from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastio_dl.errors import TransferError
from fastio_dl.names import MAX_NAME_BYTES, ensure_inside, safe_name, safe_relpath


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../x", ".._.._x"),
        ("..", "__"),
        (".", "_"),
        ("", "_"),
        ("a/b\\c", "a_b_c"),
        ("nul\x00byte\x07", "nul_byte_"),
        ("CON", "_CON"),
        ("lpt1.txt", "_lpt1.txt"),
        ("trailing. ", "trailing"),
    ],
)
def test_safe_name_examples(name: str, expected: str) -> None:
    assert safe_name(name) == expected


def test_long_names_are_shortened_deterministically() -> None:
    long = "é" * 300 + ".tar.gz"
    first, second = safe_name(long), safe_name(long)
    assert first == second
    assert len(first.encode()) <= MAX_NAME_BYTES and first.endswith(".gz")
    assert safe_name("é" * 300 + "x.gz") != first


@settings(max_examples=400, deadline=None)
@given(st.lists(st.text(min_size=0, max_size=300), min_size=1, max_size=4))
def test_no_generated_name_escapes(parts: list[str]) -> None:
    rel = safe_relpath(parts)
    for flavour in (PurePosixPath, PureWindowsPath):
        pure = flavour(rel)
        assert not pure.is_absolute() and not pure.anchor
        assert ".." not in pure.parts
        assert len(pure.parts) == len(parts)
    for part in rel.split("/"):
        assert len(part.encode("utf-8")) <= MAX_NAME_BYTES
        assert not any(ord(c) < 0x20 for c in part)
    dest = Path("/srv/dest")
    assert os.path.normpath(dest / rel).startswith(str(dest) + os.sep)


def test_symlink_leading_outside_is_refused(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    outside = tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "link").symlink_to(outside)
    with pytest.raises(TransferError, match="outside the destination"):
        ensure_inside(dest, dest / "link" / "file.bin")
    assert ensure_inside(dest, dest / "sub" / "file.bin") == dest / "sub" / "file.bin"


def test_empty_at_start_keeps_its_first_answer(tmp_path: Path) -> None:
    from fastio_dl.storage import EmptyAtStart

    empty = EmptyAtStart()
    fresh, busy, missing = tmp_path / "fresh", tmp_path / "busy", tmp_path / "missing"
    fresh.mkdir()
    busy.mkdir()
    (busy / "old.bin").write_bytes(b"x")
    assert empty.holds_nothing(fresh)
    assert not empty.holds_nothing(busy)
    assert empty.holds_nothing(missing)
    assert not empty.holds_nothing(busy / "old.bin")  # not a directory: stat each file
    assert empty.exists(busy / "old.bin") and not empty.exists(busy / "other.bin")
    assert not empty.exists(missing / "a.bin")
    # What this run writes afterwards does not change the answer: it decided on those files.
    (fresh / "new.bin").write_bytes(b"y")
    assert empty.holds_nothing(fresh)
    assert not empty.exists(fresh / "new.bin")


def test_empty_at_start_reads_a_bare_name_as_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``-d .`` spells local paths without a directory: "." is where they are."""
    from fastio_dl.storage import EmptyAtStart

    (tmp_path / "old.bin").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    empty = EmptyAtStart()
    assert empty.exists("old.bin")
    assert not empty.exists("other.bin")


def test_leftovers_are_read_once_per_directory_and_only_named_ones_go(tmp_path: Path) -> None:
    from fastio_dl.storage import Leftovers

    leftovers = Leftovers()
    dirs = [tmp_path / f"d{i}" for i in range(Leftovers.KEEP + 1)]
    for directory in dirs:
        directory.mkdir()
        (directory / "a.bin.part.json").write_bytes(b"{}")
        (directory / "a.bin.part").write_bytes(b"x")
        (directory / "other.bin.part").write_bytes(b"x")
    leftovers.drop(dirs[0] / "a.bin")
    assert _tree(dirs[0]) == ["other.bin.part"]
    # Remembered: a sidecar appearing after the first read is not looked for...
    (dirs[0] / "b.bin.part.json").write_bytes(b"{}")
    leftovers.drop(dirs[0] / "b.bin")
    assert (dirs[0] / "b.bin.part.json").exists()
    # ...until the directory was forgotten (only the last KEEP are kept) and is read again.
    for directory in dirs[1:]:
        leftovers.drop(directory / "a.bin")
        assert _tree(directory) == ["other.bin.part"]
    leftovers.drop(dirs[0] / "b.bin")
    assert _tree(dirs[0]) == ["other.bin.part"]
    leftovers.drop(tmp_path / "missing" / "a.bin")  # no directory: nothing to do


def _tree(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


@pytest.mark.parametrize("unnamed", [True, False])
def test_write_atomic_names_only_whole_files_and_never_follows_links(
    tmp_path: Path, unnamed: bool
) -> None:
    from fastio_dl import storage

    if unnamed and not storage.UNNAMED_FILES:
        pytest.fail("this Linux has O_TMPFILE and /proc: unnamed files should be in use")
    disk = storage.Disk(unnamed=unnamed)
    dest = tmp_path / "dest"
    dest.mkdir()
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep me")
    disk.write_atomic(dest / "new.bin", b"fresh")  # a new name
    disk.write_atomic(dest / "sub" / "deep.bin", b"deep")  # a directory still to make
    (dest / "old.bin").write_bytes(b"old bytes")
    disk.write_atomic(dest / "old.bin", b"replaced")  # an existing name
    (dest / "link.bin").symlink_to(outside)
    disk.write_atomic(dest / "link.bin", b"not through the link")
    (dest / "trap.bin").write_bytes(b"exists")
    (dest / "trap.bin.part").symlink_to(outside)
    try:  # a link planted at NAME.part: refused, or removed and replaced, never followed
        disk.write_atomic(dest / "trap.bin", b"replaced again")
    except storage.WriteError:
        assert not unnamed and (dest / "trap.bin").read_bytes() == b"exists"
    else:
        assert (dest / "trap.bin").read_bytes() == b"replaced again"
    assert outside.read_bytes() == b"keep me"
    assert (dest / "new.bin").read_bytes() == b"fresh"
    assert (dest / "sub" / "deep.bin").read_bytes() == b"deep"
    assert (dest / "old.bin").read_bytes() == b"replaced"
    assert not (dest / "link.bin").is_symlink()
    assert (dest / "link.bin").read_bytes() == b"not through the link"
    names = _tree(dest)
    assert not [n for n in names if n.endswith(".part") and n != "trap.bin.part"]
    umask = os.umask(0)
    os.umask(umask)
    assert (dest / "new.bin").stat().st_mode & 0o777 == 0o644 & ~umask


@pytest.mark.parametrize("fails", ["open", "link"])
def test_write_atomic_falls_back_where_unnamed_files_do_not_work(
    tmp_path: Path, monkeypatch, fails: str
) -> None:
    import errno

    from fastio_dl import storage

    real_open, real_link = os.open, os.link

    def no_tmpfile(path, flags, *args, **kwargs):
        if (
            fails == "open"
            and storage._O_TMPFILE
            and flags & storage._O_TMPFILE == storage._O_TMPFILE
        ):
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, flags, *args, **kwargs)

    def no_proc_link(source, target, *args, **kwargs):
        if fails == "link" and str(source).startswith("/proc/self/fd/"):
            raise OSError(errno.ENOENT, "No such file or directory")  # a sandboxed /proc
        return real_link(source, target, *args, **kwargs)

    disk = storage.Disk(unnamed=True)
    monkeypatch.setattr(storage.os, "open", no_tmpfile)
    monkeypatch.setattr(storage.os, "link", no_proc_link)
    disk.write_atomic(tmp_path / "a.bin", b"data")
    assert (tmp_path / "a.bin").read_bytes() == b"data"
    assert disk.unnamed is False  # decided once for the run
    assert storage.Disk().unnamed is storage.UNNAMED_FILES  # the next run tries again
    assert _tree(tmp_path) == ["a.bin"]
