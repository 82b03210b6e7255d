"""Parse what a user may type to name a file or folder (API contract, section 3).

Accepted forms (the same grammar in arguments and manifests):

* ``NODE``: bare node id; needs a default workspace (``-w``) or share (``-s``)
* ``ws:WS/NODE`` and ``share:SH/NODE``; ``NODE`` may be ``root``
* web URLs: ``https://ORG.fast.io/workspace/WS/storage/FOLDER``,
  ``https://ORG.fast.io/workspace/WS/preview/FILE``, ``https://go.fast.io/shared/NAME[/SLUG]``,
  ``https://go.fast.io/shared/NAME/SLUG/preview/FILE``
* API URLs: ``.../current/{workspace|share}/ID/storage/NODE/...`` (also ``/v1.0/``)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

from fastio_dl.errors import UsageError

Context = Literal["workspace", "share"]

# Node ids are opaque: 29-30 alphanumerics in the wild. We accept a slightly wider band so that a
# future id length does not lock users out, but reject anything that is clearly not an id.
_NODE_ID = re.compile(r"[a-z0-9]{20,40}")
SPECIAL_NODES = frozenset({"root", "trash"})
_CONTEXT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_NUMERIC_PREFIX = re.compile(r"^(\d{19})(?:-.*)?$")
_API_PATH = re.compile(
    r"/(?:current|v\d+(?:\.\d+)?)/(workspace|share)/([^/]+)/storage/([^/]+)(?:/|$)"
)


@dataclass(frozen=True, slots=True)
class Ref:
    """A parsed reference: which context (workspace or share), which id, which node."""

    context: Context
    context_id: str
    node: str  # normalised: lower case, no hyphens; or "root"/"trash"
    text: str  # what the user typed, for messages and manifests

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.context, self.context_id, self.node)


def normalise_node_id(raw: str) -> str | None:
    """Return the canonical node id (lower case, no hyphens), or None if it is not one."""
    value = raw.strip().lower()
    if value in SPECIAL_NODES:
        return value
    value = value.replace("-", "")
    return value if _NODE_ID.fullmatch(value) else None


def _context_id(raw: str) -> str | None:
    value = unquote(raw.strip())
    match = _NUMERIC_PREFIX.match(value)
    if match:
        # A workspace segment like "3117763504443666597-general" means the leading id.
        return match.group(1)
    return value if _CONTEXT_ID.fullmatch(value) else None


def _fail(text: str, why: str) -> UsageError:
    return UsageError(
        f"malformed reference {text!r}: {why}",
        "use NODE with -w/-s, ws:WORKSPACE/NODE, share:SHARE/NODE or a Fast.io URL",
    )


def parse_ref(text: str, *, workspace: str | None = None, share: str | None = None) -> Ref:
    """Parse one reference; raise :class:`UsageError` naming it when it is malformed."""
    raw = text.strip()
    if not raw:
        raise _fail(text, "it is empty")
    lowered = raw.lower()
    if lowered.startswith(("http://", "https://")):
        return _parse_url(raw)
    for prefix, context in (("ws:", "workspace"), ("workspace:", "workspace"), ("share:", "share")):
        if lowered.startswith(prefix):
            rest = raw[len(prefix) :]
            ctx_raw, sep, node_raw = rest.partition("/")
            if not sep:
                node_raw = "root"
            ctx_id = _context_id(ctx_raw)
            if ctx_id is None:
                raise _fail(text, f"{ctx_raw!r} is not a {context} id or name")
            node = normalise_node_id(node_raw.strip("/") or "root")
            if node is None:
                raise _fail(text, f"{node_raw!r} is not a node id")
            return Ref(context, ctx_id, node, raw)  # type: ignore[arg-type]
    node = normalise_node_id(raw)
    if node is None:
        raise _fail(text, "not a node id, ws:/share: reference or URL")
    if workspace and share:
        raise UsageError("give either --workspace or --share, not both")
    if workspace:
        ctx_id = _context_id(workspace)
        if ctx_id is None:
            raise UsageError(f"malformed workspace {workspace!r}")
        return Ref("workspace", ctx_id, node, raw)
    if share:
        ctx_id = _context_id(share)
        if ctx_id is None:
            raise UsageError(f"malformed share {share!r}")
        return Ref("share", ctx_id, node, raw)
    raise _fail(text, "a bare node id needs --workspace WS or --share SH")


def _parse_url(text: str) -> Ref:
    parts = urlsplit(text)
    path = parts.path
    api = _API_PATH.search(path)
    if api:
        context, ctx_raw, node_raw = api.groups()
        return _from_parts(text, context, ctx_raw, node_raw)
    segments = [unquote(s) for s in path.split("/") if s]
    if len(segments) >= 4 and segments[0] == "workspace" and segments[2] in ("storage", "preview"):
        return _from_parts(text, "workspace", segments[1], segments[3])
    if len(segments) == 3 and segments[0] == "workspace" and segments[2] == "preview":
        raise _fail(text, "nothing after /preview/")
    if len(segments) >= 2 and segments[0] == "workspace":
        return _from_parts(text, "workspace", segments[1], "root")
    if len(segments) >= 2 and segments[0] in ("shared", "share"):
        # /shared/NAME[/SLUG][/preview/FILE] or /shared/NAME[/SLUG]/storage/FOLDER
        for marker in ("preview", "storage"):
            if marker in segments[2:]:
                index = segments.index(marker, 2)
                if index + 1 < len(segments):
                    return _from_parts(text, "share", segments[1], segments[index + 1])
                raise _fail(text, f"nothing after /{marker}/")
        return _from_parts(text, "share", segments[1], "root")
    raise _fail(text, "not a Fast.io workspace, share or API URL")


def _from_parts(text: str, context: str, ctx_raw: str, node_raw: str) -> Ref:
    ctx_id = _context_id(ctx_raw)
    if ctx_id is None:
        raise _fail(text, f"{ctx_raw!r} is not a {context} id or name")
    node = normalise_node_id(node_raw)
    if node is None:
        raise _fail(text, f"{node_raw!r} is not a node id")
    return Ref(context, ctx_id, node, text)  # type: ignore[arg-type]
