"""The emulator's data: workspaces and shares holding trees of nodes with deterministic bytes."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ID_ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
# Big files repeat a block of prime length, so that no misplaced offset that is a multiple of a
# usual chunk size (powers of two) lands on identical bytes.
PATTERN_BLOCK = 1_048_573
SMALL_BLOB = 4 * 1024 * 1024
WINDOW = 256 * 1024  # reads up to this long (the server's body chunks) are served without a copy


class Blob:
    size: int

    def read(self, offset: int, length: int) -> bytes | memoryview:
        raise NotImplementedError

    def __post_init__(self) -> None:
        self._digests: dict[str, str] = {}

    def digest(self, algo: str) -> str:
        cached = self._digests.get(algo)
        if cached is None:
            # An algorithm hashlib lacks (one the client cannot check) gets a sha256 stand-in.
            known = algo.lower() in hashlib.algorithms_available
            hasher = hashlib.new(algo if known else "sha256")
            for offset in range(0, self.size, 1 << 20):
                hasher.update(self.read(offset, min(1 << 20, self.size - offset)))
            cached = self._digests[algo] = hasher.hexdigest()
        return cached


@dataclass
class BytesBlob(Blob):
    data: bytes

    def __post_init__(self) -> None:
        super().__post_init__()
        self.size = len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        return self.data[offset : offset + length]


@dataclass
class SeededBlob(Blob):
    """Deterministic pseudo-random bytes of any size, generated on demand (no memory cost)."""

    seed: int
    size: int

    def __post_init__(self) -> None:
        super().__post_init__()
        self._small: bytes | None = None
        self._block: bytes | None = None
        self._window: memoryview | None = None

    def _bytes(self) -> bytes:
        if self.size <= SMALL_BLOB:
            if self._small is None:
                self._small = random.Random(self.seed).randbytes(self.size)
            return self._small
        if self._block is None:
            self._block = random.Random(self.seed).randbytes(PATTERN_BLOCK)
        return self._block

    def read(self, offset: int, length: int) -> bytes | memoryview:
        length = max(0, min(length, self.size - offset))
        data = self._bytes()
        if self.size <= SMALL_BLOB:
            return data[offset : offset + length]
        if length <= WINDOW:
            # The block followed by its own first WINDOW bytes: any short read is one slice of
            # it, handed out without a copy (serving is the emulator's hot loop).
            if self._window is None:
                self._window = memoryview(data + data[:WINDOW])
            start = offset % PATTERN_BLOCK
            return self._window[start : start + length]
        out = bytearray()
        while length > 0:
            start = offset % PATTERN_BLOCK
            piece = data[start : start + length]
            out += piece
            offset += len(piece)
            length -= len(piece)
        return bytes(out)


@dataclass
class FileBlob(Blob):
    path: Path

    def __post_init__(self) -> None:
        super().__post_init__()
        self.size = self.path.stat().st_size

    def read(self, offset: int, length: int) -> bytes:
        with self.path.open("rb") as handle:
            handle.seek(offset)
            return handle.read(length)


@dataclass
class Version:
    id: str
    blob: Blob
    created: float


@dataclass
class Node:
    id: str
    name: str
    type: str  # file | folder | note | link
    parent: str | None
    created: float
    modified: float
    hash_algo: str = "sha256"
    versions: list[Version] = field(default_factory=list)
    hidden_hash: bool = False  # serve no hash (the client must warn, not fail)

    @property
    def blob(self) -> Blob | None:
        return self.versions[-1].blob if self.versions else None

    @property
    def version(self) -> str | None:
        return self.versions[-1].id if self.versions else None

    def to_json(self, *, full: bool = True) -> dict[str, object]:
        blob = self.blob
        record: dict[str, object] = {
            "id": self.id,
            "name": self.name,
            "type": self.type,
            "parent": self.parent,
            "size": blob.size if blob else 0,
            "created": _wire_time(self.created),
            "modified": _wire_time(self.modified),
            "mimetype": "application/octet-stream" if self.type == "file" else None,
        }
        if full and self.type == "file" and blob is not None:
            record["hash"] = None if self.hidden_hash else blob.digest(self.hash_algo)
            record["hash_algo"] = self.hash_algo
            record["version"] = self.version
        elif full:
            # A note's text has versions too (each edit makes one); a folder or link has none.
            record["version"] = self.version
        if self.type == "note":
            record["mimetype"] = "text/markdown"
        return record

    @property
    def note_text(self) -> str:
        blob = self.blob
        return bytes(blob.read(0, blob.size)).decode("utf-8") if blob is not None else ""


def _wire_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


class IdSource:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def node_id(self) -> str:
        # 29 characters like live ids; a leading digit as they tend to have.
        return str(self.rng.randrange(2, 10)) + "".join(self.rng.choices(ID_ALPHABET, k=28))

    def space_id(self) -> str:
        return str(self.rng.randrange(10**18, 10**19))

    def version_id(self) -> str:
        return "v" + "".join(self.rng.choices(ID_ALPHABET, k=12))


class Space:
    """A workspace or a share: a tree of nodes under ``root``."""

    def __init__(self, kind: str, space_id: str, name: str, ids: IdSource) -> None:
        self.kind = kind
        self.id = space_id
        self.name = name
        self.ids = ids
        now = time.time()
        self.nodes: dict[str, Node] = {"root": Node("root", name, "folder", None, now, now)}
        self.children: dict[str, list[str]] = {"root": []}

    def _add(self, parent: str, name: str, kind: str) -> Node:
        if parent not in self.children:
            raise KeyError(f"no folder {parent}")
        now = time.time()
        node = Node(self.ids.node_id(), name, kind, parent, now, now)
        self.nodes[node.id] = node
        self.children[parent].append(node.id)
        if kind == "folder":
            self.children[node.id] = []
        return node

    def add_folder(self, parent: str, name: str) -> Node:
        return self._add(parent, name, "folder")

    def add_file(self, parent: str, name: str, blob: Blob, hash_algo: str = "sha256") -> Node:
        node = self._add(parent, name, "file")
        node.hash_algo = hash_algo
        node.versions.append(Version(self.ids.version_id(), blob, node.created))
        return node

    def add_special(self, parent: str, name: str, kind: str) -> Node:
        return self._add(parent, name, kind)

    def add_note(self, parent: str, name: str, text: str) -> Node:
        """A note: markdown served by ``readnote``, never by ``read``."""
        node = self._add(parent, name, "note")
        node.versions.append(Version(self.ids.version_id(), BytesBlob(text.encode()), node.created))
        return node

    def replace(self, node_id: str, blob: Blob) -> Node:
        """Upload a new version: same id, new version, hash and size."""
        node = self.nodes[node_id]
        now = time.time()
        node.versions.append(Version(self.ids.version_id(), blob, now))
        node.modified = now
        return node

    def remove(self, node_id: str) -> None:
        node = self.nodes.pop(node_id)
        if node.parent is not None:
            self.children[node.parent].remove(node_id)
        for child in list(self.children.pop(node_id, [])):
            self.remove(child)

    def files(self) -> Iterator[Node]:
        return (n for n in self.nodes.values() if n.type == "file")

    def path_of(self, node_id: str) -> str:
        parts = []
        node = self.nodes[node_id]
        while node.parent is not None:
            parts.append(node.name)
            node = self.nodes[node.parent]
        return "/".join(reversed(parts))


class Store:
    def __init__(self, seed: int = 1) -> None:
        self.ids = IdSource(seed)
        self.spaces: dict[tuple[str, str], Space] = {}
        self.fileshares: dict[str, FileShare] = {}

    def add_space(
        self, kind: str = "workspace", name: str = "general", space_id: str | None = None
    ) -> Space:
        space = Space(kind, space_id or self.ids.space_id(), name, self.ids)
        self.spaces[(kind, space.id)] = space
        self.spaces[(kind, name)] = space
        return space

    def find(self, kind: str, key: str) -> Space | None:
        return self.spaces.get((kind, key))

    def add_fileshare(
        self,
        space: Space,
        node_id: str,
        *,
        password: str | None = None,
        anonymous: bool = True,
        fileshare_id: str | None = None,
    ) -> FileShare:
        """A File Share: a link to one file of ``space`` (optionally behind a link password)."""
        share = FileShare(fileshare_id or self.ids.space_id(), space, node_id, password, anonymous)
        self.fileshares[share.id] = share
        return share


@dataclass
class FileShare:
    id: str
    space: Space
    node_id: str
    password: str | None = None
    anonymous: bool = True  # anyone_with_link; False: a valid API token is needed too

    @property
    def node(self) -> Node:
        return self.space.nodes[self.node_id]


# ----------------------------------------------------------------------------- data sets

ODD_NAMES = (
    "quarterly report.pdf",
    "résumé – final.txt",  # noqa: RUF001 -- an en dash on purpose: names are not ASCII
    "日本語のファイル.bin",
    "with  two  spaces.dat",
)


@dataclass(frozen=True)
class DatasetSpec:
    files: int = 100
    depth: int = 2
    fanout: int = 3
    min_size: int = 0
    max_size: int = 64 * 1024
    seed: int = 1
    notes: int = 1
    links: int = 1
    odd_names: bool = True


def generate(space: Space, spec: DatasetSpec) -> list[Node]:
    """Fill ``space`` with a nested tree; files round-robin over all folders. Deterministic."""
    rng = random.Random(spec.seed)
    folders = ["root"]
    frontier = ["root"]
    for level in range(spec.depth):
        next_frontier = []
        for parent in frontier:
            for index in range(spec.fanout):
                folder = space.add_folder(parent, f"dir{level + 1}-{index:02d}")
                next_frontier.append(folder.id)
        folders += next_frontier
        frontier = next_frontier
    files = []
    for index in range(spec.files):
        parent = folders[index % len(folders)]
        if spec.odd_names and index < len(ODD_NAMES):
            name = ODD_NAMES[index]
        else:
            name = f"file-{index:05d}.bin"
        size = rng.randint(spec.min_size, spec.max_size)
        files.append(space.add_file(parent, name, SeededBlob(spec.seed * 1_000_003 + index, size)))
    for index in range(spec.notes):
        space.add_note(
            folders[index % len(folders)], f"note-{index}", f"# Note {index}\n\nWritten here.\n"
        )
    for index in range(spec.links):
        space.add_special(folders[index % len(folders)], f"link-{index}", "link")
    return files


def load_directory(space: Space, root: Path) -> None:
    """Serve a local directory tree as the space's files (bytes read from disk on demand)."""

    def walk(directory: Path, parent: str) -> None:
        for entry in sorted(directory.iterdir()):
            if entry.is_symlink():
                continue
            if entry.is_dir():
                walk(entry, space.add_folder(parent, entry.name).id)
            elif entry.is_file():
                space.add_file(parent, entry.name, FileBlob(entry))

    walk(root, "root")
