"""Manifests for ``sync``: one ``REF [DEST]`` per line, validated whole before any byte moves.

* UTF-8; blank lines and lines starting with ``#`` are ignored.
* ``REF`` uses the reference grammar of :mod:`fastio_dl.refs`.
* ``DEST`` (optional) is the rest of the line after the first run of whitespace, trimmed: a
  relative path under the destination (spaces allowed). For a file it is the local file path, for
  a folder the local directory.

Every problem is reported as ``MANIFEST:LINE: what is wrong``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fastio_dl.errors import UsageError
from fastio_dl.models import STATE_DIR, Target
from fastio_dl.refs import parse_ref

_SPLIT = re.compile(r"\s+")


@dataclass(frozen=True)
class Manifest:
    name: str
    targets: list[Target]
    lines: dict[int, str]  # line number -> the line as written (for --failed-manifest)


def check_dest(raw: str) -> PurePosixPath:
    """Validate a manifest DEST: relative, inside the destination, no control characters."""
    text = raw.strip().replace("\\", "/")
    if any(ord(ch) < 0x20 for ch in text):
        raise ValueError("DEST contains control characters")
    path = PurePosixPath(text)
    if path.is_absolute() or re.match(r"^[A-Za-z]:", text):
        raise ValueError(
            f"DEST {raw.strip()!r} is absolute; give a path relative to the destination"
        )
    parts = [p for p in path.parts if p not in ("", ".")]
    if ".." in parts:
        raise ValueError(f"DEST {raw.strip()!r} leaves the destination ('..')")
    if parts and parts[0] == STATE_DIR:
        raise ValueError(
            f"DEST {raw.strip()!r} is inside {STATE_DIR}/, which fastio-dl keeps for itself"
        )
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def parse_manifest(
    text: str,
    name: str,
    *,
    workspace: str | None = None,
    share: str | None = None,
    allow_empty: bool = False,
) -> Manifest:
    problems: list[str] = []
    targets: list[Target] = []
    lines: dict[int, str] = {}
    claimed: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pieces = _SPLIT.split(stripped, maxsplit=1)
        try:
            ref = parse_ref(pieces[0], workspace=workspace, share=share)
        except UsageError as exc:
            problems.append(f"{name}:{number}: {exc.message}")
            continue
        dest: Path | None = None
        if len(pieces) == 2 and pieces[1].strip():
            try:
                dest = Path(check_dest(pieces[1]))
            except ValueError as exc:
                problems.append(f"{name}:{number}: {exc}")
                continue
            key = dest.as_posix()
            if key in claimed:
                problems.append(
                    f"{name}:{number}: DEST {key!r} is already claimed by line {claimed[key]}"
                )
                continue
            claimed[key] = number
        targets.append(Target(ref, dest, number))
        lines[number] = stripped
    if not targets and not problems and not allow_empty:
        problems.append(
            f"{name}: the manifest has no references (pass --allow-empty to accept that)"
        )
    if problems:
        raise ManifestError(problems)
    return Manifest(name, targets, lines)


class ManifestError(UsageError):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems), None)
        self.problems = problems


def read_manifest(manifest: str) -> tuple[str, str]:
    """The manifest's text and the name used in messages (``-`` reads stdin)."""
    import sys

    if manifest == "-":
        return sys.stdin.read(), "<stdin>"
    path = Path(manifest)
    try:
        return path.read_text(encoding="utf-8"), manifest
    except FileNotFoundError:
        raise UsageError(
            f"manifest {manifest} does not exist", "give a manifest path or - for stdin"
        ) from None
    except UnicodeDecodeError:
        raise UsageError(f"manifest {manifest} is not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"cannot read manifest {manifest}: {exc.strerror}") from None
