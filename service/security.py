"""Transport security and authentication: TLS / mTLS credentials and bearer tokens.

Endoscopy frames are patient data. Tokens are read from a file or an environment
variable, never from a command-line value (which `ps` would show). Health checks stay
reachable without a token so that probes work; every other call needs it.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import Counter

from .config import TlsFiles

TOKEN_ENV = "POLYPSTREAM_TOKEN"
UNAUTHENTICATED_METHODS_PREFIX = "/grpc.health.v1.Health/"


class SecurityConfigError(ValueError):
    """A TLS file or token that cannot be used; the message names it."""


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SecurityConfigError(f"{path}: cannot read {what} ({exc.strerror})") from exc
    if not data.strip():
        raise SecurityConfigError(f"{path}: {what} is empty")
    return data


def load_token(token_file: Path | None) -> str | None:
    """The bearer token from `token_file`, else $POLYPSTREAM_TOKEN, else None (no auth)."""
    if token_file is not None:
        return _read(token_file, "token file").decode().strip()
    token = os.environ.get(TOKEN_ENV, "").strip()
    return token or None


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """The server's TLS credentials from its PEM files (mTLS when a client CA is given)."""
    client_ca = _read(tls.client_ca, "client CA") if tls.client_ca else None
    return grpc.ssl_server_credentials(
        [(_read(tls.key, "TLS key"), _read(tls.cert, "TLS certificate"))],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def client_credentials(ca: Path | None, cert: Path | None = None, key: Path | None = None) -> grpc.ChannelCredentials:
    """TLS credentials for a client: the CA to trust (None: system roots), and a client pair for mTLS."""
    if (cert is None) != (key is None):
        raise SecurityConfigError("a client certificate needs its key, and a key its certificate")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "CA certificate") if ca else None,
        private_key=_read(key, "client key") if key else None,
        certificate_chain=_read(cert, "client certificate") if cert else None,
    )


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without `authorization: Bearer <token>` (UNAUTHENTICATED, counted)."""

    def __init__(self, token: str, rejected: Counter, known_methods: frozenset[str]) -> None:
        self._expected = f"Bearer {token}".encode()
        self._rejected = rejected
        self._known = known_methods  # label values stay bounded whatever names callers send

        async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or invalid bearer token")

        self._deny = grpc.unary_unary_rpc_method_handler(deny)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if method.startswith(UNAUTHENTICATED_METHODS_PREFIX):
            return await continuation(handler_call_details)
        for key, value in handler_call_details.invocation_metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else value
                if hmac.compare_digest(given, self._expected):
                    return await continuation(handler_call_details)
        self._rejected.labels(method if method in self._known else "other").inc()
        return self._deny
