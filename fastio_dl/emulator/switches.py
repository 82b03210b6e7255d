"""How the emulator misbehaves on request: faults, refusals, listing shapes and the other switches.

A test or the command line sets them (``Switches``, ``Fault.parse``); the server reads them on
every request (``server.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from fastio_dl.emulator.data import Space

FAULT_KINDS = (
    "rate_limit",  # 429; retry_after None -> no body hint (headers only)
    "server_error",  # 5xx burst (status)
    "drop",  # close the connection after after_bytes of the body
    "stall",  # stop sending for `seconds` after after_bytes
    "wrong_bytes",  # flip a byte at after_bytes (hash check must fail)
    "expire_token",  # 401 on a ?token= read
    "long_length",  # Content-Length longer than the body, then close
    "ignore_range",  # answer 200 with the full body to a Range request
    "payment",  # 402 out of credits
    "shift_range",  # answer a Range request with a Content-Range that starts at 0
)


@dataclass
class Fault:
    kind: str
    endpoint: str = "read"  # read | api | any
    times: int | None = None  # how many times it fires; None: every time (with probability)
    probability: float = 1.0
    after_bytes: int = 0
    seconds: float = 0.0
    status: int = 503
    retry_after: float | None = 0.0
    min_size: int = 0  # only reads of files at least this large

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {self.kind!r}; one of {', '.join(FAULT_KINDS)}")

    @classmethod
    def parse(cls, text: str) -> Fault:
        """``kind[:key=value,...]``, e.g. ``drop:after_bytes=1000,times=3,probability=0.5``."""
        kind, _, rest = text.partition(":")
        kwargs: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(cls)}
        aliases = {"after": "after_bytes", "p": "probability", "n": "times"}
        for pair in filter(None, rest.split(",")):
            key, _, value = pair.partition("=")
            key = aliases.get(key.strip(), key.strip())
            if key not in types:
                raise ValueError(f"unknown fault option {key!r}")
            if value.lower() in ("none", ""):
                kwargs[key] = None
            elif key in ("times", "after_bytes", "status", "min_size"):
                kwargs[key] = int(value)
            elif key in ("probability", "seconds", "retry_after"):
                kwargs[key] = float(value)
            else:
                kwargs[key] = value
        return cls(kind=kind.strip(), **kwargs)


# Shapes a folder listing may take (fastio-api.md section 4 and 7). "choice" is the contract's
# CHOICE; the client must read "array" to "id_keyed", and must fail loudly on the others.
LIST_SHAPES = (
    "choice",  # {nodes: {items, count}, next_cursor, pagination: {page_size, has_more, ...}}
    "array",  # {nodes: [...], next_cursor}
    "items",  # {items: [...], pagination: {has_more, next_cursor}}
    "files",  # {files: [...], next_cursor}
    "wrapped",  # {response: {nodes: [...], next_cursor}}
    "id_keyed",  # {nodes: {ID: node, ...}, next_cursor}; an empty folder: [] (PHP's json_encode)
    "unknown_key",  # {data: [...], next_cursor}: children under a key nobody reads
    "cursor_elsewhere",  # {nodes: [...], continuation: C}: the cursor under another key
    "has_more_no_cursor",  # {nodes: [...], pagination: {has_more}}: no cursor at all
)
READ_ENDPOINTS = ("details", "list", "requestread", "read")


@dataclass
class Refusal:
    """Answer ``status`` with error ``code`` on some endpoints of a space, or of one node.

    401 10545 (not a member), 401 115069 (not shared with you), 403 (restricted, scope), or
    402 on ``requestread``: the refusals the real API may give one workspace or file while the
    token itself is fine.
    """

    status: int
    code: int
    text: str = "Access denied"
    endpoints: tuple[str, ...] = READ_ENDPOINTS
    space: str | None = None  # a space id or name; None: every space
    node: str | None = None  # a node id (folder for list, file for reads); None: every node
    times: int | None = None  # how many times it fires; None: every time
    after: int = 0  # let this many matching requests through first (a refusal mid-run)

    def matches(self, endpoint: str, space: Space, node_ids: list[str]) -> bool:
        if endpoint not in self.endpoints or self.times == 0:
            return False
        if self.space is not None and self.space not in (space.id, space.name):
            return False
        return self.node is None or norm_id(self.node) in node_ids


@dataclass
class Switches:
    latency: float = 0.0  # seconds added to every request
    bandwidth: int = 0  # bytes per second per read (0: unlimited)
    range_enabled: bool = True
    bearer_reads: bool = True  # False: /read/ refuses the API token, wants ?token=
    bearer_refusal_status: int = 401
    redirect_reads_to: str | None = None  # base URL of another origin: /read/ answers 307 there
    faults: list[Fault] = field(default_factory=list)
    seed: int = 7
    list_shape: str = "choice"  # one of LIST_SHAPES
    list_page_size: int = 0  # the server's own page size (0: the page_size asked for)
    yes_no: bool = False  # envelopes say result "yes"/"no" instead of true/false
    refusals: list[Refusal] = field(default_factory=list)
    rate_window: int = 0  # API requests per window (0: no limit); x-ve-limit-avail counts down
    rate_window_seconds: float = 60.0
    revoke_tokens_after: int = 0  # after this many API requests every API token dies (0: never)

    def __post_init__(self) -> None:
        if self.list_shape not in LIST_SHAPES:
            raise ValueError(f"unknown list shape {self.list_shape!r}; one of {LIST_SHAPES}")


def norm_id(node_id: str) -> str:
    return node_id.replace("-", "").lower()
