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


# The web app's link forms (README "References"): each one resolves to what it points at.
LINK_FORMS = [
    (f"https://acme.fast.io/workspace/{WS}/share/quarterly", ("share", "quarterly", "root")),
    (
        f"https://acme.fast.io/workspace/{WS}-general/share/{WS}/storage/{NODE}",
        ("share", WS, NODE_NORM),
    ),
    (
        f"https://acme.fast.io/workspace/{WS}/storage/root?note={NODE}",
        ("workspace", WS, NODE_NORM),
    ),
    (f"https://go.fast.io/shared/quarterly/q3?note={NODE}", ("share", "quarterly", NODE_NORM)),
    (
        f"https://acme.fast.io/shared/quarterly/storage/{NODE}",
        ("share", "quarterly", NODE_NORM),
    ),
    (f"https://acme.fast.io/workspace/{WS}", ("workspace", WS, "root")),
    (
        f"https://acme.fast.io/workspace/{WS}/storage/root?utm_source=mail",
        ("workspace", WS, "root"),
    ),
    ("fileshare:4417763504443666597", ("fileshare", "4417763504443666597", "file")),
    (
        "https://api.fast.io/current/fileshare/4417763504443666597/details/",
        ("fileshare", "4417763504443666597", "file"),
    ),
]


@pytest.mark.parametrize(("text", "key"), LINK_FORMS)
def test_link_forms_resolve_to_what_they_point_at(text: str, key: tuple[str, str, str]) -> None:
    ref = parse_ref(text)
    assert ref.key == key
    assert ref.version is None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (f"https://acme.fast.io/workspace/{WS}/storage/root?chat=123", "a chat link"),
        (f"https://acme.fast.io/workspace/{WS}/settings/members", "/settings/ is not a link form"),
        (f"https://acme.fast.io/workspace/{WS}/share/", "nothing after /share/"),
        (f"https://acme.fast.io/workspace/{WS}/share/q/members", "/members/ is not a link form"),
        ("https://go.fast.io/shared/q/slug/activity", "/activity/ is not a link form"),
        (f"https://acme.fast.io/workspace/{WS}/storage/{NODE}/extra", "unexpected 'extra'"),
        ("https://acme.fast.io/dashboard", "not a Fast.io workspace"),
        ("fileshare:", "is not a File Share id"),
    ],
)
def test_unknown_link_forms_are_refused_never_widened(text: str, why: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_ref(text)
    assert info.value.exit_code == 2
    assert why in str(info.value) and repr(text) in str(info.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (f"ws:{WS}/{NODE}@vabc123", ("workspace", WS, NODE_NORM)),
        (
            f"https://acme.fast.io/workspace/{WS}/preview/{NODE}@vabc123",
            ("workspace", WS, NODE_NORM),
        ),
        ("fileshare:4417763504443666597@vabc123", ("fileshare", "4417763504443666597", "file")),
    ],
)
def test_a_version_suffix_names_that_version(text: str, key: tuple[str, str, str]) -> None:
    ref = parse_ref(text)
    assert (ref.key, ref.version, ref.text) == (key, "vabc123", text)
    assert parse_ref(f"{NODE}@v1", workspace=WS).version == "v1"


@pytest.mark.parametrize("text", [f"ws:{WS}/root@v1", f"ws:{WS}/{NODE}@v!1"])
def test_a_bad_version_suffix_is_refused(text: str) -> None:
    with pytest.raises(UsageError, match="malformed reference"):
        parse_ref(text)
