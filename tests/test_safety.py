"""Never lose or corrupt a byte: resume, interruption, disk, hostile names, secrets, TLS."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from fastio_dl.emulator import (
    DEFAULT_TOKEN,
    BytesBlob,
    DatasetSpec,
    Emulator,
    EmulatorThread,
    Fault,
    SeededBlob,
    build,
)
from fastio_dl.storage import PartMeta, part_path, sidecar_path
from tests.conftest import Served, tree_digests

SIZE = 2_000_000


def flat_files(count: int, size: int) -> DatasetSpec:
    """``count`` files of exactly ``size`` bytes in the root, plain names, no notes or links."""
    return DatasetSpec(
        files=count, depth=0, min_size=size, max_size=size, odd_names=False, notes=0, links=0
    )


def big_file(served: Served, name: str = "big.bin", size: int = SIZE, seed: int = 5):
    return served.server.call(lambda: served.space.add_file("root", name, SeededBlob(seed, size)))


def plant_part(
    dest: Path, node, keep: int, *, version: str | None = None, corrupt: bool = False
) -> None:
    """Leave a .part and sidecar as an interrupted run would."""
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / node.name
    data = bytearray(node.blob.read(0, keep))
    if corrupt:
        data[10] ^= 0xFF
    part_path(final).write_bytes(bytes(data))
    meta = PartMeta(
        node.id, version or node.version, node.blob.digest("sha256"), "sha256", node.blob.size
    )
    sidecar_path(final).write_text(json.dumps(asdict(meta)))


# ----------------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    ("scenario", "expect_read"),
    [
        ("resume", SIZE - 700_000),
        ("remote changed", SIZE),
        ("range ignored", SIZE),
        ("range shifted", None),
        ("corrupt partial", None),
    ],
)
def test_resume_across_runs(
    served: Served, tmp_path: Path, scenario: str, expect_read: int | None
) -> None:
    node = big_file(served)
    plant_part(
        tmp_path,
        node,
        700_000,
        version="v-old" if scenario == "remote changed" else None,
        corrupt=scenario == "corrupt partial",
    )
    faults = {
        "range ignored": [Fault("ignore_range")],
        "range shifted": [Fault("shift_range", times=1)],
    }
    served.server.call(lambda: served.emulator.set_faults(faults.get(scenario, [])))
    result = served.cli("get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), "--json")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / node.name).read_bytes() == node.blob.read(0, SIZE)
    assert sorted(p.name for p in tmp_path.iterdir()) == [node.name]
    if expect_read is not None:
        assert served.stat("read_bytes") == expect_read
    ranges = [
        r["headers"].get("Range") for r in served.emulator.requests if r["endpoint"] == "read"
    ]
    assert ranges[0] == (None if scenario == "remote changed" else "bytes=700000-")


def test_broken_read_resumes_from_current_offset(served: Served, tmp_path: Path) -> None:
    node = big_file(served)
    served.server.call(
        lambda: served.emulator.set_faults([Fault("drop", after_bytes=600_000, times=1)])
    )
    result = served.cli("get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), "--json")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / node.name).read_bytes() == node.blob.read(0, SIZE)
    ranges = [
        r["headers"].get("Range") for r in served.emulator.requests if r["endpoint"] == "read"
    ]
    assert ranges[0] is None and ranges[1] is not None and ranges[1] != "bytes=0-"
    assert served.stat("read_bytes") < SIZE + 600_000


# ----------------------------------------------------------------------------- interruption


def _spawn_get(served: Served, dest: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        served.argv("get", f"ws:{served.ws}/root", "-d", str(dest), "--progress", "plain", *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_partials(dest: Path, count: int, min_bytes: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parts = [p for p in dest.glob("*.part") if p.stat().st_size >= min_bytes]
        if len(parts) >= count:
            return
        time.sleep(0.05)
    raise AssertionError("no partial files appeared in time")


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_keeps_partials_and_next_run_finishes(
    make_served, tmp_path: Path, signum: int, code: int
) -> None:
    served: Served = make_served(flat_files(3, 1_500_000))
    served.emulator.switches.bandwidth = 1_000_000
    proc = _spawn_get(served, tmp_path, "-j", "3")
    _wait_for_partials(tmp_path, 3, 0)
    deadline = time.monotonic() + 20
    while served.stat("read_bytes") < 900_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == code, err
    assert "interrupted" in err and "Traceback" not in err
    parts = list(tmp_path.glob("*.part"))
    assert len(parts) == 3 and len(list(tmp_path.glob("*.part.json"))) == 3
    assert sum(p.stat().st_size for p in parts) > 0  # what arrived before the signal is kept
    assert not [p for p in tmp_path.iterdir() if not p.name.endswith((".part", ".part.json"))]
    served.emulator.switches.bandwidth = 0
    served.reset_after_kill()
    result = served.cli("get", f"ws:{served.ws}/root", "-d", str(tmp_path))
    assert result.exit_code == 0, result.stderr
    assert tree_digests(tmp_path) == served.expected()
    assert served.stat("read_bytes") < 3 * 1_500_000


def test_sigkill_then_rerun_leaves_no_partial(make_served, tmp_path: Path) -> None:
    # Mixed sizes: small files (verified in memory) finish while large ones are mid-write.
    served: Served = make_served(
        DatasetSpec(files=12, depth=1, fanout=2, min_size=100_000, max_size=2_500_000)
    )
    served.emulator.switches.bandwidth = 3_000_000
    proc = _spawn_get(served, tmp_path, "-j", "4")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not list(tmp_path.rglob("*.part")):
        time.sleep(0.02)
    assert list(tmp_path.rglob("*.part")), "no partial file appeared before the kill"
    proc.kill()
    proc.communicate()
    served.emulator.switches.bandwidth = 0
    result = served.cli("get", f"ws:{served.ws}/root", "-d", str(tmp_path))
    assert result.exit_code == 0, result.stderr
    assert tree_digests(tmp_path) == served.expected()
    assert not list(tmp_path.rglob("*.part*"))


# ----------------------------------------------------------------------------- disk


def test_not_enough_space_fails_the_file_with_sizes(
    served: Served, tmp_path: Path, monkeypatch
) -> None:
    node = big_file(served)
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=500_000))
    result = served.cli("get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), "--json")
    assert result.exit_code == 1
    error = result.files()[0]["error"]
    assert error.startswith("not enough disk space: need 1.9 MiB, have 488.3 KiB")
    assert served.stat("read") == 0 and list(tmp_path.iterdir()) == []


@pytest.fixture
def tiny_fs(tmp_path: Path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_mid_file_stops_new_files_and_never_leaves_a_bad_final(
    make_served, tiny_fs: Path
) -> None:
    served: Served = make_served(flat_files(6, 1_500_000))
    result = served.cli("get", f"ws:{served.ws}/root", "-d", str(tiny_fs), "-j", "2", "--json")
    assert result.exit_code == 1
    files = result.files()
    failed = [f for f in files if f["status"] == "failed"]
    assert failed and any(
        "disk full" in f["error"] or "not enough disk space" in f["error"] for f in failed
    )
    expected = {n.name: n.blob.digest("sha256") for n in served.space.files()}
    for name, digest in tree_digests(tiny_fs).items():
        if not name.endswith((".part", ".part.json")):
            assert expected[name] == digest  # every final file is complete and verified
    downloaded = [f for f in files if f["status"] == "downloaded"]
    assert len(downloaded) < 6


# The CLI under a file-size limit (RLIMIT_FSIZE; SIGXFSZ ignored, so that a write past it fails
# with EFBIG instead of killing the process): a write error mid-file that needs no root.
SIZE_LIMITED = (
    "import resource, runpy, signal, sys\n"
    "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
    "limit = int(sys.argv.pop(1))\n"
    "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))\n"
    "runpy.run_module('fastio_dl', run_name='__main__', alter_sys=True)\n"
)


def test_a_write_error_mid_file_keeps_a_resumable_part(served: Served, tmp_path: Path) -> None:
    node = big_file(served, size=3 * SIZE)  # over 1 MiB, under the segment threshold: a .part
    limit = SIZE + 12_345
    ref = f"ws:{served.ws}/{node.id}"
    argv = served.argv("get", ref, "-d", str(tmp_path), "--progress", "plain")
    done = subprocess.run(
        [sys.executable, "-c", SIZE_LIMITED, str(limit), *argv[3:]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    final, part = tmp_path / node.name, part_path(tmp_path / node.name)
    assert done.returncode == 1, done.stderr
    why = os.strerror(errno.EFBIG)
    assert done.stderr.splitlines()[0] == f"failed: {final}: cannot write {part}: {why}"
    assert done.stderr.count("\n") == 2 and "1 failed" in done.stderr  # the line and the summary
    kept = part.stat().st_size
    assert not final.exists() and 0 < kept <= limit
    assert part.read_bytes() == node.blob.read(0, kept)
    # The next run, without the limit, moves only the bytes that are missing.
    served.server.call(served.emulator.reset_counters)
    result = served.cli("get", ref, "-d", str(tmp_path), "--json")
    assert result.exit_code == 0, result.stderr
    assert tree_digests(tmp_path) == {node.name: node.blob.digest("sha256")}
    assert served.stat("read_bytes") == node.blob.size - kept


def test_after_a_write_error_a_file_waiting_for_its_slot_does_not_start(
    served: Served, tmp_path: Path
) -> None:
    """-j 1: the second file waits for the network slot while the first fails to write; once
    the slot is free the run has stopped starting files, and the second is not started."""
    # 12 MB, capped at 16 MB/s: the first file is still on the wire (holding the slot) when
    # the write of its first 4 MiB batch is found to have failed.
    first = big_file(served, "a.bin", size=6 * SIZE, seed=5)
    second = big_file(served, "b.bin", size=6 * SIZE, seed=6)
    served.emulator.switches.bandwidth = 8 * SIZE
    argv = served.argv(
        "get", f"ws:{served.ws}/{first.id}", f"ws:{served.ws}/{second.id}", "-d", str(tmp_path)
    )
    done = subprocess.run(
        [sys.executable, "-c", SIZE_LIMITED, str(SIZE + 12_345), *argv[3:], "-j", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    files = {Path(r["path"]).name: r for r in records if r["event"] == "file"}
    assert files["a.bin"]["error"].startswith("cannot write")
    assert files["b.bin"]["error"] == (
        f"not started: an earlier write failed ({files['a.bin']['error']})"
    )
    assert not part_path(tmp_path / "b.bin").exists()


# ----------------------------------------------------------------------------- names


def test_hostile_names_stay_inside_and_stay_distinct(served: Served, tmp_path: Path) -> None:
    names = [
        "..",
        ".",
        "a/b",
        "a\\b",
        "CON",
        "nul.txt",
        "x" * 300 + ".bin",
        "Case.txt",
        "case.txt",
        "bell\x07.txt",
        " spaced ",
        "trailing...",
    ]

    def add():
        folder = served.space.add_folder("root", "hostile")
        for index, name in enumerate(names):
            served.space.add_file(folder.id, name, BytesBlob(f"content {index}".encode()))
        return folder

    folder = served.server.call(add)
    dest = tmp_path / "dest"
    result = served.cli("get", f"ws:{served.ws}/{folder.id}", "-d", str(dest), "--json")
    assert result.exit_code == 0, result.stderr
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert len(written) == len(names)
    assert all((dest / "hostile").resolve() in p.resolve().parents for p in written)
    assert {p.read_bytes() for p in written} == {f"content {i}".encode() for i in range(len(names))}
    lowered = [p.name.casefold() for p in written]
    assert len(set(lowered)) == len(lowered)  # safe on case-insensitive filesystems too


def test_never_writes_through_a_symlink_leading_outside(served: Served, tmp_path: Path) -> None:
    folder = served.server.call(lambda: served.space.add_folder("root", "sub"))
    served.server.call(lambda: served.space.add_file(folder.id, "f.txt", BytesBlob(b"x")))
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "sub").symlink_to(outside)
    result = served.cli("get", f"ws:{served.ws}/{folder.id}", "-d", str(dest), "--json")
    assert result.exit_code == 1
    assert "outside the destination" in result.files()[0]["error"]
    assert list(outside.iterdir()) == []


# ----------------------------------------------------------------------------- secrets


@pytest.mark.parametrize("mode", ["plain", "json"])
def test_no_token_ever_printed(make_served, tmp_path: Path, mode: str) -> None:
    served: Served = make_served(
        DatasetSpec(files=15, depth=1, fanout=2, min_size=10_000, max_size=90_000)
    )
    served.server.call(
        lambda: served.emulator.set_faults(
            [
                Fault("expire_token", probability=0.3),
                Fault("drop", after_bytes=3000, probability=0.3),
                Fault("server_error", endpoint="any", probability=0.1),
                Fault("wrong_bytes", times=2),
            ]
        )
    )
    missing = "2" + "q" * 28
    result = served.cli(
        "get",
        f"ws:{served.ws}/root",
        f"ws:{served.ws}/{missing}",
        "-d",
        str(tmp_path),
        "--debug",
        "--json",
        "--retries",
        "1",
        "--progress",
        mode,
        "--read-mode",
        "token",
    )
    assert result.exit_code == 1
    output = result.stdout + result.stderr
    minted = list(served.emulator.read_tokens)
    assert minted and served.emulator.counters["fault:expire_token"] > 0
    for secret in [DEFAULT_TOKEN, *minted, *(t.split(".", 1)[1] for t in minted)]:
        assert secret not in output
    assert "token=" not in output.replace("token=REDACTED", "")


# ----------------------------------------------------------------------------- redirects and TLS


def test_cross_origin_redirect_drops_authorization(served: Served, tmp_path: Path) -> None:
    cdn = Emulator(served.emulator.store)
    cdn.read_tokens = served.emulator.read_tokens  # the CDN honours the same capabilities
    with EmulatorThread(cdn) as cdn_server:
        served.emulator.switches.redirect_reads_to = cdn_server.base_url
        node = next(iter(served.space.files()))
        for mode in ("bearer", "token"):
            out = tmp_path / mode
            result = served.cli(
                "get", f"ws:{served.ws}/{node.id}", "-d", str(out), "--read-mode", mode
            )
            assert result.exit_code == 0, result.stderr
            assert (out / node.name).read_bytes() == node.blob.read(0, node.blob.size)
    origin_reads = [r for r in served.emulator.requests if r["endpoint"] == "read"]
    cdn_reads = [r for r in cdn.requests if r["endpoint"] == "read"]
    assert len(cdn_reads) == 2
    assert "Authorization" in origin_reads[0]["headers"]  # bearer mode sent it to the API origin
    assert all("Authorization" not in r["headers"] for r in cdn_reads)


def test_tls_verified_by_default_and_ca_bundle_trusts_a_private_ca(
    tmp_path: Path, monkeypatch
) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    emulator, space = build(DatasetSpec(files=3, depth=0))
    with EmulatorThread(emulator, ssl_context=context) as server:
        served = Served(server, emulator, space)
        refused = served.cli("get", f"ws:{space.id}/root", "-d", str(tmp_path / "a"))
        assert refused.exit_code == 1
        assert "certificate" in refused.stderr.lower() and "--ca-bundle" in refused.stderr
        assert not (tmp_path / "a").exists() or not list((tmp_path / "a").iterdir())
        trusted = served.cli(
            "get", f"ws:{space.id}/root", "-d", str(tmp_path / "b"), "--ca-bundle", str(bundle)
        )
        assert trusted.exit_code == 0, trusted.stderr
        monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
        via_env = served.cli("get", f"ws:{space.id}/root", "-d", str(tmp_path / "c"))
        assert via_env.exit_code == 0, via_env.stderr
    assert tree_digests(tmp_path / "b") == served.expected() == tree_digests(tmp_path / "c")
    assert os.environ.get("SSL_CERT_FILE") == str(bundle)


def test_tls_in_a_fresh_process_verifies_with_its_own_context(tmp_path: Path) -> None:
    """A real CLI process (aiohttp imported without its CA loading) still verifies TLS."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    emulator, space = build(DatasetSpec(files=2, depth=0))
    with EmulatorThread(emulator, ssl_context=context) as server:
        served = Served(server, emulator, space)
        env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}

        def run(dest: str, *extra: str, **more_env: str) -> subprocess.CompletedProcess[str]:
            argv = served.argv("get", f"ws:{space.id}/root", "-d", str(tmp_path / dest), *extra)
            return subprocess.run(
                argv, capture_output=True, text=True, env={**env, **more_env}, timeout=60
            )

        refused = run("a")
        assert refused.returncode == 1 and "certificate" in refused.stderr.lower()
        assert run("b", "--ca-bundle", str(bundle)).returncode == 0
        assert run("c", SSL_CERT_FILE=str(bundle)).returncode == 0
    assert tree_digests(tmp_path / "b") == served.expected() == tree_digests(tmp_path / "c")


