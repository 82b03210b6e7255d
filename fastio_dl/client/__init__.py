"""The Fast.io API as fastio-dl speaks it: the only part of the engine that touches HTTP.

Everything it raises is a :class:`fastio_dl.errors.FastioDlError`; aiohttp exceptions never
leak (their text can hold a ``?token=`` URL). Nodes leave it parsed
(:class:`fastio_dl.models.Node`), never as raw answers. Its modules:

- ``tls``: aiohttp imported without its CA loading; a verifying context that loads CAs late
- ``retries``: error answers to error types, wait hints, the retry policy, the rate gate
- ``answers``: reading JSON answers (envelope, error bodies, nodes, versions, listing pages)
- ``auth``: the token: OAuth renewal of a stored login, the token check, what a 401 means
- ``session``: ApiSession: the aiohttp session and the JSON calls (gate, retries, envelope)
- ``endpoints``: FastioClient: details, list, versions, readnote, File Share, requestread, read
- ``reads``: an open read (Content-Range, chunks whose network errors are short reads)
- ``lean``: small files' reads, whole, over a lean HTTP/1.1 client (httptools' parser)
- ``probes``: ``doctor``'s single requests, kept as they came back, and what it reports of them
"""

from fastio_dl.client import tls  # noqa: F401  (first: aiohttp is imported through its shim)

# isort: split
from fastio_dl.client.endpoints import BULK_DETAILS_MAX, FastioClient
from fastio_dl.client.reads import ReadStream
from fastio_dl.client.retries import RetryPolicy

__all__ = ["BULK_DETAILS_MAX", "FastioClient", "ReadStream", "RetryPolicy"]
