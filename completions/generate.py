"""Regenerate the shell completion scripts from the CLI itself.

    python completions/generate.py

The scripts ask ``fastio-dl`` for candidates at completion time, so they follow the installed
commands and options; tests/test_completions.py fails when these files differ from what the
CLI generates.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
SHELLS = {"bash": "fastio-dl.bash", "zsh": "_fastio-dl", "fish": "fastio-dl.fish"}


def generate(shell: str) -> str:
    env = {**os.environ, "_FASTIO_DL_COMPLETE": f"source_{shell}"}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; sys.argv[0] = 'fastio-dl'; "
            "from fastio_dl.cli import entrypoint; entrypoint()",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout


def main() -> int:
    for shell, name in SHELLS.items():
        (HERE / name).write_text(generate(shell), encoding="utf-8")
        print(f"wrote completions/{name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
