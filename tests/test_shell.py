"""Config, environment, completions, ls, verify, shards, rate limit, log file, proxies, docs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import typer.main
from aiohttp import ClientSession, web

from fastio_dl import __version__
from fastio_dl.cli import app
from fastio_dl.emulator import DEFAULT_TOKEN, DatasetSpec, SeededBlob
from fastio_dl.errors import ExitCode
from fastio_dl.policy import in_shard
from tests.conftest import Served, files_only, tree_digests

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- configuration


def test_precedence_flag_over_env_over_file_over_default(
    served: Served, tmp_path: Path, monkeypatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'dest = "{tmp_path / "from-file"}"\nconcurrency = 3\n[get]\nretries = 2\n')
    monkeypatch.setenv("FASTIO_DL_CONFIG", str(config))
    node = next(iter(served.space.files()))
    ref = f"ws:{served.ws}/{node.id}"
    assert served.cli("get", ref).exit_code == 0
    assert (tmp_path / "from-file" / node.name).is_file()
    monkeypatch.setenv("FASTIO_DL_DEST", str(tmp_path / "from-env"))
    assert served.cli("get", ref).exit_code == 0
    assert (tmp_path / "from-env" / node.name).is_file()
    assert served.cli("get", ref, "-d", str(tmp_path / "from-flag")).exit_code == 0
    assert (tmp_path / "from-flag" / node.name).is_file()
    shown = served.cli("config", "show").stdout
    assert f'dest = "{tmp_path / "from-env"}"  (env FASTIO_DL_DEST)' in shown
    assert f"concurrency = 3  (file {config})" in shown
    assert "retries = 2  (file" in shown
    assert "segments = 4  (default)" in shown


def test_unknown_config_key_is_a_usage_error(served: Served, tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("concurrencyy = 3\n")
    result = served.cli("--config", str(config), "get", f"ws:{served.ws}/root")
    assert result.exit_code == 2 and "concurrencyy" in result.stderr


def test_token_sources_and_masking(served: Served, tmp_path: Path, monkeypatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'token = "{DEFAULT_TOKEN}"\napi-base = "{served.server.api_base}"\n')
    monkeypatch.setenv("FASTIO_DL_CONFIG", str(config))
    node = next(iter(served.space.files()))
    from typer.testing import CliRunner

    ran = CliRunner().invoke(app, ["get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path / "a")])
    assert ran.exit_code == 0, ran.stderr  # token and api-base from the config file
    shown = CliRunner().invoke(app, ["config", "show"]).stdout
    assert (
        DEFAULT_TOKEN not in shown
        and f"****{DEFAULT_TOKEN[-4:]}" in shown
        and "(config file)" in shown
    )
    monkeypatch.setenv("FASTIO_TOKEN", "env-token-wins")
    denied = CliRunner().invoke(
        app, ["get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path / "b")]
    )
    assert denied.exit_code == 3  # the environment outranks the file
    assert "env-token-wins" not in denied.stderr


def test_official_cli_credentials_are_read(served: Served, tmp_path: Path) -> None:
    creds = Path(os.environ["XDG_CONFIG_HOME"]) / "fastio-cli" / "credentials.json"
    creds.parent.mkdir(parents=True)
    creds.write_text(
        json.dumps({"profiles": {"default": {"api_key": DEFAULT_TOKEN, "expires_at": None}}})
    )
    node = next(iter(served.space.files()))
    result = served.cli("get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), token=None)
    assert result.exit_code == 0, result.stderr


# ----------------------------------------------------------------------------- completions


@pytest.mark.parametrize("name", ["fastio-dl.bash", "_fastio-dl", "fastio-dl.fish"])
def test_completion_scripts_match_the_cli(name: str) -> None:
    sys.path.insert(0, str(ROOT / "completions"))
    try:
        import generate
    finally:
        sys.path.pop(0)
    shell = {v: k for k, v in generate.SHELLS.items()}[name]
    assert (ROOT / "completions" / name).read_text() == generate.generate(shell), (
        "completions drifted: run python completions/generate.py"
    )


def test_bash_completes_commands_and_options() -> None:
    bindir = Path(sys.executable).parent
    if not (bindir / "fastio-dl").exists():
        pytest.fail("fastio-dl is not installed next to this Python (pip install -e .)")
    script = (
        f"source {ROOT / 'completions' / 'fastio-dl.bash'}\n"
        "COMP_WORDS=(fastio-dl s); COMP_CWORD=1\n"
        "_fastio_dl_completion fastio-dl; echo ${COMPREPLY[@]}\n"
        "COMP_WORDS=(fastio-dl sync --max-d); COMP_CWORD=2\n"
        "_fastio_dl_completion fastio-dl; echo ${COMPREPLY[@]}\n"
    )
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.split("\n")[:2] == ["sync", "--max-delete"]


# ----------------------------------------------------------------------------- ls


def test_ls_table_json_and_manifest_roundtrip(make_served, tmp_path: Path) -> None:
    served: Served = make_served(DatasetSpec(files=12, depth=2, fanout=2, max_size=5000))
    table = served.cli("ls", f"ws:{served.ws}/root")
    assert table.exit_code == 0 and table.stdout.splitlines()[0].split() == [
        "TYPE",
        "SIZE",
        "MODIFIED",
        "ID",
        "PATH",
    ]
    assert "dir1-00" in table.stdout
    records = [
        json.loads(line)
        for line in served.cli("ls", f"ws:{served.ws}/root", "-r", "--json").stdout.splitlines()
    ]
    assert sum(r["type"] == "file" for r in records) == 12
    assert all(r["hash"] for r in records if r["type"] == "file")
    manifest = served.cli("ls", f"ws:{served.ws}/root", "-r", "--manifest").stdout
    path = tmp_path / "m.txt"
    path.write_text(manifest)
    assert served.cli("sync", str(path), "-d", str(tmp_path / "d")).exit_code == 0
    assert files_only(tmp_path / "d") == served.expected()


# ----------------------------------------------------------------------------- verify


def test_verify_reports_missing_changed_extra(synced_dest) -> None:
    served, manifest, dest = synced_dest
    base = ["--token", DEFAULT_TOKEN, "--api-base", served.server.api_base]
    assert served.cli("verify", str(dest)).exit_code == 0
    assert served.cli("verify", str(dest), str(manifest), *base).exit_code == 0
    files = sorted(p for p in dest.rglob("*.bin"))
    files[0].write_bytes(b"tampered" + files[0].read_bytes()[8:])
    files[1].unlink()
    (dest / "stray.txt").write_text("extra")
    for extra in ([], [str(manifest), *base]):
        result = served.cli("verify", str(dest), *extra, "--json")
        assert result.exit_code == 1
        records = [json.loads(line) for line in result.stdout.splitlines()]
        by_status = {r["status"]: r["path"] for r in records if r["event"] == "file"}
        assert by_status == {
            "changed": files[0].relative_to(dest).as_posix(),
            "missing": files[1].relative_to(dest).as_posix(),
            "extra": "stray.txt",
        }


@pytest.fixture
def synced_dest(make_served, tmp_path: Path):
    served: Served = make_served(
        DatasetSpec(files=8, depth=1, fanout=2, min_size=100, max_size=5000, odd_names=False)
    )
    manifest = tmp_path / "m.txt"
    manifest.write_text(f"ws:{served.ws}/root\n")
    dest = tmp_path / "dest"
    assert served.cli("sync", str(manifest), "-d", str(dest)).exit_code == 0
    return served, manifest, dest


# ----------------------------------------------------------------------------- shards


def test_shards_split_the_work_without_overlap(make_served, tmp_path: Path) -> None:
    served: Served = make_served(DatasetSpec(files=30, depth=1, fanout=2, max_size=3000))
    seen: list[set[str]] = []
    for index in range(3):
        out = tmp_path / f"host{index}"
        result = served.cli(
            "get", f"ws:{served.ws}/root", "-d", str(out), "--shard", f"{index}/3", "--json"
        )
        assert result.exit_code == 0, result.stderr
        mine = {r["node_id"] for r in result.files() if r["status"] == "downloaded"}
        assert all(in_shard(node_id, (index, 3)) for node_id in mine)
        seen.append(mine)
    assert not (seen[0] & seen[1] or seen[1] & seen[2] or seen[0] & seen[2])
    assert set().union(*seen) == {n.id for n in served.space.files()}
    assert served.cli("get", f"ws:{served.ws}/root", "--shard", "3/3").exit_code == 2


def test_shard_is_stable_and_balanced() -> None:
    ids = [hashlib.sha1(str(i).encode()).hexdigest()[:29] for i in range(200)]
    mine = [next(k for k in range(4) if in_shard(i, (k, 4))) for i in ids]
    assert all(sum(in_shard(i, (k, 4)) for k in range(4)) == 1 for i in ids)  # one shard each
    assert min(mine.count(k) for k in range(4)) > 25
    # Another host: another process, another string hash seed; the same split.
    probe = (
        "import sys; from fastio_dl.policy import in_shard\n"
        "for i in sys.stdin.read().split(): print(next(k for k in range(4) if in_shard(i, (k, 4))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        input="\n".join(ids),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    assert [int(k) for k in done.stdout.split()] == mine


# ----------------------------------------------------------------------------- habits


def test_version() -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"fastio-dl {__version__}"


def test_limit_rate_caps_total_throughput(served: Served, tmp_path: Path) -> None:
    node = served.server.call(
        lambda: served.space.add_file("root", "r.bin", SeededBlob(3, 1_200_000))
    )
    began = time.monotonic()
    result = served.cli(
        "get", f"ws:{served.ws}/{node.id}", "-d", str(tmp_path), "--limit-rate", "2M"
    )
    elapsed = time.monotonic() - began
    assert result.exit_code == 0
    assert elapsed >= 0.45  # 1.2 MB at 2 MiB/s, minus one burst of a tenth of a second
    assert served.cli("get", f"ws:{served.ws}/{node.id}", "--limit-rate", "fast").exit_code == 2


def test_log_file_has_timestamps_and_no_token(served: Served, tmp_path: Path) -> None:
    log = tmp_path / "logs" / "run.log"
    result = served.cli(
        "get", f"ws:{served.ws}/root", "-d", str(tmp_path / "d"), "--log-file", str(log)
    )
    assert result.exit_code == 0
    lines = log.read_text().splitlines()
    assert len(lines) >= 20
    assert all(
        re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z (INFO|WARN|ERROR|WARNING) ", ln)
        for ln in lines
    )
    assert DEFAULT_TOKEN not in log.read_text()


def test_no_color_plain_output_has_no_escape_codes(served: Served, tmp_path: Path) -> None:
    result = served.cli("get", f"ws:{served.ws}/root", "-d", str(tmp_path))
    assert result.exit_code == 0 and "\x1b[" not in result.stderr


def test_http_proxy_from_the_environment(served: Served, tmp_path: Path, monkeypatch) -> None:
    """A loopback forwarding proxy sees every request when HTTP_PROXY names it."""
    seen: list[str] = []

    async def forward(request: web.Request) -> web.StreamResponse:
        seen.append(str(request.url))
        async with (
            ClientSession() as session,
            session.request(
                request.method,
                str(request.url),
                headers={k: v for k, v in request.headers.items() if k != "Host"},
            ) as upstream,
        ):
            body = await upstream.read()
            return web.Response(
                body=body,
                status=upstream.status,
                headers={
                    k: v
                    for k, v in upstream.headers.items()
                    if k.lower() not in ("transfer-encoding", "content-length", "content-encoding")
                },
            )

    from fastio_dl.emulator import Emulator, EmulatorThread

    proxy_app = web.Application()
    proxy_app.router.add_route("*", "/{tail:.*}", forward)
    proxy = EmulatorThread(Emulator(served.emulator.store))
    proxy.emulator.app = proxy_app
    with proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.base_url)
        monkeypatch.setenv("NO_PROXY", "")
        result = served.cli("get", f"ws:{served.ws}/root", "-d", str(tmp_path))
        assert result.exit_code == 0, result.stderr
    assert any("/list/" in url for url in seen) and sum("/read/" in url for url in seen) == 20
    assert tree_digests(tmp_path) == served.expected()


def test_every_command_and_option_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    group = typer.main.get_command(app)
    missing = []
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        if f"fastio-dl {name}" not in readme:
            missing.append(f"command {name}")
        sub = getattr(command, "commands", {})
        for sub_name in sub:
            if f"fastio-dl {name} {sub_name}" not in readme:
                missing.append(f"command {name} {sub_name}")
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if (
                    opt.startswith("--")
                    and opt != "--help"
                    and f"`{opt}" not in readme
                    and f" {opt}" not in readme
                ):
                    missing.append(f"{name} {opt}")
    for param in group.params:
        for opt in param.opts:
            if opt.startswith("--") and opt != "--help" and opt not in readme:
                missing.append(f"global {opt}")
    assert not missing, f"README lacks: {', '.join(sorted(set(missing)))}"


# ----------------------------------------------------------------------------- packaging


def test_wheel_has_the_package_and_no_tests(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    wheel = next(tmp_path.glob("fastio_dl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "fastio_dl/cli.py" in names and "fastio_dl/emulator/server.py" in names
    assert not [n for n in names if n.startswith("tests/") or "/tests/" in n]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert (
        "fastio-dl = fastio_dl.__main__:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
    )


def _run_in_pty(argv: list[str], env: dict[str, str], timeout: float = 30) -> tuple[int, str]:
    """Run argv with stderr and stdout on a pseudo-terminal; return (exit code, output)."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    return proc.wait(10), b"".join(chunks).decode("utf-8", "replace")


