"""The real CLI against the real emulator over loopback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastio_dl.emulator import BytesBlob, DatasetSpec, Fault, SeededBlob
from tests.conftest import Served, tree_digests


def test_tree_of_1000_files_arrives_byte_identical(make_served, tmp_path: Path) -> None:
    served: Served = make_served(
        DatasetSpec(files=1000, depth=3, fanout=3, min_size=0, max_size=8 * 1024, notes=2, links=1)
    )
    result = served.cli(
        "get", f"ws:{served.ws}/root", "-d", str(tmp_path / "out"), "-j", "16", "--json"
    )
    assert result.exit_code == 0, result.stderr
    assert tree_digests(tmp_path / "out") == served.expected()
    summary = result.summary()
    assert (summary["downloaded"], summary["skipped"], summary["failed"]) == (1000, 3, 0)
    assert summary["bytes"] == sum(n.blob.size for n in served.space.files())
    assert not list((tmp_path / "out").rglob("*.part*"))
    # a second run finds everything present and verified: no read token, no byte
    before_tokens = served.stat("tokens_minted")
    again = served.cli("get", f"ws:{served.ws}/root", "-d", str(tmp_path / "out"), "--json")
    assert again.exit_code == 0
    assert again.summary()["skipped"] == 1003
    assert served.stat("tokens_minted") == before_tokens


def test_faults_switched_on_every_file_still_arrives(make_served, tmp_path: Path) -> None:
    served: Served = make_served(
        DatasetSpec(files=120, depth=2, fanout=2, min_size=20_000, max_size=200_000)
    )
    served.server.call(
        lambda: served.emulator.set_faults(
            [
                Fault("drop", after_bytes=5_000, probability=0.2),
                Fault("server_error", endpoint="any", status=503, probability=0.1),
                Fault("rate_limit", endpoint="any", probability=0.1, retry_after=0.01),
            ]
        )
    )
    result = served.cli(
        "get", f"ws:{served.ws}/root", "-d", str(tmp_path), "-j", "8", "--retries", "12", "--json"
    )
    assert result.exit_code == 0, result.stderr
    assert tree_digests(tmp_path) == served.expected()
    counters = served.emulator.counters
    assert counters["fault:drop"] > 0 and counters["fault:server_error"] > 0
    assert counters["fault:rate_limit"] > 0
    assert "retry" in result.stderr


def test_wrong_bytes_never_produce_a_final_file(served: Served, tmp_path: Path) -> None:
    node = next(iter(served.space.files()))
    served.server.call(lambda: served.emulator.set_faults([Fault("wrong_bytes", after_bytes=0)]))
    result = served.cli(
        "get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), "--retries", "2", "--json"
    )
    assert result.exit_code == 1
    record = result.files()[0]
    assert record["status"] == "failed" and "mismatch" in record["error"]
    assert list(tmp_path.iterdir()) == []


def test_missing_node_among_ten(served: Served, tmp_path: Path) -> None:
    ids = [n.id for n in list(served.space.files())[:9]]
    missing = "2" + "x" * 28
    result = served.cli("get", "-w", served.ws, *ids, missing, "-d", str(tmp_path), "--json")
    assert result.exit_code == 1
    files = result.files()
    assert sum(f["status"] == "downloaded" for f in files) == 9
    failed = [f for f in files if f["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["node_id"] == missing and missing in failed[0]["error"]
    assert len([p for p in tmp_path.iterdir() if p.is_file()]) == 9
    assert result.summary()["failed"] == 1


def test_no_token_exit_3_with_one_line_hint(served: Served, tmp_path: Path) -> None:
    result = served.cli("get", f"ws:{served.ws}/root", "-d", str(tmp_path), token=None)
    assert result.exit_code == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "FASTIO_TOKEN" in lines[0] and "Traceback" not in result.stderr


def test_wrong_token_exit_3(served: Served, tmp_path: Path) -> None:
    result = served.cli("get", f"ws:{served.ws}/root", "-d", str(tmp_path), token="nope-nope")
    assert result.exit_code == 3
    assert "401" in result.stderr and "nope-nope" not in result.stderr


def test_hostile_remote_name_lands_inside_dest(served: Served, tmp_path: Path) -> None:
    node = served.server.call(
        lambda: served.space.add_file("root", "../../x", BytesBlob(b"escape"))
    )
    dest = tmp_path / "a" / "b" / "dest"
    result = served.cli("get", f"ws:{served.ws}/{node.id}", "-d", str(dest))
    assert result.exit_code == 0, result.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) == 1
    assert dest.resolve() in written[0].resolve().parents
    assert written[0].read_bytes() == b"escape"


def test_malformed_reference_fails_before_any_download(served: Served, tmp_path: Path) -> None:
    good = next(iter(served.space.files())).id
    result = served.cli("get", f"ws:{served.ws}/{good}", "ws:/not a node", "-d", str(tmp_path))
    assert result.exit_code == 2
    assert "not a node" in result.stderr
    assert served.stat("requests") == 0
    assert list(tmp_path.iterdir()) == []


def test_refs_from_stdin_and_json_results(served: Served, tmp_path: Path) -> None:
    nodes = list(served.space.files())[:3]
    stdin = "".join(f"ws:{served.ws}/{n.id}\n" for n in nodes) + "# a comment\n\n"
    result = served.cli("get", "-", "-d", str(tmp_path), "--json", input=stdin)
    assert result.exit_code == 0, result.stderr
    files = result.files()
    assert {f["node_id"] for f in files} == {n.id for n in nodes}
    for record in files:
        assert set(record) == {"event", "ref", "node_id", "path", "status", "bytes", "error"}
        assert Path(record["path"]).is_file()
    assert set(result.summary()) == {"event", "downloaded", "skipped", "failed", "bytes", "seconds"}


def test_changed_local_file_is_replaced_and_no_clobber_keeps_it(
    served: Served, tmp_path: Path
) -> None:
    node = next(n for n in served.space.files() if n.blob.size > 10)
    path = tmp_path / node.name
    path.write_bytes(b"local edit")
    kept = served.cli(
        "get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), "--no-clobber", "--json"
    )
    assert kept.exit_code == 0 and kept.files()[0]["status"] == "skipped"
    assert path.read_bytes() == b"local edit"
    replaced = served.cli("get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), "--json")
    assert replaced.exit_code == 0 and replaced.files()[0]["status"] == "downloaded"
    assert path.read_bytes() == node.blob.read(0, node.blob.size)


def test_folder_reference_lands_under_its_name(served: Served, tmp_path: Path) -> None:
    folder = next(
        n for n in served.space.nodes.values() if n.type == "folder" and n.parent == "root"
    )
    url = f"https://acme.fast.io/workspace/{served.ws}-general/storage/{folder.id}"
    result = served.cli("get", url, "-d", str(tmp_path), "--json")
    assert result.exit_code == 0, result.stderr
    expected = {k: v for k, v in served.expected().items() if k.startswith(folder.name + "/")}
    assert expected and tree_digests(tmp_path) == expected


def test_read_token_expired_mints_one_fresh_token(served: Served, tmp_path: Path) -> None:
    node = next(iter(served.space.files()))
    served.server.call(lambda: served.emulator.set_faults([Fault("expire_token", times=1)]))
    result = served.cli(
        "get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), "--json", "--read-mode", "token"
    )
    assert result.exit_code == 0, result.stderr
    assert served.stat("tokens_minted") == 2
    assert (tmp_path / node.name).read_bytes() == node.blob.read(0, node.blob.size)


def test_payment_required_stops_the_run(served: Served, tmp_path: Path) -> None:
    served.server.call(lambda: served.emulator.set_faults([Fault("payment", endpoint="read")]))
    result = served.cli("get", f"ws:{served.ws}/root", "-d", str(tmp_path))
    assert result.exit_code == 3
    assert "402" in result.stderr and "credits" in result.stderr
    assert not [
        p for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith((".part", ".json"))
    ]


def test_name_collision_is_reported_not_overwritten(served: Served, tmp_path: Path) -> None:
    a = served.server.call(lambda: served.space.add_file("root", "same.txt", BytesBlob(b"first")))
    folder = served.server.call(lambda: served.space.add_folder("root", "sub"))
    b = served.server.call(
        lambda: served.space.add_file(folder.id, "same.txt", BytesBlob(b"second"))
    )
    result = served.cli(
        "get", f"ws:{served.ws}/{a.id}", f"ws:{served.ws}/{b.id}", "-d", str(tmp_path), "--json"
    )
    assert result.exit_code == 1
    statuses = sorted(f["status"] for f in result.files())
    assert statuses == ["downloaded", "failed"]
    failed = next(f for f in result.files() if f["status"] == "failed")
    assert "already taken" in failed["error"]


@pytest.mark.parametrize("size", [0, 1, 3 * 1024 * 1024 + 7])
def test_sizes_including_empty_and_multi_chunk(served: Served, tmp_path: Path, size: int) -> None:
    node = served.server.call(
        lambda: served.space.add_file("root", f"s{size}.bin", SeededBlob(size, size))
    )
    result = served.cli("get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), "--json")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / node.name).read_bytes() == node.blob.read(0, size)


@pytest.mark.parametrize("status", [401, 403])
def test_auto_read_mode_falls_back_to_a_read_token(
    served: Served, tmp_path: Path, status: int
) -> None:
    nodes = list(served.space.files())[:3]
    served.emulator.switches.bearer_reads = False
    served.emulator.switches.bearer_refusal_status = status
    refs = [f"ws:{served.ws}/{n.id}" for n in nodes]
    refused = served.cli("get", *refs, "-d", str(tmp_path / "b"), "--read-mode", "bearer")
    assert refused.exit_code == 1 and served.stat("tokens_minted") == 0
    result = served.cli("get", *refs, "-d", str(tmp_path / "a"), "--json")
    assert result.exit_code == 0, result.stderr
    assert served.stat("tokens_minted") == 3
    for node in nodes:
        assert (tmp_path / "a" / node.name).read_bytes() == node.blob.read(0, node.blob.size)


def test_default_reads_need_no_read_token(served: Served, tmp_path: Path) -> None:
    result = served.cli("get", f"ws:{served.ws}/root", "-d", str(tmp_path))
    assert result.exit_code == 0, result.stderr
    assert served.stat("tokens_minted") == 0 and served.stat("read") == 20


def test_quiet_prints_only_errors_and_the_summary(served: Served, tmp_path: Path) -> None:
    missing = "2" + "m" * 28
    result = served.cli(
        "get", f"ws:{served.ws}/root", f"ws:{served.ws}/{missing}", "-d", str(tmp_path), "-q"
    )
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("failed: ") and missing in lines[0]
    assert lines[1].startswith("20 downloaded, 2 skipped, 1 failed")


def test_progress_json_lines_on_stderr(served: Served, tmp_path: Path) -> None:
    result = served.cli("get", f"ws:{served.ws}/root", "-d", str(tmp_path), "--progress", "json")
    assert result.exit_code == 0 and result.stdout == ""
    events = [json.loads(line) for line in result.stderr.splitlines()]
    kinds = {e["event"] for e in events}
    assert {"queued", "started", "file", "summary"} <= kinds
    assert events[-1]["event"] == "summary" and events[-1]["downloaded"] == 20


def test_bad_progress_mode_is_a_usage_error(served: Served, tmp_path: Path) -> None:
    result = served.cli("get", f"ws:{served.ws}/root", "-d", str(tmp_path), "--progress", "fancy")
    assert result.exit_code == 2 and "--progress" in result.stderr


@pytest.mark.parametrize("algo", ["md5", "sha1", "sha384"])
def test_other_hash_algorithms_are_verified(served: Served, tmp_path: Path, algo: str) -> None:
    node = served.server.call(
        lambda: served.space.add_file("root", f"{algo}.bin", SeededBlob(5, 200_000), hash_algo=algo)
    )
    ok = served.cli("get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path / "ok"))
    assert ok.exit_code == 0, ok.stderr
    served.server.call(lambda: served.emulator.set_faults([Fault("wrong_bytes", after_bytes=7)]))
    bad = served.cli(
        "get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path / "bad"), "--retries", "1"
    )
    assert bad.exit_code == 1 and f"{algo} mismatch" in bad.stderr
    assert not (tmp_path / "bad" / node.name).exists()


@pytest.mark.parametrize("why", ["no hash", "unknown algorithm"])
@pytest.mark.parametrize(
    ("size", "extra"),
    [
        (50_000, ()),  # in memory
        (3_000_000, ()),  # one stream
        (6_000_000, ("--segments", "4", "--segment-threshold", "1M")),  # pieces
    ],
)
def test_unverifiable_hash_downloads_with_a_warning(
    served: Served, tmp_path: Path, size: int, extra: tuple[str, ...], why: str
) -> None:
    def add():
        algo = "blake3" if why == "unknown algorithm" else "sha256"
        node = served.space.add_file("root", "nohash.bin", SeededBlob(6, size), hash_algo=algo)
        node.hidden_hash = why == "no hash"
        return node

    node = served.server.call(add)
    result = served.cli("get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), *extra)
    assert result.exit_code == 0, result.stderr
    assert "warning:" in result.stderr and "not verified" in result.stderr
    assert (tmp_path / "nohash.bin").read_bytes() == node.blob.read(0, size)


def test_plain_lines_skip_unchanged_files_unless_debug(served: Served, tmp_path: Path) -> None:
    assert served.cli("get", f"ws:{served.ws}/root", "-d", str(tmp_path)).exit_code == 0
    again = served.cli("get", f"ws:{served.ws}/root", "-d", str(tmp_path))
    assert again.exit_code == 0
    assert again.stderr.strip().splitlines() == [again.stderr.strip().splitlines()[-1]]
    assert "0 downloaded, 22 skipped, 0 failed" in again.stderr
    debug = served.cli("get", f"ws:{served.ws}/root", "-d", str(tmp_path), "--debug")
    assert debug.stderr.count("skipped: ") == 22
