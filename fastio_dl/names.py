"""Safe local names: any remote name maps to one path component that cannot leave its
directory, and the path guard refuses a path that resolves outside the destination."""

from __future__ import annotations

import hashlib
import os
import unicodedata
from pathlib import Path
from typing import NewType

from fastio_dl.errors import TransferError
from fastio_dl.models import SIDECAR_SUFFIX

# Room for ".part.json" after the longest name we produce, under the usual 255-byte limit.
MAX_NAME_BYTES = 255 - len(SIDECAR_SUFFIX)
_WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul"}
    | {f"com{i}" for i in range(1, 10)}
    | {f"lpt{i}" for i in range(1, 10)}
)

_WINDOWS_FORBIDDEN = frozenset('<>:"|?*')

#: One path component that the sanitiser produced: no separators, no "..", no control bytes.
SafeName = NewType("SafeName", str)


def safe_name(name: str) -> SafeName:
    """Map any remote name to a deterministic local name that cannot leave its directory."""
    if name.isascii() and name.isprintable() and "/" not in name and "\\" not in name:
        value = name  # the usual name: NFC leaves ASCII alone and there is nothing to replace
    else:
        value = unicodedata.normalize("NFC", name)
        value = "".join(
            "_" if ch in "/\\" or ord(ch) < 0x20 or ord(ch) == 0x7F else ch for ch in value
        )
    # Trailing dots and spaces vanish on Windows and make two names one; leading/trailing
    # whitespace is invisible in listings.
    if os.name == "nt":
        value = "".join("_" if ch in _WINDOWS_FORBIDDEN else ch for ch in value)
    elif len(value) >= 2 and value[1] == ":" and value[0].isascii() and value[0].isalpha():
        # "C:x" is drive-relative on Windows; keep such a tree portable.
        value = value[0] + "_" + value[2:]
    stripped = value.strip().rstrip(". ")
    # "", ".", ".." and the like would name the directory itself or its parent.
    value = stripped or "_" * max(1, len(value))
    stem = value.split(".", 1)[0].lower()
    if stem in _WINDOWS_RESERVED:
        value = "_" + value
    if value != name or len(value.encode("utf-8")) > MAX_NAME_BYTES:
        value = _fit(value, name)
    return SafeName(value)


def _fit(value: str, original: str) -> str:
    raw = value.encode("utf-8")
    if len(raw) <= MAX_NAME_BYTES:
        return value
    digest = hashlib.sha256(original.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    root, dot, ext = value.rpartition(".")
    if not dot or len(ext.encode()) > 16:
        root, ext = value, ""
    tail = f"~{digest}" + (f".{ext}" if ext else "")
    budget = MAX_NAME_BYTES - len(tail.encode())
    head = root.encode("utf-8")[:budget].decode("utf-8", "ignore")
    return head + tail


def safe_child(base: str, name: str) -> str:
    """The relative path of ``name`` (via :func:`safe_name`) in the relative directory ``base``
    ("" for the top), joined by ``/``: plan entries and the sync state spell paths so."""
    return f"{base}/{safe_name(name)}" if base else safe_name(name)


def safe_relpath(parts: list[str]) -> str:
    """Sanitised components (each one via :func:`safe_name`) joined into a relative path."""
    path = ""
    for part in parts:
        path = safe_child(path, part)
    return path


def directory_of(path: str | os.PathLike[str]) -> str:
    """The directory holding ``path``, as a string: "." for a bare name (``-d .`` spells
    local paths without one), where ``os.path.dirname`` gives ""."""
    return os.path.dirname(path) or "."


def ensure_inside(dest: Path, path: Path) -> Path:
    """Refuse a path that resolves (through symlinks) outside ``dest``."""
    root = dest.resolve()
    resolved = path.resolve()
    if resolved != root and root not in resolved.parents:
        raise TransferError(
            f"refusing to write {path}: it resolves outside the destination {root}",
            "remove the symlink that points outside the destination",
        )
    return path


class PathGuard:
    """:func:`ensure_inside` with the directory checks cached (resolving costs a syscall per
    path component, per file, otherwise)."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self._checked: set[str] = set()

    def check(self, path: str | os.PathLike[str]) -> None:
        # The file itself is never written through: parts are opened with O_NOFOLLOW and the
        # final name is only ever the target of a rename, which replaces a link, not its target.
        parent = os.path.dirname(path)
        if parent not in self._checked:
            ensure_inside(self.dest, Path(parent))
            self._checked.add(parent)
