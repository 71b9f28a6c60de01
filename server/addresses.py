"""Listening addresses: parsed once, bound (or checked) before any model loads, held until the server takes them."""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import stat
from dataclasses import dataclass

logger = logging.getLogger(__name__)

LOOPBACK_HOST = "127.0.0.1"  # a bare PORT listens here, as the defaults do: nothing is exposed unasked
MAX_PORT = 65535
UNIX_PATH_MAX_BYTES = 107  # Linux's sun_path holds 108 bytes, the last one the terminating NUL
TCP_EXPECTED = f"expected HOST:PORT with PORT in 0..{MAX_PORT}"


class AddressError(ValueError):
    """An address flag's value that does not parse; the message says what was expected."""


class ListenError(OSError):
    """An address that cannot be listened on; the message names the flag, the value and why."""


@dataclass(frozen=True, slots=True)
class TcpAddress:
    host: str  # as bind() takes it: an IPv6 literal without brackets
    port: int  # 0: any free port

    @property
    def text(self) -> str:
        """HOST:PORT as grpcio and the native transport take it (IPv6 in brackets)."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class UnixAddress:
    path: str

    @property
    def text(self) -> str:
        return f"unix:{self.path}"


Address = TcpAddress | UnixAddress


def parse_address(text: str, *, allow_unix: bool) -> Address:
    """HOST:PORT, [IPV6]:PORT, a bare PORT (on the loopback) or, where allowed, unix:PATH; raises AddressError."""
    if text.startswith("unix:"):
        if not allow_unix:
            raise AddressError(f"{TCP_EXPECTED}, not a Unix socket (this endpoint is HTTP over TCP)")
        path = text[len("unix:"):]
        path = path[2:] if path.startswith("//") else path  # unix:///run/x.sock, gRPC's URI form
        if not path:
            raise AddressError("expected unix:PATH with a PATH")
        if len(os.fsencode(path)) > UNIX_PATH_MAX_BYTES:
            raise AddressError(f"the socket path is {len(os.fsencode(path))} bytes; a Unix socket path "
                               f"holds at most {UNIX_PATH_MAX_BYTES}")
        return UnixAddress(path)
    host, colon, port_text = text.rpartition(":")
    if not colon:
        host, port_text = LOOPBACK_HOST, text
    port = _port(port_text)
    if host.startswith("[") and host.endswith("]"):
        try:
            return TcpAddress(str(ipaddress.IPv6Address(host[1:-1])), port)
        except ValueError:
            raise AddressError(f"{TCP_EXPECTED}: {host} is not an IPv6 address") from None
    if not host:
        raise AddressError(f"{TCP_EXPECTED} and a HOST ({LOOPBACK_HOST}: this machine only, 0.0.0.0: "
                           "every interface)")
    if ":" in host or "[" in host or "]" in host:
        raise AddressError(f"{TCP_EXPECTED}; an IPv6 HOST goes in brackets, as [::1]:{port}")
    return TcpAddress(host, port)


def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_PORT:
        raise AddressError(TCP_EXPECTED)
    return int(text)


class Reservation:
    """An address held from the start-up checks until its server binds it: TCP sockets bound but not
    listening (so clients are refused, as before, and no other program takes the port meanwhile), or
    a Unix socket path checked to be free."""

    def __init__(self, address: Address, sockets: list[socket.socket]) -> None:
        self.address = address  # with the port the kernel chose when port 0 was asked for
        self._sockets = sockets

    def release(self) -> Address:
        """Frees the port for the server to bind at once; returns the address to bind."""
        for sock in self._sockets:
            sock.close()
        self._sockets = []
        return self.address


def reserve(address: Address, flag: str, given: str, *, family: int = socket.AF_UNSPEC) -> Reservation:
    """Binds (or checks) the address now; raises ListenError naming the flag and the value as given."""
    named = given if given == address.text else f"{given} ({address.text})"
    if isinstance(address, UnixAddress):
        _check_unix_path(address.path, f"{flag} {named}")
        return Reservation(address, [])
    try:
        infos = socket.getaddrinfo(address.host, address.port, family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"{flag} {named}: cannot resolve host '{address.host}' ({exc.strerror})") from None
    sockets: list[socket.socket] = []
    port = address.port
    failure: OSError | None = None
    for family_found, kind, proto, _, sockaddr in dict.fromkeys(infos):  # every address, as asyncio binds
        sock = socket.socket(family_found, kind, proto)
        try:
            # As the transports set it: a previous run's TIME_WAIT connections must not fail this probe
            # where the server's own bind would succeed. Linux still refuses a port someone listens on.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family_found == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio's create_server
            sock.bind((sockaddr[0], port, *sockaddr[2:]))
        except OSError as exc:
            sock.close()
            # asyncio skips a family the machine has not enabled (bpo-30945: "localhost" without IPv6).
            if exc.errno != errno.EADDRNOTAVAIL or len(infos) == 1:
                failure = exc
                break
            failure = failure or exc
            continue
        sockets.append(sock)
        port = sock.getsockname()[1]  # port 0: every address of the host gets the port chosen first
    if failure is not None and (not sockets or failure.errno != errno.EADDRNOTAVAIL):
        for sock in sockets:
            sock.close()
        raise ListenError(f"{flag} {named}: {_bind_failure(failure, address)}")
    return Reservation(TcpAddress(address.host, port), sockets)


def _bind_failure(exc: OSError, address: TcpAddress) -> str:
    if exc.errno == errno.EADDRINUSE:
        return "address already in use"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot assign requested address ({address.host} is not an address of this machine)"
    if exc.errno == errno.EACCES and 0 < address.port < 1024:
        return "permission denied (a port below 1024 needs privileges)"
    return exc.strerror or str(exc)


def _check_unix_path(path: str, named: str) -> None:
    """The socket's folder must exist and be writable; an existing file there must be a socket nobody
    answers on (the transports replace a stale socket file, and would silently take a live one's path)."""
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise ListenError(f"{named}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ListenError(f"{named}: the folder {folder} is not writable")
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ListenError(f"{named}: {path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return  # a stale socket file: the transport replaces it
    raise ListenError(f"{named}: address already in use (a server answers on {path})")
