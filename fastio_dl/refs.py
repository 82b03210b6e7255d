"""Parse what a user may type to name a file or folder (API contract, section 3).

Accepted forms (the same grammar in arguments and manifests):

* ``NODE``: bare node id; needs a default workspace (``-w``) or share (``-s``)
* ``ws:WS/NODE`` and ``share:SH/NODE``; ``NODE`` may be ``root``
* web URLs: ``https://ORG.fast.io/workspace/WS/storage/FOLDER``,
  ``https://ORG.fast.io/workspace/WS/preview/FILE``, ``https://go.fast.io/shared/NAME[/SLUG]``,
  ``https://go.fast.io/shared/NAME/SLUG/preview/FILE``
* the web app's other links: ``https://ORG.fast.io/workspace/WS/share/NAME`` (a share opened
  from its workspace: the share's root) and ``...?note=ID`` (that note); ``?chat=ID`` and any
  path this module does not know are refused, never widened to the whole workspace
* API URLs: ``.../current/{workspace|share}/ID/storage/NODE/...`` (also ``/v1.0/``) and
  ``.../current/fileshare/ID/...``
* ``fileshare:ID``: a File Share (a link to one file)
* any of these followed by ``@VERSION``: that version of a file (ids from ``ls --versions``)
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

from fastio_dl.errors import UsageError

Context = Literal["workspace", "share", "fileshare"]
#: The node of a File Share reference: the API addresses the shared file through the share.
FILESHARE_NODE = "file"

# Node ids are opaque: 29-30 alphanumerics in the wild. We accept a slightly wider band so that a
# future id length does not lock users out, but reject anything that is clearly not an id.
_NODE_ID = re.compile(r"[a-z0-9]{20,40}")
SPECIAL_NODES = frozenset({"root", "trash"})
_CONTEXT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_NUMERIC_PREFIX = re.compile(r"^(\d{19})(?:-.*)?$")
_API_PATH = re.compile(
    r"/(?:current|v\d+(?:\.\d+)?)/(workspace|share)/([^/]+)/storage/([^/]+)(?:/|$)"
)
_API_FILESHARE = re.compile(r"/(?:current|v\d+(?:\.\d+)?)/fileshare/([^/]+)(?:/|$)")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


@dataclass(frozen=True, slots=True)
class Ref:
    """A parsed reference: which context (workspace or share), which id, which node."""

    context: Context
    context_id: str
    node: str  # normalised: lower case, no hyphens; or "root"/"trash"
    text: str  # what the user typed, for messages and manifests
    version: str | None = None  # REF@VERSION: that version of a file, not the current one

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
    head, at, version = raw.rpartition("@")
    if at and head and "/" not in version and "?" not in version:
        if not _VERSION.fullmatch(version):
            raise _fail(text, f"{version!r} after @ is not a version id")
        ref = _parse_unversioned(head, text, workspace, share)
        if ref.node in SPECIAL_NODES:
            raise _fail(text, f"a version names a file, not {ref.node}")
        return dataclasses.replace(ref, text=raw, version=version)
    return _parse_unversioned(raw, text, workspace, share)


def _parse_unversioned(raw: str, text: str, workspace: str | None, share: str | None) -> Ref:
    lowered = raw.lower()
    if lowered.startswith(("http://", "https://")):
        return _parse_url(raw)
    if lowered.startswith("fileshare:"):
        return _fileshare(text, raw[len("fileshare:") :])
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


def _fileshare(text: str, raw: str) -> Ref:
    ctx_id = _context_id(raw.strip().strip("/"))
    if ctx_id is None:
        raise _fail(text, f"{raw!r} is not a File Share id")
    return Ref("fileshare", ctx_id, FILESHARE_NODE, text.strip())


def _parse_url(text: str) -> Ref:
    """The web app's and the API's link forms; anything else is refused, never widened."""
    parts = urlsplit(text)
    path = parts.path
    query = parse_qs(parts.query)
    api = _API_PATH.search(path)
    if api:
        context, ctx_raw, node_raw = api.groups()
        return _from_parts(text, context, ctx_raw, node_raw)
    api_fileshare = _API_FILESHARE.search(path)
    if api_fileshare:
        return _fileshare(text, unquote(api_fileshare.group(1)))
    segments = [unquote(s) for s in path.split("/") if s]
    if "chat" in query:
        raise _fail(text, "a chat link holds no files to download")
    if not segments or segments[0] not in ("workspace", "shared", "share") or len(segments) < 2:
        raise _fail(text, "not a Fast.io workspace, share or API URL")
    if segments[0] == "workspace":
        context, ctx_raw, rest = "workspace", segments[1], segments[2:]
        if rest[:1] == ["share"]:
            # /workspace/WS/share/NAME: a share managed from its workspace
            if len(rest) < 2:
                raise _fail(text, "nothing after /share/")
            context, ctx_raw, rest = "share", rest[1], rest[2:]
    else:
        # /shared/NAME[/SLUG]: the slug is the share's title in the link, not an id
        context, ctx_raw, rest = "share", segments[1], segments[2:]
        if rest and rest[0] not in ("storage", "preview"):
            rest = rest[1:]
    note = query.get("note")
    if note:
        # ?note=ID opens that note over whatever folder the page shows
        return _from_parts(text, context, ctx_raw, note[-1])
    if not rest:
        return _from_parts(text, context, ctx_raw, "root")
    marker = rest[0]
    if marker not in ("storage", "preview"):
        raise _fail(text, f"/{marker}/ is not a link form fastio-dl knows")
    if len(rest) == 1:
        if marker == "storage":
            return _from_parts(text, context, ctx_raw, "root")
        raise _fail(text, "nothing after /preview/")
    if len(rest) > 2:
        raise _fail(text, f"unexpected {'/'.join(rest[2:])!r} after the {marker} id")
    return _from_parts(text, context, ctx_raw, rest[1])


def _from_parts(text: str, context: str, ctx_raw: str, node_raw: str) -> Ref:
    ctx_id = _context_id(ctx_raw)
    if ctx_id is None:
        raise _fail(text, f"{ctx_raw!r} is not a {context} id or name")
    node = normalise_node_id(node_raw)
    if node is None:
        raise _fail(text, f"{node_raw!r} is not a node id")
    return Ref(context, ctx_id, node, text)  # type: ignore[arg-type]
