"""The container's health probe: one grpc.health.v1 Check against infergate; exit 0 when it answers SERVING.

    python healthcheck.py [ADDRESS] [--service NAME] [--timeout-s S] [--alive] [--root-cert FILE ...]

ADDRESS is HOST:PORT or unix:PATH (default $INFERGATE_HEALTH_ADDRESS, else 127.0.0.1:8001). The image's
HEALTHCHECK and the sidecar's exec probes run it; the fleet's pods use Kubernetes' own gRPC probes instead,
which send the same Check. Exit status: 0 SERVING (with --alive: any answer, SERVING or NOT_SERVING, so a
server that is loading or draining counts as alive); 1 NOT_SERVING or no answer (the reason on stderr); 2 a
bad argument. Needs only grpcio and grpcio-health-checking, which infergate depends on.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:8001"  # the image's --grpc-address, seen from inside the container
ADDRESS_ENV = "INFERGATE_HEALTH_ADDRESS"  # overrides the default: unix:/run/infergate/infergate.sock in a sidecar
DEFAULT_TIMEOUT_S = 3.0  # the Check's deadline; below Docker's and Kubernetes' probe timeouts


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="healthcheck", description=__doc__.split("\n\n")[0])
    parser.add_argument("address", nargs="?", default=os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS,
                        help=f"HOST:PORT or unix:PATH (default ${ADDRESS_ENV}, else {DEFAULT_ADDRESS})")
    parser.add_argument("--service", default="",
                        help="the health-checked service: '' (default) is the whole server, NOT_SERVING while "
                             "models load and from the first moment of a drain")
    parser.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, help="deadline of the Check")
    parser.add_argument("--alive", action="store_true",
                        help="liveness: any answer passes, NOT_SERVING included (loading and draining are alive)")
    tls = parser.add_argument_group("TLS (a server started with --grpc-use-ssl)")
    tls.add_argument("--root-cert", type=Path, help="PEM CA bundle that signs the server's certificate")
    tls.add_argument("--client-cert", type=Path, help="PEM certificate for mutual TLS")
    tls.add_argument("--client-key", type=Path, help="PEM key of --client-cert")
    tls.add_argument("--server-name", default=None, help="the name the server's certificate carries")
    args = parser.parse_args(argv)
    if args.timeout_s <= 0:
        parser.error(f"--timeout-s must be above 0, got {args.timeout_s:g}")
    if (args.client_cert is None) != (args.client_key is None):
        parser.error("--client-cert and --client-key go together")
    if args.client_cert is not None and args.root_cert is None:
        parser.error("--client-cert needs --root-cert (mutual TLS is TLS)")
    return args


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    """A plaintext channel, or a TLS one when --root-cert is given."""
    if args.root_cert is None:
        return grpc.insecure_channel(args.address)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=args.root_cert.read_bytes(),
        private_key=args.client_key.read_bytes() if args.client_key else None,
        certificate_chain=args.client_cert.read_bytes() if args.client_cert else None)
    options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
    return grpc.secure_channel(args.address, credentials, options=options)


def check(args: argparse.Namespace) -> tuple[int, str]:
    """Returns the exit status and the line that explains it."""
    status_name = health_pb2.HealthCheckResponse.ServingStatus.Name
    try:
        with open_channel(args) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout_s)
    except grpc.RpcError as error:
        code = error.code() if isinstance(error, grpc.Call) else None
        details = error.details() if isinstance(error, grpc.Call) else str(error)
        return 1, f"{args.address}: no health answer ({code.name if code else 'error'}: {details})"
    except OSError as error:  # a certificate file that cannot be read
        return 2, f"{args.address}: {error}"
    name = status_name(reply.status)
    is_ok = reply.status == health_pb2.HealthCheckResponse.SERVING or (
        args.alive and reply.status == health_pb2.HealthCheckResponse.NOT_SERVING)
    return (0 if is_ok else 1), f"{args.address} service {args.service!r}: {name}"


def main(argv: list[str] | None = None) -> int:
    code, line = check(parse_args(sys.argv[1:] if argv is None else argv))
    print(line, file=sys.stdout if code == 0 else sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
