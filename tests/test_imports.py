"""Import contracts: which layers may pull in the network and the terminal.

Each check runs in a fresh interpreter, so what an earlier test imported cannot hide a
violation.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("aiohttp", "typer", "rich")
PURE = ("", "refs", "manifest", "config", "state", "models", "names")  # "": the package itself
ENGINE = (
    "transfer",
    "fetch",
    "segments",
    "planner",
    "policy",
    "storage",
    "durability",
    "hashing",
    "blockio",
    "client",
    "client.tls",
    "client.retries",
    "client.answers",
    "client.auth",
    "client.session",
    "client.endpoints",
    "client.reads",
    "client.lean",
    "client.probes",
    "syncing",
    "runner",
    "process",
    # what ls, verify and doctor do, apart from their options and output
    "listing",
    "verify",
    "doctor",
)


def imported_after(module: str) -> set[str]:
    """The top-level packages among HEAVY that importing ``fastio_dl.<module>`` loads."""
    name = f"fastio_dl.{module}" if module else "fastio_dl"
    code = (
        "import sys, importlib\n"
        f"importlib.import_module({name!r})\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(result.stdout.split())


@pytest.mark.parametrize("module", PURE)
def test_data_modules_import_neither_network_nor_terminal(module: str) -> None:
    assert imported_after(module) == set()


@pytest.mark.parametrize("module", ENGINE)
def test_the_engine_imports_no_terminal_library(module: str) -> None:
    assert imported_after(module) <= {"aiohttp"}


def test_the_options_load_typer_but_neither_the_network_nor_the_terminal() -> None:
    assert imported_after("options") == {"typer"}


def test_the_check_sees_what_a_module_imports() -> None:
    # The CLI imports typer: a probe that cannot see it would pass every test above.
    assert "typer" in imported_after("cli")
