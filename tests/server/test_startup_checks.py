"""`infergate serve` refuses bad flags and busy addresses before any model loads: message, exit status 2."""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from infergate.server.addresses import AddressError, TcpAddress, UnixAddress, parse_address
from infergate.server.checks import serve_flag_errors
from infergate.server.cli import build_parser, main

from harness import start_server

LOADED = "loaded model"  # models/repository.py logs this as each model version loads


@pytest.mark.parametrize(("text", "parsed"), [
    ("127.0.0.1:8001", TcpAddress("127.0.0.1", 8001)),
    ("18401", TcpAddress("127.0.0.1", 18401)),  # a bare port is the loopback, like the default
    ("0", TcpAddress("127.0.0.1", 0)),
    ("0.0.0.0:8001", TcpAddress("0.0.0.0", 8001)),
    ("[::1]:8001", TcpAddress("::1", 8001)),
    ("localhost:65535", TcpAddress("localhost", 65535)),
    ("unix:/run/infergate.sock", UnixAddress("/run/infergate.sock")),
    ("unix:///run/infergate.sock", UnixAddress("/run/infergate.sock")),
])
def test_addresses_parse(text: str, parsed: object) -> None:
    assert parse_address(text, allow_unix=True) == parsed


@pytest.mark.parametrize(("text", "message"), [
    ("127.0.0.1:notaport", "expected HOST:PORT with PORT in 0..65535"),
    ("127.0.0.1:65536", "expected HOST:PORT with PORT in 0..65535"),
    ("127.0.0.1:-1", "expected HOST:PORT with PORT in 0..65535"),
    ("", "expected HOST:PORT with PORT in 0..65535"),
    (":8001", "expected HOST:PORT with PORT in 0..65535 and a HOST (127.0.0.1: this machine only, "
              "0.0.0.0: every interface)"),
    ("::1:8001", "expected HOST:PORT with PORT in 0..65535; an IPv6 HOST goes in brackets, as [::1]:8001"),
    ("[nope]:8001", "expected HOST:PORT with PORT in 0..65535: [nope] is not an IPv6 address"),
    ("unix:", "expected unix:PATH with a PATH"),
    ("unix:/" + "x" * 120, "the socket path is 121 bytes; a Unix socket path holds at most 107"),
])
def test_bad_addresses_say_what_was_expected(text: str, message: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_address(text, allow_unix=True)
    assert str(info.value) == message


def _errors(*flags: str) -> list[str]:
    return serve_flag_errors(build_parser().parse_args(["serve", *flags]))


def test_good_flags_have_no_errors() -> None:
    assert _errors() == []
    assert _errors("--grpc-address", "18401", "--metrics-address", "none", "--exit-timeout-s", "0") == []


@pytest.mark.parametrize(("flags", "error"), [
    (["--grpc-address", "127.0.0.1:notaport"],
     "--grpc-address '127.0.0.1:notaport': expected HOST:PORT with PORT in 0..65535"),
    (["--metrics-address", "unix:/tmp/m.sock"],
     "--metrics-address 'unix:/tmp/m.sock': expected HOST:PORT with PORT in 0..65535, not a Unix socket "
     "(this endpoint is HTTP over TCP); or 'none' for no metrics endpoint"),
    (["--metrics-address", "[::1]:8002"],
     "--metrics-address '[::1]:8002': expected an IPv4 HOST (the metrics endpoint listens on IPv4 only)"),
    (["--grpc-address", "127.0.0.1:9000", "--metrics-address", "9000"],
     "--metrics-address '9000': the same address as --grpc-address; expected another port"),
    (["--grpc-address", "unix:/tmp/x.sock", "--workers", "2"],
     "--workers 2: needs a TCP --grpc-address, not unix:/tmp/x.sock: processes cannot share a Unix socket "
     "path; use --workers 1 (the native transport) for a sidecar socket"),
    (["--load-model", "classifier"],
     "--load-model 'classifier': needs --model-control-mode explicit (mode none loads every model in the "
     "repository)"),
    (["--max-message-bytes", "0"],
     "--max-message-bytes 0: expected 1..2147483642 bytes (an HTTP/2 window holds one whole message and its "
     "5-byte prefix)"),
    (["--exit-timeout-s", "-1"], "--exit-timeout-s -1.0: expected a number of seconds >= 0"),
    (["--exit-timeout-s", "nan"], "--exit-timeout-s 'nan': expected a finite number"),
    (["--grpc-http2-idle-timeout-s", "inf"], "--grpc-http2-idle-timeout-s 'inf': expected a finite number"),
    (["--grpc-http2-max-frame-bytes", "100"],
     "--grpc-http2-max-frame-bytes 100: expected 16384..16777215 bytes (HTTP/2 SETTINGS_MAX_FRAME_SIZE)"),
    (["--grpc-http2-stream-window-bytes", str(2**31)],
     "--grpc-http2-stream-window-bytes 2147483648: expected 0..2147483647 bytes (the largest HTTP/2 window)"),
    (["--grpc-keepalive-time", str(2**31)],
     "--grpc-keepalive-time 2147483648: expected 0..2147483647 ms (grpc-core's channel argument)"),
    (["--grpc-http2-reserved-fds", "-1"], "--grpc-http2-reserved-fds -1: expected 0 (off) or a positive number"),
    (["--trace-sampling-ratio", "1.5"], "--trace-sampling-ratio 1.5: expected 0..1"),
    (["--drift-every-batches", "-2"], "--drift-every-batches -2: expected 0..2147483647 batches (0 turns drift off)"),
    (["--drift-psi-threshold", "-0.1"], "--drift-psi-threshold -0.1: expected a number >= 0"),
    (["--cpu-core-price-usd-per-hour", "lots"],
     "--cpu-core-price-usd-per-hour is 'lots', expected a number of USD per hour such as 0.05"),
    (["--grpc-use-ssl"], "--grpc-use-ssl needs --grpc-server-cert FILE and --grpc-server-key FILE"),
])
def test_each_bad_flag_is_named_with_its_value(flags: list[str], error: str) -> None:
    assert _errors(*flags) == [error]


def test_every_error_is_reported_at_once() -> None:
    assert len(_errors("--grpc-address", "x:y", "--exit-timeout-s", "-1", "--trace-sampling-ratio", "2")) == 3


# -- the command: exit status 2, before any model loads ----------------------------------


def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "infergate.server", "serve", *args], capture_output=True,
                          text=True, timeout=60)


