"""TLS for the client: aiohttp imported without its CA loading, and a verifying context that
loads its CA certificates at the first handshake (the system store or ``--ca-bundle``).

The package imports this module first, before anything imports aiohttp.
"""

from __future__ import annotations

import ssl
import sys
from pathlib import Path
from typing import Any

from fastio_dl.errors import UsageError


def _import_aiohttp_without_ca_store() -> None:
    """Import aiohttp without its import-time CA loading.

    aiohttp builds two SSL contexts when first imported, each reading the system CA store
    (about 17 ms apiece here), used only when a caller passes no context of its own. fastio-dl
    always passes its own (:func:`verifying_context`), so those two are left empty: should one
    ever be used, it trusts nothing and TLS fails closed.
    """
    if "aiohttp" in sys.modules:
        return

    def skip(self: ssl.SSLContext) -> None:
        return None

    ssl.SSLContext.set_default_verify_paths = skip  # type: ignore[method-assign]
    try:
        import aiohttp  # noqa: F401
    finally:
        del ssl.SSLContext.set_default_verify_paths  # the C method again


_import_aiohttp_without_ca_store()


class CaOnFirstUseContext(ssl.SSLContext):
    """A verifying client context (certificate and host name required) that loads its CA
    certificates at its first TLS handshake: ``cafile`` if set, else the system store
    (SSL_CERT_FILE/SSL_CERT_DIR honoured). A run that makes no TLS connection (a plain-http
    mirror, the bundled emulator) then never parses them: about 20 ms here."""

    cafile: str | None = None
    _loaded = False

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            if self.cafile is not None:
                self.load_verify_locations(cafile=self.cafile)
            else:
                self.load_default_certs(ssl.Purpose.SERVER_AUTH)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self._load()
        return super().wrap_bio(*args, **kwargs)

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self._load()
        return super().wrap_socket(*args, **kwargs)


def check_ca_bundle(path: Path) -> None:
    """A CA bundle must be a readable PEM file with a certificate (its certificates are parsed
    at the first handshake): else one clear line now rather than a TLS error later."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read CA bundle {path}: {exc.strerror or exc}") from None
    if b"-----BEGIN CERTIFICATE-----" not in text:
        raise UsageError(f"CA bundle {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")


def verifying_context(ca_bundle: Path | None) -> CaOnFirstUseContext:
    """Always a context of our own (never aiohttp's defaults, see above): verified, with the
    system store (SSL_CERT_FILE/SSL_CERT_DIR honoured) or the --ca-bundle given."""
    context = CaOnFirstUseContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca_bundle is not None:
        check_ca_bundle(ca_bundle)
        context.cafile = str(ca_bundle)
    return context
