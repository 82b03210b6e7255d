"""Hashes of remote files checked locally: which algorithms we know, a file's digest."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

HASH_BLOCK = 1024 * 1024
KNOWN_ALGOS = frozenset({"md5", "sha1", "sha224", "sha256", "sha384", "sha512"})


def new_hasher(algo: str | None) -> Any:
    if algo and algo.lower() in KNOWN_ALGOS:
        return hashlib.new(algo.lower())
    return None


def hash_file(path: Path, algo: str, limit: int | None = None) -> tuple[Any, int]:
    """Hash the first ``limit`` bytes (all by default); return (hasher, bytes read)."""
    hasher = hashlib.new(algo)
    done = 0
    with path.open("rb") as handle:
        while limit is None or done < limit:
            want = HASH_BLOCK if limit is None else min(HASH_BLOCK, limit - done)
            block = handle.read(want)
            if not block:
                break
            hasher.update(block)
            done += len(block)
    return hasher, done


def digest_of(algo: str | None, data: bytes | bytearray) -> str | None:
    """The hex digest of ``data`` in ``algo``; None when the algorithm is not one we know."""
    hasher = new_hasher(algo)
    if hasher is None:
        return None
    hasher.update(data)
    return str(hasher.hexdigest())


async def matches_local(path: Path, size: int, algo: str | None, digest: str | None) -> bool:
    """True when ``path`` holds exactly the remote bytes (same size and hash)."""
    try:
        stat = path.stat()  # noqa: ASYNC240 -- one stat costs less than a thread hop
    except FileNotFoundError:
        return False
    if stat.st_size != size:
        return False
    if not digest or not algo or algo.lower() not in KNOWN_ALGOS:
        return False
    hasher, _ = await asyncio.to_thread(hash_file, path, algo.lower())
    return bool(hasher.hexdigest() == digest.lower())