@pytest.fixture()
def busy_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


@pytest.mark.parametrize("case", ["notaport", "grpc busy", "metrics busy"])
def test_refused_before_any_model_loads(test_repository: Path, busy_port: int, case: str) -> None:
    flags, error = {
        "notaport": (["--grpc-address", "127.0.0.1:notaport"],
                     "--grpc-address '127.0.0.1:notaport': expected HOST:PORT with PORT in 0..65535"),
        "grpc busy": (["--grpc-address", f"127.0.0.1:{busy_port}"],
                      f"--grpc-address 127.0.0.1:{busy_port}: address already in use"),
        "metrics busy": (["--grpc-address", "127.0.0.1:0", "--metrics-address", str(busy_port)],
                         f"--metrics-address {busy_port} (127.0.0.1:{busy_port}): address already in use"),
    }[case]
    # The repository's models log as they load (its 'slow' one takes a while): none may have started.
    done = _serve("--model-repository", str(test_repository), *flags)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"infergate serve: error: {error}"]
    assert LOADED not in done.stderr


def test_a_live_unix_socket_is_not_taken_over(test_repository: Path, tmp_path: Path) -> None:
    path = tmp_path / "live.sock"
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(str(path))
        live.listen()
        done = _serve("--model-repository", str(test_repository), "--grpc-address", f"unix:{path}",
                      "--metrics-address", "none")
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [f"infergate serve: error: --grpc-address unix:{path}: address already in "
                                        f"use (a server answers on {path})"]


@pytest.mark.parametrize(("flags", "error"), [
    (["--grpc-address", "unix:{tmp}/no/such/folder.sock"],
     "--grpc-address unix:{tmp}/no/such/folder.sock: the folder {tmp}/no/such does not exist"),
    (["--grpc-address", "unix:{tmp}/plain-file"], "--grpc-address unix:{tmp}/plain-file: {tmp}/plain-file exists "
                                                  "and is not a socket"),
    (["--model-repository", "{tmp}/missing"],
     "--model-repository '{tmp}/missing': does not exist; expected a Triton-layout model repository folder"),
    (["--model-control-mode", "explicit", "--load-model", "clasifier"],
     "--load-model 'clasifier': no such model in {repo} (it has: {models})"),
])
def test_paths_are_checked_before_loading(test_repository: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                          capsys: pytest.CaptureFixture[str], flags: list[str], error: str) -> None:
    caplog.set_level(logging.INFO)
    models = ", ".join(sorted(p.name for p in test_repository.iterdir() if p.is_dir()))
    (tmp_path / "plain-file").write_text("")
    filled = [f.format(tmp=tmp_path) for f in flags]
    code = main(["serve", "--model-repository", str(test_repository), "--metrics-address", "none", *filled])
    assert code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"infergate serve: error: {error.format(tmp=tmp_path, repo=test_repository, models=models)}"]
    assert not [r for r in caplog.records if LOADED in r.getMessage()]


def test_a_bare_port_listens_on_the_loopback_only(test_repository: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = start_server("--model-repository", str(test_repository), "--model-control-mode", "explicit",
                          "--grpc-address", str(port))
    try:
        assert server.address == f"127.0.0.1:{port}"  # the ready line says where it listens
        socket.create_connection(("127.0.0.1", port), timeout=10).close()
        # 127.0.0.2 is this machine too: a server on every interface would answer there.
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.2", port), timeout=10)
    finally:
        assert server.stop() == 0


# -- the parser itself --------------------------------------------------------------------


def test_an_unknown_serve_flag_shows_serves_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["serve", "--grpc-adress", "127.0.0.1:1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: infergate serve [-h]")
    assert err.splitlines()[-1] == "infergate serve: error: unrecognized arguments: --grpc-adress 127.0.0.1:1"


def test_help_says_each_default_once(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    blocks = re.split(r"\n  (?=-)", text.split("\noptions:\n", 1)[1])
    by_flag = {block.split()[0].rstrip(","): " ".join(block.split()) for block in blocks}
    assert len(by_flag) > 50
    for block in by_flag.values():
        assert block.count("default") <= 1, block
        assert "(default: None)" not in block and "(default: [])" not in block, block
    assert "least severe log messages" in by_flag["--log-level"]
    assert by_flag["--grpc-address"].endswith("(default: 127.0.0.1:8001)")
    assert "default 600" in by_flag["--grpc-socket-mode"]
    assert "default true" in by_flag["--strict-readiness"]
