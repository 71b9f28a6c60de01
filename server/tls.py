"""TLS and mutual TLS for every transport, from Triton's flags: one set of options, two ways to apply it."""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

logger = logging.getLogger(__name__)

ALPN_H2 = "h2"  # gRPC runs over HTTP/2 only: a TLS client that cannot speak it is refused at the handshake
TLS_HANDSHAKE_TIMEOUT_S = 10.0  # a peer that opens TCP and never finishes the handshake is closed after this
# Same cipher policy as grpc-core's default for TLS 1.2 (ECDHE with AES-GCM or ChaCha20); TLS 1.3 suites are fixed.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


class TlsConfigError(ValueError):
    """A TLS flag names a file that cannot be used; the message says which flag and why."""


@dataclass(frozen=True, slots=True)
class TlsOptions:
    cert_file: Path  # --grpc-server-cert: PEM certificate chain the server presents
    key_file: Path  # --grpc-server-key: PEM private key of that certificate
    root_cert_file: Path | None = None  # --grpc-root-cert: CA bundle that signs client certificates
    is_mutual: bool = False  # --grpc-use-ssl-mutual: a client certificate signed by the root is required

    def read(self) -> tuple[bytes, bytes, bytes | None]:
        """(certificate chain, private key, root certificates) as PEM bytes; raises TlsConfigError."""
        return (_read(self.cert_file, "--grpc-server-cert"), _read(self.key_file, "--grpc-server-key"),
                _read(self.root_cert_file, "--grpc-root-cert") if self.root_cert_file else None)


def tls_options(use_ssl: bool, use_ssl_mutual: bool, server_cert: str | None, server_key: str | None,
                root_cert: str | None) -> TlsOptions | None:
    """Triton's five flags as options, or None for plaintext; raises TlsConfigError on a bad combination."""
    if not (use_ssl or use_ssl_mutual):
        if server_cert or server_key or root_cert:
            raise TlsConfigError("--grpc-server-cert, --grpc-server-key and --grpc-root-cert need --grpc-use-ssl "
                                 "(or --grpc-use-ssl-mutual)")
        return None
    if not server_cert or not server_key:
        raise TlsConfigError("--grpc-use-ssl needs --grpc-server-cert FILE and --grpc-server-key FILE")
    if use_ssl_mutual and not root_cert:
        raise TlsConfigError("--grpc-use-ssl-mutual needs --grpc-root-cert FILE, the CA that signs client "
                             "certificates")
    return TlsOptions(Path(server_cert), Path(server_key), Path(root_cert) if root_cert else None, use_ssl_mutual)


def ssl_context(options: TlsOptions) -> ssl.SSLContext:
    """A server context for the native transport: TLS 1.2+, ALPN h2, client certificates when mutual."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.set_alpn_protocols([ALPN_H2])
    try:
        context.load_cert_chain(options.cert_file, options.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(f"--grpc-server-cert {options.cert_file} with --grpc-server-key {options.key_file} "
                             f"cannot be loaded: {exc}") from None
    if options.is_mutual:
        assert options.root_cert_file is not None
        try:
            context.load_verify_locations(cafile=options.root_cert_file)
        except (OSError, ssl.SSLError) as exc:
            raise TlsConfigError(f"--grpc-root-cert {options.root_cert_file} cannot be loaded: {exc}") from None
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def grpc_credentials(options: TlsOptions) -> grpc.ServerCredentials:
    """The same policy for grpcio's server (the in-process grpcio transport and the --workers processes)."""
    chain, key, root = options.read()
    return grpc.ssl_server_credentials(((key, chain),), root_certificates=root if options.is_mutual else None,
                                       require_client_auth=options.is_mutual)


def _read(path: Path | None, flag: str) -> bytes:
    assert path is not None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{flag} {path} cannot be read: {exc.strerror}") from None
