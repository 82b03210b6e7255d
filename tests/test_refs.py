from __future__ import annotations

import pytest

from fastio_dl.errors import UsageError
from fastio_dl.refs import parse_ref

NODE = "26n2i-xygnf-vorvt-lhy3w-5laen-oybp"
NODE_NORM = "26n2ixygnfvorvtlhy3w5laenoybp"
WS = "3867689418901071163"


@pytest.mark.parametrize(
    ("text", "context", "ctx_id", "node"),
    [
        (f"ws:{WS}/{NODE}", "workspace", WS, NODE_NORM),
        (f"ws:{WS}/root", "workspace", WS, "root"),
        (f"ws:{WS}", "workspace", WS, "root"),
        (f"share:myshare/{NODE.upper()}", "share", "myshare", NODE_NORM),
        (
            f"https://acme.fast.io/workspace/{WS}-general/storage/{NODE_NORM}",
            "workspace",
            WS,
            NODE_NORM,
        ),
        (f"https://acme.fast.io/workspace/{WS}/preview/{NODE}", "workspace", WS, NODE_NORM),
        (f"https://acme.fast.io/workspace/{WS}/storage/", "workspace", WS, "root"),
        ("https://go.fast.io/shared/quarterly/q3-files", "share", "quarterly", "root"),
        ("https://go.fast.io/shared/quarterly", "share", "quarterly", "root"),
        (
            f"https://go.fast.io/shared/quarterly/q3-files/preview/{NODE}",
            "share",
            "quarterly",
            NODE_NORM,
        ),
        (
            f"https://api.fast.io/current/workspace/{WS}/storage/{NODE}/details/",
            "workspace",
            WS,
            NODE_NORM,
        ),
        (f"http://127.0.0.1:8765/v1.0/share/{WS}/storage/root/list/", "share", WS, "root"),
    ],
)
def test_accepted_forms(text: str, context: str, ctx_id: str, node: str) -> None:
    ref = parse_ref(text)
    assert (ref.context, ref.context_id, ref.node) == (context, ctx_id, node)
    assert ref.text == text


def test_bare_ids_need_a_default_context() -> None:
    assert parse_ref(NODE, workspace=WS).key == ("workspace", WS, NODE_NORM)
    assert parse_ref(NODE_NORM, share="s1").key == ("share", "s1", NODE_NORM)
    with pytest.raises(UsageError, match="needs --workspace"):
        parse_ref(NODE)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "hello",
        f"ws:{WS}/short",
        "ws:/x",
        f"ws:{WS}/{NODE}!",
        "https://example.com/nothing/here",
        f"https://acme.fast.io/workspace/{WS}/preview/",
        "ftp://x",
        "share:bad name/root",
    ],
)
def test_malformed_references_name_themselves(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_ref(text, workspace=WS)
    assert "malformed reference" in str(info.value)
