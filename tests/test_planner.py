"""The planner on its own: what it hands on, and when."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastio_dl.client.answers import parse_node
from fastio_dl.models import Node, PlanItem, Target
from fastio_dl.planner import Planner
from fastio_dl.refs import parse_ref


class OnePage:
    """A client whose root folder lists one page of files."""

    def __init__(self, count: int) -> None:
        self.page = [
            parse_node(
                {
                    "id": f"{i:020d}",
                    "type": "file",
                    "name": f"file-{i:04d}.bin",
                    "size": 10,
                    "hash": "00" * 32,
                    "hash_algo": "sha256",
                    "version": "1",
                }
            )
            for i in range(count)
        ]

    async def list_folder(
        self, context: str, context_id: str, folder: str
    ) -> AsyncIterator[list[Node]]:
        yield self.page


async def test_the_first_files_are_handed_on_before_the_page_is_planned() -> None:
    queue: asyncio.Queue[Any] = asyncio.Queue()
    planner = Planner(OnePage(300), queue)  # type: ignore[arg-type]
    task = asyncio.ensure_future(planner.run([Target(parse_ref("ws:3867689418901071163/root"))]))
    first = await queue.get()
    planned_then = len(planner.claimed)
    await task
    assert isinstance(first, PlanItem) and first.relpath.rpartition("/")[2] == "file-0000.bin"
    # A consumer had the first file while the planner was still at the head of the page.
    assert planned_then <= 2
    items = [first]
    while (entry := queue.get_nowait()) is not None:
        items.append(entry)
    assert [item.key for item in items] == list(range(1, 301))  # all of them, in order
