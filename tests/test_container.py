"""The Dockerfile builds what the README says: slim base, the wheel, a non-root user, the entry
point that pyproject.toml declares. (Images cannot be built here; the file is checked as text.)"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def test_the_image_runs_the_installed_wheel_as_a_non_root_user() -> None:
    steps = instructions()
    stages = [arg for op, arg in steps if op == "FROM"]
    assert len(stages) == 2 and all(re.search(r"python:\$\{PYTHON\}-slim", s) for s in stages)
    final = steps[[i for i, (op, _) in enumerate(steps) if op == "FROM"][-1] :]
    runs = " ".join(arg for op, arg in final if op == "RUN")
    assert "pip install --no-cache-dir /tmp/wheels/*.whl" in runs
    assert "useradd" in runs
    users = [arg for op, arg in final if op == "USER"]
    assert users and users[-1] not in ("root", "0")
    # the user is set before the entry point and nothing later switches back
    assert [op for op, _ in final].index("USER") < [op for op, _ in final].index("ENTRYPOINT")
    entry = json.loads(next(arg for op, arg in final if op == "ENTRYPOINT"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entry == ["fastio-dl"] and "fastio-dl" in scripts
    build = steps[: [i for i, (op, _) in enumerate(steps) if op == "FROM"][-1]]
    assert any(op == "RUN" and "pip wheel" in arg for op, arg in build)


def test_no_example_installs_from_an_index_where_fastio_dl_is_not_published() -> None:
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text()
        assert not re.search(r"pip(x)? install (--user )?fastio-dl\b", text), path
