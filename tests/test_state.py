"""The sync state and the run's claims on their own: records read a page at a time, paths
claimed a page at a time, and nothing changed when a page cannot be claimed whole."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fastio_dl.models import PlanItem, RemoteFile, Target
from fastio_dl.policy import SyncPolicy
from fastio_dl.refs import parse_ref
from fastio_dl.state import Claims, Record, State

OWNER = ("ctx", "node-a")


def test_a_page_is_claimed_whole_or_not_at_all() -> None:
    claims = Claims()
    assert claims.claim_all([("d/a.bin", OWNER), ("d/b.bin", OWNER)])
    assert len(claims) == 2 and claims.owner("d/a.bin") == OWNER
    # One path taken (here in another case): nothing of the page is claimed.
    assert not claims.claim_all([("d/c.bin", OWNER), ("D/A.bin", ("ctx", "node-b"))])
    assert "d/c.bin" not in claims and len(claims) == 2
    # Two paths of the page that are one path up to case: nothing either.
    assert not claims.claim_all([("e/x.bin", OWNER), ("e/X.bin", ("ctx", "node-c"))])
    assert "e/x.bin" not in claims
    # One by one still works after a refused page, and a later page is claimed whole.
    assert claims.claim("d/c.bin", OWNER) and not claims.claim("d/C.bin", OWNER)
    assert claims.claim_all([(f"f/{i}.bin", OWNER) for i in range(Claims.COMMIT_EVERY + 1)])
    assert len(claims) == 3 + Claims.COMMIT_EVERY + 1
    assert next(claims.paths()) == "d/a.bin"


def test_a_page_refused_first_leaves_no_transaction_behind() -> None:
    claims = Claims()
    assert not claims.claim_all([("a.bin", OWNER), ("A.bin", ("ctx", "node-b"))])
    assert claims.claim_all([("b.bin", OWNER), ("c.bin", OWNER)])
    assert claims.claim("a.bin", OWNER)
    assert list(claims.paths()) == ["a.bin", "b.bin", "c.bin"] and len(claims) == 3


def _item(path: str) -> PlanItem:
    remote = RemoteFile("workspace", "ctx", "n" + path, path, 3, "ab", "md5", "1")
    return PlanItem(Target(parse_ref("ws:3867689418901071163/root")), remote, path)


@pytest.fixture
def state(tmp_path: Path) -> State:
    state = State(tmp_path / "state.db")
    records = []
    for i in range(1200):
        path = f"f{i:04d}.bin"
        (tmp_path / path).write_bytes(b"abc")
        stat = os.stat(tmp_path / path)
        records.append(
            Record(path, "n" + path, "workspace", "ctx", "1", "ab", "md5", 3, 3, stat.st_mtime_ns)
        )
    state.put_many(records)
    return state


def _selects(state: State) -> list[str]:
    seen: list[str] = []
    state.db.set_trace_callback(lambda sql: seen.append(sql) if sql.startswith("SELECT") else None)
    return seen


async def test_records_are_read_a_page_at_a_time(state: State, tmp_path: Path) -> None:
    policy = SyncPolicy(state, dry_run=False)
    items = [_item(f"f{i:04d}.bin") for i in range(999)] + [_item("new.bin")]
    selects = _selects(state)
    policy.prefetch(items)
    assert len(selects) == 1  # 1,000 paths side by side: one range of the table
    decisions = [await policy.decide(item, str(tmp_path / item.relpath)) for item in items]
    assert len(selects) == 1  # every file decided from what was read ahead
    assert all(d.skip is not None for d in decisions[:-1]) and decisions[-1].skip is None
    # A file not read ahead (decided twice here) is looked up on its own.
    await policy.decide(items[0], str(tmp_path / items[0].relpath))
    assert len(selects) == 2


def test_records_far_apart_are_read_by_name(state: State) -> None:
    """Paths whose range holds many other records are not read through that range."""
    paths = ["f0000.bin", "f0600.bin", "f1199.bin", "missing.bin"]
    selects = _selects(state)
    found = state.get_many(paths)
    assert sorted(found) == paths[:3]
    assert found["f0600.bin"].node_id == "nf0600.bin"
    assert len(selects) == 2 and "BETWEEN" in selects[0] and " IN (" in selects[1]
    # Side by side: one range, and only the records asked for come back.
    selects.clear()
    assert sorted(state.get_many(["f0010.bin", "f0012.bin"])) == ["f0010.bin", "f0012.bin"]
    assert len(selects) == 1


async def test_records_read_ahead_and_never_decided_are_let_go(
    state: State, tmp_path: Path
) -> None:
    policy = SyncPolicy(state, dry_run=False)
    policy.AHEAD = 100
    items = [_item(f"f{i:04d}.bin") for i in range(1200)]
    for start in range(0, 1200, 100):  # as --shard leaves most files undecided
        policy.prefetch(items[start : start + 100])
    selects = _selects(state)
    last = items[-1]
    assert (await policy.decide(last, str(tmp_path / last.relpath))).skip is not None
    assert not selects  # recent: still held
    first = items[0]
    assert (await policy.decide(first, str(tmp_path / first.relpath))).skip is not None
    assert len(selects) == 1  # long gone: read again, and decided the same