def test_aiohttp_defaults_trust_nothing_and_later_contexts_load_the_store() -> None:
    probe = (
        "import ssl, fastio_dl.client, aiohttp.connector as c;"
        "print(c._SSL_CONTEXT_VERIFIED.cert_store_stats()['x509_ca'],"
        " ssl.create_default_context().cert_store_stats()['x509_ca'])"
    )
    plain = "import ssl; print(ssl.create_default_context().cert_store_stats()['x509_ca'])"
    shimmed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    fresh = subprocess.run([sys.executable, "-c", plain], capture_output=True, text=True)
    aiohttp_default, ours = shimmed.stdout.split()
    assert aiohttp_default == "0"  # should aiohttp's default ever be used, it fails closed
    assert ours == fresh.stdout.strip()  # our own contexts load the store as usual


def test_ca_certificates_load_at_the_first_handshake_not_before(tmp_path: Path) -> None:
    from fastio_dl.client.tls import CaOnFirstUseContext

    system = ssl.create_default_context().cert_store_stats()["x509_ca"]
    lazy = CaOnFirstUseContext(ssl.PROTOCOL_TLS_CLIENT)
    assert lazy.verify_mode == ssl.CERT_REQUIRED and lazy.check_hostname
    assert lazy.cert_store_stats()["x509_ca"] == 0  # a plain-http run never pays for it
    lazy.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="example.invalid")
    assert lazy.cert_store_stats()["x509_ca"] == system > 0
    # A CA bundle given is all it trusts, as with ssl.create_default_context(cafile=...).
    trustme = pytest.importorskip("trustme")
    bundle = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(bundle))
    own = CaOnFirstUseContext(ssl.PROTOCOL_TLS_CLIENT)
    own.cafile = str(bundle)
    assert own.cert_store_stats()["x509_ca"] == 0
    own.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="example.invalid")
    assert own.cert_store_stats()["x509_ca"] == 1


@pytest.mark.parametrize("content", [None, b"", b"not a certificate\n"])
def test_a_bad_ca_bundle_is_one_line_before_any_transfer(
    served: Served, tmp_path: Path, content: bytes | None
) -> None:
    bundle = tmp_path / "ca.pem"
    if content is not None:
        bundle.write_bytes(content)
    result = served.cli(
        "get", f"ws:{served.ws}/root", "-d", str(tmp_path / "out"), "--ca-bundle", str(bundle)
    )
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "CA bundle" in lines[0] and str(bundle) in lines[0]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    assert served.stat("read_bytes") == 0
