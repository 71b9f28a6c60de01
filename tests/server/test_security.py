"""TLS, mutual TLS, bearer tokens, Triton's restricted protocol groups and the Unix socket's mode, end to end.

Every server here is a real `infergate serve`; .ci/run runs this module over the native transport,
`--transport grpcio` and `--workers 2` (tests/harness.py adds INFERGATE_TEST_SERVE_ARGS)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from infergate.bench.certs import Pki, make_pki

from harness import EXTRA_SERVE_ARGS, ServerProcess, start_server

TOKEN = "tok-3f9a1c77e2b54d0c9e51"
OTHER_TOKEN = "tok-second-8b1d6e0f4a"
ADMIN_VALUE = "admin-s3cret-value"
RESTRICTED_HEADER = "triton-grpc-protocol-admin-key"
RELOAD_TIMEOUT_S = 20.0


def _input(rows: int = 2) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput("INPUT0", [rows, 16], "FP32")
    tensor.set_data_from_numpy(np.ones((rows, 16), np.float32))
    return tensor


def _error(call: object, *args: object, **kwargs: object) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    return info.value


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_client(server: ServerProcess, pki: Pki, *, with_cert: Pki | None = None,
                rogue: bool = False) -> grpcclient.InferenceServerClient:
    client_pem = pki.rogue_client if rogue else pki.client
    return grpcclient.InferenceServerClient(
        server.address, ssl=True, root_certificates=str(pki.ca.cert),
        private_key=str(client_pem.key) if with_cert or rogue else None,
        certificate_chain=str(client_pem.cert) if with_cert or rogue else None)


# -- TLS ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(test_repository: Path, pki: Pki) -> Iterator[ServerProcess]:
    server = start_server("--model-repository", str(test_repository), "--grpc-use-ssl",
                          "--grpc-server-cert", str(pki.server.cert), "--grpc-server-key", str(pki.server.key))
    yield server
    server.stop()


def test_tls_tritonclient_infers(tls_server: ServerProcess, pki: Pki) -> None:
    with _tls_client(tls_server, pki) as client:
        assert client.is_server_ready()
        result = client.infer("classifier", [_input()])
        assert result.as_numpy("PROBS").shape == (2, 4)


def test_tls_grpcio_channel_and_health(tls_server: ServerProcess, pki: Pki) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.ca.cert_bytes)
    with grpc.secure_channel(tls_server.address, credentials) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_tls_refuses_plaintext_client(tls_server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(tls_server.address) as client:
        error = _error(client.is_server_live, client_timeout=10)
    assert error.status() == "StatusCode.UNAVAILABLE"


def test_tls_client_that_does_not_trust_the_server_is_refused(tls_server: ServerProcess, pki: Pki) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=pki.rogue_client.cert_bytes)
    with grpc.secure_channel(tls_server.address, credentials) as channel, pytest.raises(grpc.RpcError) as info:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


# -- mutual TLS --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mtls_server(test_repository: Path, pki: Pki) -> Iterator[ServerProcess]:
    server = start_server("--model-repository", str(test_repository), "--grpc-use-ssl-mutual",
                          "--grpc-server-cert", str(pki.server.cert), "--grpc-server-key", str(pki.server.key),
                          "--grpc-root-cert", str(pki.ca.cert))
    yield server
    server.stop()


def test_mtls_client_with_certificate_infers(mtls_server: ServerProcess, pki: Pki) -> None:
    with _tls_client(mtls_server, pki, with_cert=pki) as client:
        assert client.infer("classifier", [_input()]).as_numpy("PROBS").shape == (2, 4)


@pytest.mark.parametrize("case", ["no client certificate", "certificate of an untrusted CA", "plaintext"])
def test_mtls_refuses(mtls_server: ServerProcess, pki: Pki, case: str) -> None:
    if case == "plaintext":
        client = grpcclient.InferenceServerClient(mtls_server.address)
    else:
        client = _tls_client(mtls_server, pki, rogue=case == "certificate of an untrusted CA")
    with client:
        error = _error(client.is_server_live, client_timeout=10)
    assert error.status() == "StatusCode.UNAVAILABLE"
    with _tls_client(mtls_server, pki, with_cert=pki) as good:  # and the server is unharmed
        assert good.is_server_live()


# -- bearer tokens -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    path.write_text(f"# infergate test tokens\n{TOKEN}\n\n")
    return path


@pytest.fixture(scope="module")
def token_server(test_repository: Path, token_file: Path) -> Iterator[ServerProcess]:
    server = start_server("--model-repository", str(test_repository), "--grpc-auth-token-file", str(token_file))
    yield server
    server.stop()


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_token_required_and_accepted(token_server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(token_server.address) as client:
        missing = _error(client.infer, "classifier", [_input()])
        assert missing.status() == "StatusCode.UNAUTHENTICATED"
        assert missing.message() == ("missing credentials: this server requires 'authorization: Bearer <token>' "
                                     "metadata")
        wrong = _error(client.infer, "classifier", [_input()], headers=_bearer("not-the-token"))
        assert wrong.status() == "StatusCode.UNAUTHENTICATED" and wrong.message() == "invalid bearer token"
        malformed = _error(client.get_model_metadata, "classifier", headers={"authorization": f"Basic {TOKEN}"})
        assert malformed.message() == "malformed credentials: expected 'authorization: Bearer <token>' metadata"
        result = client.infer("classifier", [_input()], headers=_bearer(TOKEN))
        assert result.as_numpy("PROBS").shape == (2, 4)
        stats = _error(client.get_inference_statistics, "classifier")
        assert stats.status() == "StatusCode.UNAUTHENTICATED"
        assert client.get_inference_statistics("classifier", headers=_bearer(TOKEN)).model_stats


def test_health_needs_no_token(token_server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(token_server.address) as client:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("classifier")
    with grpc.insecure_channel(token_server.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_token_stream_infer(token_server: ServerProcess) -> None:
    """ModelStreamInfer is refused as a whole without a token, and streams with one."""
    results: list[object] = []
    with grpcclient.InferenceServerClient(token_server.address) as client:
        client.start_stream(callback=lambda result, error: results.append(error or result),
                            headers=_bearer(TOKEN))
        client.async_stream_infer("classifier", [_input()])
        client.stop_stream()
        assert len(results) == 1 and not isinstance(results[0], InferenceServerException)
        refused: list[object] = []
        client.start_stream(callback=lambda result, error: refused.append(error or result))
        try:
            client.async_stream_infer("classifier", [_input()])
        except InferenceServerException:
            pass  # the refusal can end the stream before the request is queued; the callback has the status
        client.stop_stream()
    assert refused and isinstance(refused[0], InferenceServerException)
    assert refused[0].status() == "StatusCode.UNAUTHENTICATED"


def test_tokens_never_logged(token_server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(token_server.address) as client:
        _error(client.infer, "classifier", [_input()], headers=_bearer("leaked-guess-123"))
        client.infer("classifier", [_input()], headers=_bearer(TOKEN))
    log = "".join(token_server.log)
    assert TOKEN not in log and "leaked-guess-123" not in log


def test_sighup_rereads_the_token_file(test_repository: Path, tmp_path: Path) -> None:
    path = tmp_path / "tokens.txt"
    path.write_text(TOKEN + "\n")
    server = start_server("--model-repository", str(test_repository), "--grpc-auth-token-file", str(path))
    try:
        with grpcclient.InferenceServerClient(server.address) as client:
            assert client.get_server_metadata(headers=_bearer(TOKEN)).name == "infergate"
            path.write_text(OTHER_TOKEN + "\n")
            server.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + RELOAD_TIMEOUT_S
            while True:  # every worker process re-reads on its own: wait until all have
                try:
                    for _ in range(8):  # several calls, so every --workers process answers one
                        client.get_server_metadata(headers=_bearer(OTHER_TOKEN))
                    break
                except InferenceServerException:
                    assert time.monotonic() < deadline, "the new token was not accepted after SIGHUP"
                    time.sleep(0.1)
            old = _error(client.get_server_metadata, headers=_bearer(TOKEN))
            assert old.status() == "StatusCode.UNAUTHENTICATED"
            path.write_text("")  # an empty file is a mistake: the server keeps the tokens it has
            server.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + RELOAD_TIMEOUT_S
            while "holds no tokens" not in "".join(server.log):
                assert time.monotonic() < deadline, "the empty token file was not reported"
                time.sleep(0.05)
            assert client.get_server_metadata(headers=_bearer(OTHER_TOKEN)).name == "infergate"
    finally:
        assert server.stop() == 0


# -- Triton's restricted protocol groups -------------------------------------------------


@pytest.fixture(scope="module")
def restricted_server(test_repository: Path) -> Iterator[ServerProcess]:
    server = start_server("--model-repository", str(test_repository),
                          f"--grpc-restricted-protocol=model-repository,shared-memory,statistics:admin-key={ADMIN_VALUE}")
    yield server
    server.stop()


def test_restricted_group_refused_with_tritons_status_and_message(restricted_server: ServerProcess) -> None:
    with grpcclient.InferenceServerClient(restricted_server.address) as client:
        for call, args in ((client.unload_model, ("classifier",)), (client.get_model_repository_index, ()),
                           (client.get_system_shared_memory_status, ()),
                           (client.get_inference_statistics, ("classifier",))):
            error = _error(call, *args)
            assert error.status() == "StatusCode.UNAVAILABLE"
            assert error.message() == f"This protocol is restricted, expecting header '{RESTRICTED_HEADER}'"
            wrong = _error(call, *args, headers={RESTRICTED_HEADER: "guess"})
            assert wrong.status() == "StatusCode.UNAVAILABLE"


def test_restricted_group_passes_with_the_header(restricted_server: ServerProcess) -> None:
    header = {RESTRICTED_HEADER: ADMIN_VALUE}
    with grpcclient.InferenceServerClient(restricted_server.address) as client:
        assert client.get_model_repository_index(headers=header).models
        error = _error(client.unload_model, "classifier", headers=header)  # through the gate, to the handler
        assert "explicit" in error.message()
        assert client.get_inference_statistics("classifier", headers=header).model_stats
        # Groups that are not restricted need nothing.
        assert client.infer("classifier", [_input()]).as_numpy("PROBS").shape == (2, 4)
        assert client.get_model_metadata("classifier").name == "classifier"
    assert ADMIN_VALUE not in "".join(restricted_server.log)


# -- start-up refusals and the Unix socket -----------------------------------------------


def _serve_exit(*args: str) -> tuple[int, str]:
    process = subprocess.run([sys.executable, "-m", "infergate.server", "serve", "--grpc-address", "127.0.0.1:0",
                              "--metrics-address", "none", *args], capture_output=True, text=True, timeout=60)
    return process.returncode, process.stderr


@pytest.mark.parametrize(("args", "message"), [
    (["--grpc-use-ssl"], "--grpc-use-ssl needs --grpc-server-cert FILE and --grpc-server-key FILE"),
    (["--grpc-use-ssl-mutual", "--grpc-server-cert", "{cert}", "--grpc-server-key", "{key}"],
     "--grpc-use-ssl-mutual needs --grpc-root-cert FILE"),
    (["--grpc-server-cert", "{cert}"], "need --grpc-use-ssl"),
    (["--grpc-use-ssl", "--grpc-server-cert", "{cert}", "--grpc-server-key", "{cert}"], "cannot be loaded"),
    (["--grpc-restricted-protocol", "inference:key"], "expects <group>[,<group>...]:<key>=<value>"),
    (["--grpc-restricted-protocol", "inferences:key=v"], "unknown protocol group 'inferences'"),
    (["--grpc-restricted-protocol", "inference:a=1", "--grpc-restricted-protocol", "inference:b=2"],
     "protocol group 'inference' is named more than once"),
    (["--grpc-auth-token-file", "{empty}"], "holds no tokens"),
    (["--grpc-auth-token-file", "/nonexistent/tokens"], "cannot be read: No such file or directory"),
    (["--grpc-socket-mode", "999"], "expected permission bits in octal"),
])
def test_bad_security_flags_stop_the_server(test_repository: Path, pki: Pki, tmp_path: Path, args: list[str],
                                             message: str) -> None:
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    filled = [a.format(cert=pki.server.cert, key=pki.server.key, empty=empty) for a in args]
    code, stderr = _serve_exit("--model-repository", str(test_repository), *filled)
    assert code == 2, stderr
    assert message in stderr
    assert "restricted-protocol" not in args or "=v" not in stderr.replace("<redacted>", "")


@pytest.mark.skipif("--workers" in " ".join(EXTRA_SERVE_ARGS), reason="--workers needs a TCP address")
@pytest.mark.parametrize(("flag", "mode"), [((), 0o600), (("--grpc-socket-mode", "660"), 0o660)])
def test_unix_socket_mode(test_repository: Path, tmp_path: Path, flag: tuple[str, ...], mode: int) -> None:
    path = tmp_path / "infergate.sock"
    server = start_server("--model-repository", str(test_repository), "--grpc-address", f"unix:{path}", *flag)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == mode
        with grpcclient.InferenceServerClient(f"unix:{path}") as client:
            assert client.is_server_ready()
    finally:
        server.stop()
