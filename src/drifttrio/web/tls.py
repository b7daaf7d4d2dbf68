"""TLS for the public listener: the one server-side context both transports use.

``drifttrio serve --certfile --keyfile`` loads it once at startup, before the
store is opened, so a certificate or key it cannot use is one line naming the
file (a :class:`~drifttrio.ConfigError`), not a traceback at the first client.
"""

from __future__ import annotations

import ssl
from typing import Final, NoReturn

from .._errors import ConfigError

__all__ = ["ALPN_PROTOCOLS", "server_ssl_context"]

#: The only protocol offered: both transports speak HTTP/1.1 (WebSockets
#: included); hypercorn's HTTP/2 is not offered, so a browser gets the same
#: server whichever transport runs.
ALPN_PROTOCOLS: Final = ("http/1.1",)


class _EncryptedKey(Exception):
    """The key asks for a passphrase: there is no one to type it."""


def _no_passphrase() -> NoReturn:
    raise _EncryptedKey


def server_ssl_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """A server context (TLS 1.2 or later, Python's default ciphers, ALPN
    ``http/1.1``) with ``certfile``'s chain and ``keyfile``'s key, or a
    :class:`ConfigError` saying which file is wrong and why."""
    for what, path in (("certificate", certfile), ("key", keyfile)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise ConfigError(f"cannot load TLS {what} {path}: {exc.strerror or exc}") from None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(list(ALPN_PROTOCOLS))
    try:
        # A password callback, so an encrypted key fails here instead of
        # prompting on a terminal that a service does not have.
        context.load_cert_chain(certfile, keyfile, password=_no_passphrase)
    except _EncryptedKey:
        raise ConfigError(
            f"cannot load TLS key {keyfile}: it is encrypted; give an unencrypted copy"
            f" (openssl pkey -in {keyfile} -out key.pem)"
        ) from None
    except ssl.SSLError as exc:
        raise ConfigError(_unusable(exc, certfile, keyfile)) from None
    return context


def _unusable(exc: ssl.SSLError, certfile: str, keyfile: str) -> str:
    """Which file ``load_cert_chain`` failed on, in words (OpenSSL's own
    message names neither)."""
    if exc.reason == "KEY_VALUES_MISMATCH":
        return f"cannot load TLS certificate {certfile}: it does not match the key {keyfile}"
    try:
        ssl.create_default_context(cafile=certfile)  # parses the certificates alone
    except ssl.SSLError:
        return f"cannot load TLS certificate {certfile}: no PEM certificate in it"
    return f"cannot load TLS key {keyfile}: no PEM private key in it"