@pytest.mark.parametrize("no_color", [False, True])
def test_live_panel_on_a_terminal_and_no_color(
    served: Served, tmp_path: Path, no_color: bool
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env.update({"TERM": "xterm-256color", "COLUMNS": "100"})
    if no_color:
        env["NO_COLOR"] = "1"
    argv = served.argv("get", f"ws:{served.ws}/root", "-d", str(tmp_path))
    code, output = _run_in_pty(argv, env)
    assert code == 0, output
    assert "total" in output and "20 downloaded, 2 skipped, 0 failed" in output  # the panel ran
    colours = re.findall(r"\x1b\[[0-9;]*(?:3[0-9]|9[0-7]|38;[0-9;]+)m", output)
    assert (not colours) if no_color else colours


def test_readme_manifest_example_is_a_valid_manifest() -> None:
    from fastio_dl.manifest import parse_manifest

    readme = (ROOT / "README.md").read_text()
    block = readme.split("one `REF [DEST]` per line:\n\n```text\n", 1)[1].split("```", 1)[0]
    manifest = parse_manifest(block, "README")
    assert [t.dest.as_posix() if t.dest else None for t in manifest.targets] == [
        None,
        "reports/q3 final.pdf",
        "media",
        "shares/partner",
    ]


# ----------------------------------------------------------------------------- process exit


def test_a_real_process_ends_with_every_line_written_and_its_exit_code(
    served: Served, tmp_path: Path
) -> None:
    """The CLI leaves without the interpreter's teardown: nothing written may be lost."""
    log = tmp_path / "run.log"
    ok = subprocess.run(
        [
            *served.argv("get", f"ws:{served.ws}/root", "-d", str(tmp_path / "a"), "--json"),
            "--log-file",
            str(log),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    records = [json.loads(line) for line in ok.stdout.splitlines()]
    files = len(served.expected())
    downloaded = [r for r in records if r["event"] == "file" and r["status"] == "downloaded"]
    assert len(downloaded) == files
    assert records[-1]["event"] == "summary" and records[-1]["downloaded"] == files
    summary = f"{files} downloaded, {records[-1]['skipped']} skipped, 0 failed"
    assert summary in log.read_text().splitlines()[-1]  # the log file's last line, too
    assert tree_digests(tmp_path / "a") == served.expected()
    bad = subprocess.run(
        served.argv("get", "not a ref!", "-d", str(tmp_path / "b")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_a_reader_that_goes_away_stops_the_run_like_sigpipe(make_served, tmp_path: Path) -> None:
    """``fastio-dl get ... --json | head -c 10``: once stdout is a broken pipe the run stops
    (exit 141, as tools killed by SIGPIPE report), quietly, with nothing half-written."""
    served: Served = make_served(DatasetSpec(files=600, depth=1, fanout=4, max_size=4096))
    # 10 ms a request: the 600 files take seconds, not the fraction of one they take at full
    # speed, so the run is still going when its reader leaves.
    served.emulator.switches.latency = 0.01
    dest = tmp_path / "out"
    argv = served.argv("get", f"ws:{served.ws}/root", "-d", str(dest), "--json", "-j", "2")
    script = " ".join(argv) + ' | head -c 10; echo " ${PIPESTATUS[0]}"'
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120)
    shown, code = done.stdout.rsplit(" ", 1)
    assert len(shown) == 10 and int(code) == ExitCode.OUTPUT_CLOSED == 141, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr
    expected = served.expected()
    present = tree_digests(dest)
    assert len(present) < len(expected)  # it stopped instead of running on with nobody reading
    assert all(expected[path] == digest for path, digest in present.items())


def test_the_command_imports_its_cli_without_collecting() -> None:
    probe = (
        "import gc, sys; import fastio_dl.__main__ as m; "
        "n = gc.get_stats()[0]['collections']; entry = m.import_cli(); "
        "print(gc.get_stats()[0]['collections'] - n, gc.isenabled(), gc.get_freeze_count(), "
        "'fastio_dl.cli' in sys.modules, entry.__name__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    collections, enabled, frozen, imported, name = done.stdout.split()
    assert (collections, enabled, imported, name) == ("0", "True", "True", "entrypoint")
    assert int(frozen) > 10_000  # what the import made is set aside, not scanned again
