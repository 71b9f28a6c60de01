"""Side-by-side perf_analyzer runs of infergate, Triton and MLServer, one server at a time, into one results table."""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import importlib.metadata
import json
import logging
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from infergate.bench import peer_kit
from infergate.bench.reference_models import REFERENCE_MODELS, write_reference_models

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
SERVER_NAMES = ("infergate", "triton", "mlserver")
PEER_MODELS = tuple(REFERENCE_MODELS)  # served by every server (bench/reference_models.py)
INFERGATE_ONLY_MODELS = ("identity",)  # ONNX Identity INPUT0 [64] -> OUTPUT0 [64]; only infergate serves it
# The infergate command line; {repo} is the model repository this script builds. perf_analyzer targets the
# port named in its --grpc-address. `infergate` is looked up in <repo root>/.venv/bin first, then on PATH.
INFERGATE_CMD = ("infergate serve --model-repository {repo} --grpc-address 127.0.0.1:8001 "
                 "--metrics-address 127.0.0.1:8002")
TRITON_PORTS = (8001, 8000, 8003)  # gRPC, HTTP, metrics (bench/peers/triton/run.sh)
MLSERVER_PORTS = (8081, 8090, 8092)  # gRPC, HTTP, metrics (bench/peers/mlserver/run.sh)
FULL_MEASUREMENT_MS = 4000  # perf_analyzer -p: one measurement window, ms
FULL_MAX_TRIALS = 6  # perf_analyzer --max-trials: windows before it gives up on stability
QUICK_MEASUREMENT_MS = 1000  # --quick: smoke-test settings, not for results
QUICK_MAX_TRIALS = 3
FULL_RETRY_STABILITY_PCT = 25  # -s of the one retry when perf_analyzer cannot stabilise at its default 10 %
QUICK_RETRY_STABILITY_PCT = 50  # --quick: three 1 s windows on a shared host rarely agree within 25 %
PA_DEFAULT_STABILITY_PCT = 10  # perf_analyzer's own -s default: last 3 windows within 10 % (infer/s and avg latency)
PA_SLACK_S = 60  # perf_analyzer timeout beyond its longest possible measurement, s
START_TIMEOUT_S = 1200  # an anchor's run.sh (first run installs its venv), s
READY_TIMEOUT_S = 180  # server start to every model ready, s
STOP_GRACE_S = 30  # SIGINT/SIGTERM to SIGKILL, s
MAX_RESTARTS = 2  # per server run: restarts after the server died mid-run (a crash, or someone else's pkill)
BUSY_LOADAVG = 0.5  # 1-minute load average, at start or end, above which results.md warns that others were running
CLK_TCK = os.sysconf("SC_CLK_TCK")  # /proc/<pid>/stat ticks per second
DEFAULT_PERCENTILES = ("p50", "p90", "p95", "p99")

# Run by the helper Python (it has infergate, whose stubs it uses: tritonclient is not one of infergate's
# requirements): waits for the server and every model, prints server metadata.
_READY_SNIPPET = r"""
import json, sys, time
import grpc
from infergate.proto import grpc_service_pb2 as pb
url, models, deadline = sys.argv[1], sys.argv[2].split(","), time.monotonic() + float(sys.argv[3])
def call(channel, method, request, response_type):
    stub = channel.unary_unary("/inference.GRPCInferenceService/" + method,
                               request_serializer=type(request).SerializeToString,
                               response_deserializer=response_type.FromString)
    return stub(request, timeout=5)
# Short reconnect backoff: the server is expected any moment, and grpc's default backoff grows to 120 s.
options = [("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
           ("grpc.max_reconnect_backoff_ms", 1000)]
err = "not tried"
with grpc.insecure_channel(url, options=options) as channel:
    while time.monotonic() < deadline:
        try:
            missing = [m for m in models
                       if not call(channel, "ModelReady", pb.ModelReadyRequest(name=m), pb.ModelReadyResponse).ready]
            if not missing:
                md = call(channel, "ServerMetadata", pb.ServerMetadataRequest(), pb.ServerMetadataResponse)
                print(json.dumps({"name": md.name, "version": md.version}))
                sys.exit(0)
            err = f"models not ready: {missing}"
        except grpc.RpcError as exc:
            err = f"{exc.code().name}: {exc.details()}"
        time.sleep(0.5)
print(json.dumps({"error": err}))
sys.exit(1)
"""

# Run by the helper Python (it has onnx): the identity model, opset and IR version as bench/reference_models.py uses.
_IDENTITY_SNIPPET = r"""
import sys
import onnx
from onnx import TensorProto, helper
graph = helper.make_graph(
    [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])], "identity",
    [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 64])],
    [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 64])])
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
model.ir_version = 8
onnx.checker.check_model(model)
onnx.save(model, sys.argv[1])
"""

_CONFIG_PBTXT = """name: "{name}"
platform: "onnxruntime_onnx"
backend: "onnxruntime"
max_batch_size: 64
input [ {{ name: "INPUT0", data_type: TYPE_FP32, dims: [ 64 ] }} ]
output [ {{ name: "OUTPUT0", data_type: TYPE_FP32, dims: [ {out_dim} ] }} ]
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
dynamic_batching {{ max_queue_delay_microseconds: 500 }}
"""


@dataclass
class Measurement:
    """One perf_analyzer run (the last attempt) against one server, model and concurrency."""

    server: str
    model: str
    concurrency: int
    round: int
    is_stable: bool = False  # perf_analyzer reported a stable measurement (else: medians of its last 3 windows)
    stability_pct: int = PA_DEFAULT_STABILITY_PCT  # -s of the attempt that produced the figures
    attempts: int = 0
    infer_per_s: float | None = None
    avg_us: float | None = None
    p50_us: float | None = None
    p90_us: float | None = None
    p95_us: float | None = None
    p99_us: float | None = None
    client_cpu_pct: float | None = None  # perf_analyzer user+sys CPU over its wall time; 100 = one core
    server_cpu_pct: float | None = None  # the server's process tree, same window and scale
    wall_s: float | None = None
    implied_concurrency: float | None = None  # infer/s x avg latency (Little's law); should be near `concurrency`
    loadavg_before: float | None = None  # 1-minute load average when the run started: others' noise on the host
    after_restart: bool = False  # the server died during the first try; this is the try after restarting it
    csv_row: dict[str, str] = field(default_factory=dict)  # perf_analyzer's CSV row as written
    commands: list[str] = field(default_factory=list)  # every attempt; the last one gave the figures
    stdout_file: str = ""
    csv_file: str = ""
    error: str | None = None


@dataclass
class ServerRun:
    """One start of one server."""

    server: str
    round: int
    start_command: str = ""
    start_s: float | None = None  # from launching to every model ready
    metadata: dict[str, str] = field(default_factory=dict)  # ServerMetadata RPC: name, version
    restarts: int = 0  # times it died mid-run and was started again
    error: str | None = None


# ---------------------------------------------------------------- processes


def _proc_stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, utime+stime ticks, start time ticks) of a live process; None if it is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[11]) + int(fields[12]), int(fields[19])


def _process_tree(root_pid: int) -> dict[int, tuple[int, int]]:
    """pid -> (cpu ticks, start time) for root_pid and all its descendants."""
    stats: dict[int, tuple[int, int, int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _proc_stat(int(entry))) is not None:
            stats[int(entry)] = st
    tree, frontier = {}, [root_pid]
    while frontier:
        pid = frontier.pop()
        if pid in stats and pid not in tree:
            tree[pid] = (stats[pid][1], stats[pid][2])
            frontier.extend(child for child, st in stats.items() if st[0] == pid)
    return tree


def _kill_tree(tree: dict[int, tuple[int, int]], sig: int) -> None:
    """Signals each process of a tree snapshot that is still the same process (pid not reused)."""
    for pid, (_, started) in tree.items():
        st = _proc_stat(pid)
        if st is not None and st[2] == started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def _alive(tree: dict[int, tuple[int, int]]) -> bool:
    return any((st := _proc_stat(pid)) is not None and st[2] == started for pid, (_, started) in tree.items())


def _port_is_busy(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait_ports_free(ports: tuple[int, ...], timeout_s: float) -> list[int]:
    deadline = time.monotonic() + timeout_s
    while (busy := [p for p in ports if _port_is_busy(p)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    return busy


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ---------------------------------------------------------------- servers


class ServerExitedError(RuntimeError):
    """The server process went away while starting (a crash, or a signal from outside)."""


class Server:
    """A server under test: start (blocking until its models are ready), its process tree, stop."""

    name = ""
    stop_signal = signal.SIGTERM

    def __init__(self, cfg: Config, models: list[str], raw_dir: Path) -> None:
        self.cfg, self.models, self.raw_dir = cfg, models, raw_dir
        self.pid: int | None = None  # root of the server's process tree
        self._proc: subprocess.Popen[bytes] | None = None  # set when the root is our own child, reaped in stop()
        self._tree: dict[int, tuple[int, int]] = {}

    @property
    def grpc_port(self) -> int:
        raise NotImplementedError

    @property
    def ports(self) -> tuple[int, ...]:
        raise NotImplementedError

    def start_command(self) -> list[str]:
        raise NotImplementedError

    def launch(self, serve_s: int) -> None:
        """Starts the server process(es) and sets self.pid; raises RuntimeError on failure."""
        raise NotImplementedError

    def start(self, run: ServerRun, serve_s: int) -> None:
        busy = [p for p in self.ports if _port_is_busy(p)]
        if busy:
            raise RuntimeError(f"port(s) {busy} already in use on 127.0.0.1: another server is running")
        run.start_command = shlex.join(self.start_command())
        t0 = time.monotonic()
        self.launch(serve_s)
        run.metadata = self._wait_ready()
        run.start_s = round(time.monotonic() - t0, 2)

    def _wait_ready(self) -> dict[str, str]:
        """Polls the server over gRPC until every model is ready; fails early if the server exits."""
        cmd = [str(self.cfg.python), "-c", _READY_SNIPPET, f"127.0.0.1:{self.grpc_port}", ",".join(self.models),
               str(self.cfg.ready_timeout_s)]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            while proc.poll() is None:
                if self.pid is not None and _proc_stat(self.pid) is None:
                    raise ServerExitedError(f"{self.name} exited during start-up:\n{self.log_tail()}")
                time.sleep(0.2)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        out = proc.communicate()[0]
        lines = out.strip().splitlines() or ["{}"]
        try:
            result = json.loads(lines[-1])
        except json.JSONDecodeError:
            result = {"error": out.strip()[-2000:]}
        if proc.returncode != 0 or "error" in result:
            raise RuntimeError(f"{self.name} not ready in {self.cfg.ready_timeout_s} s: {result.get('error')}\n"
                               f"{self.log_tail()}")
        return {k: str(v) for k, v in result.items()}

    def is_alive(self) -> bool:
        return self.pid is not None and _proc_stat(self.pid) is not None

    def cpu_ticks(self) -> int:
        """CPU ticks used so far by the server's current process tree."""
        if self.pid is None:
            return 0
        self._tree = _process_tree(self.pid) or self._tree
        return sum(ticks for ticks, _ in self._tree.values())

    def log_path(self) -> Path:
        raise NotImplementedError

    def log_tail(self) -> str:
        return _tail(self.log_path())

    def stop(self) -> None:
        """Graceful stop of the whole tree, then SIGKILL after STOP_GRACE_S; waits for the ports to free up."""
        if self.pid is None:
            return
        tree = _process_tree(self.pid) or self._tree
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, self.stop_signal)
        deadline = time.monotonic() + STOP_GRACE_S
        while _alive(tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(tree):
            logger.warning("%s did not stop in %d s: SIGKILL", self.name, STOP_GRACE_S)
            _kill_tree(tree, signal.SIGKILL)
        self.pid = None
        if self._proc is not None:
            self._proc.wait()
            self._proc = None
        if busy := _wait_ports_free(self.ports, STOP_GRACE_S):
            logger.warning("ports %s still busy after stopping %s", busy, self.name)


class AnchorServer(Server):
    """A peer started by its bench/peers/<name>/run.sh (which returns once the server is up)."""

    def script(self) -> Path:
        return peer_kit.launcher(self.name)

    def workdir(self) -> Path:
        return self.cfg.cache / self.name

    def start_command(self) -> list[str]:
        # bash, not the script itself: an installed copy may have lost its executable bit.
        return ["bash", str(self.script()), str(self.cfg.cache / "models"), str(self.workdir())]

    def log_path(self) -> Path:
        return self.workdir() / "server.log"

    def launch(self, serve_s: int) -> None:
        pid_file = self.workdir() / "server.pid"
        pid_file.unlink(missing_ok=True)
        env = {**os.environ, "SERVE_SECONDS": str(serve_s)}
        with open(self.raw_dir / "start.log", "a") as log:
            proc = subprocess.Popen(self.start_command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                rc = -1
            finally:
                if pid_file.exists():
                    self.pid = int(pid_file.read_text().strip())
        if rc != 0:
            raise RuntimeError(f"{self.script()} exited {rc}:\n{_tail(self.raw_dir / 'start.log')}")
        if self.pid is None:
            raise RuntimeError(f"{self.script()} wrote no {pid_file}")

    def stop(self) -> None:
        super().stop()
        if self.log_path().exists():  # appended: a restarted server's log follows the first one's
            with open(self.raw_dir / "server.log", "ab") as dst, open(self.log_path(), "rb") as src:
                shutil.copyfileobj(src, dst)


class TritonServer(AnchorServer):
    name = "triton"
    stop_signal = signal.SIGINT  # run.sh: stop with kill -INT

    @property
    def grpc_port(self) -> int:
        return TRITON_PORTS[0]

    @property
    def ports(self) -> tuple[int, ...]:
        return TRITON_PORTS


class MLServerServer(AnchorServer):
    name = "mlserver"
    stop_signal = signal.SIGTERM

    @property
    def grpc_port(self) -> int:
        return MLSERVER_PORTS[0]

    @property
    def ports(self) -> tuple[int, ...]:
        return MLSERVER_PORTS


class InfergateServer(Server):
    """infergate, from the command line INFERGATE_CMD (--infergate-cmd) over a repository built here."""

    name = "infergate"
    stop_signal = signal.SIGINT  # graceful shutdown (server/app.py HANDLED_SIGNALS); GNU timeout forwards it

    def repo(self) -> Path:
        return self.cfg.work / "infergate-repo"

    def _command(self) -> list[str]:
        return shlex.split(self.cfg.infergate_cmd.format(repo=shlex.quote(str(self.repo()))))

    def _address_port(self, flag: str, default: int) -> int:
        cmd = self._command()
        for arg, following in zip(cmd, [*cmd[1:], ""], strict=True):
            value = arg.partition("=")[2] if arg.startswith(flag + "=") else following if arg == flag else ""
            if value.rpartition(":")[2].isdigit():
                return int(value.rpartition(":")[2])
        return default

    @property
    def grpc_port(self) -> int:
        return self._address_port("--grpc-address", 8001)

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.grpc_port, self._address_port("--metrics-address", 8002))

    def start_command(self) -> list[str]:
        return self._command()

    def log_path(self) -> Path:
        return self.raw_dir / "server.log"

    def build_repo(self) -> None:
        """<work>/infergate-repo/<model>/{config.pbtxt,1/model.onnx}, fresh each start."""
        shutil.rmtree(self.repo(), ignore_errors=True)
        for model in self.models:
            version_dir = self.repo() / model / "1"
            version_dir.mkdir(parents=True)
            if model == "identity":
                subprocess.run([str(self.cfg.python), "-c", _IDENTITY_SNIPPET, str(version_dir / "model.onnx")],
                               check=True)
            else:
                shutil.copy(self.cfg.cache / "models" / f"{model}.onnx", version_dir / "model.onnx")
            out_dim = 64 if model == "identity" else 10
            (self.repo() / model / "config.pbtxt").write_text(_CONFIG_PBTXT.format(name=model, out_dim=out_dim))

    def launch(self, serve_s: int) -> None:
        self.build_repo()
        # A source checkout's .venv, then this interpreter's own bin (an installed `infergate` whose venv is
        # not activated), then PATH.
        bins = list(dict.fromkeys([str(REPO_ROOT / ".venv" / "bin"), str(Path(sys.executable).parent)]))
        env = {**os.environ, "PATH": os.pathsep.join([*bins, os.environ.get("PATH", "")])}
        cmd = self._command()
        if shutil.which(cmd[0], path=env["PATH"]) is None:
            raise RuntimeError(f"{cmd[0]!r} not found in {' or '.join(bins)} or on PATH")
        # timeout bounds the server like the anchors' SERVE_SECONDS; SIGKILL 15 s after its own SIGINT.
        bounded = ["timeout", "--signal=INT", "--kill-after=15", str(serve_s), *cmd]
        with open(self.log_path(), "a") as log:
            self._proc = subprocess.Popen(bounded, stdout=log, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True)
        self.pid = self._proc.pid


SERVER_CLASSES: dict[str, type[Server]] = {"infergate": InfergateServer, "triton": TritonServer,
                                           "mlserver": MLServerServer}


# ---------------------------------------------------------------- perf_analyzer


@dataclass
class Config:
    servers: list[str]
    models: list[str]
    concurrency: list[int]
    out: Path
    cache: Path  # perf_analyzer, reference models, peer venvs: peer_kit.default_bench_cache()
    work: Path  # scratch: infergate's model repository
    python: Path  # helper interpreter with infergate (readiness checks, identity model)
    infergate_cmd: str
    measurement_ms: int
    max_trials: int
    retry_stability_pct: int  # 0: no retry
    rounds: int
    ready_timeout_s: int
    pa_args: list[str]

    @property
    def perf_analyzer(self) -> Path:
        return self.cache / "perf_analyzer" / "perf_analyzer"

    @property
    def pa_timeout_s(self) -> int:
        return self.max_trials * self.measurement_ms // 1000 * 2 + PA_SLACK_S


def _run_timed(cmd: list[str], stdout_path: Path, timeout_s: float) -> tuple[int | None, float, float]:
    """Runs cmd to a file; returns (exit code or None on timeout, wall s, user+sys CPU s of the process)."""
    with open(stdout_path, "wb") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() - t0 > timeout_s:
                    os.killpg(proc.pid, signal.SIGKILL)
                    pid, status, usage = os.wait4(proc.pid, 0)
                    status = -1
                    break
                time.sleep(0.05)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    wall_s = time.monotonic() - t0
    proc.returncode = -9 if status == -1 else os.waitstatus_to_exitcode(status)  # reaped by wait4 above
    return (None if status == -1 else proc.returncode), wall_s, usage.ru_utime + usage.ru_stime


_PASS_RE = re.compile(r"Pass \[(\d+)\] throughput: ([\d.]+) infer/sec\. Avg latency: (\d+) usec")


def _parse_csv(path: Path) -> dict[str, str]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows[-1] if rows else {}


def _measure(cfg: Config, server: Server, model: str, concurrency: int, rnd: int) -> Measurement:
    m = Measurement(server=server.name, model=model, concurrency=concurrency, round=rnd)
    raw_dir = server.raw_dir
    stabilities = [PA_DEFAULT_STABILITY_PCT] + ([cfg.retry_stability_pct] if cfg.retry_stability_pct else [])
    stem = f"{model}-c{concurrency}" + (f"-r{rnd}" if cfg.rounds > 1 else "")
    for attempt, stability in enumerate(stabilities, start=1):
        suffix = "" if attempt == 1 else f"-s{stability}"
        csv_path, out_path = raw_dir / f"{stem}{suffix}.csv", raw_dir / f"{stem}{suffix}.txt"
        csv_path.unlink(missing_ok=True)
        # --verbose-csv adds the "Avg latency" column; -v prints every window (kept as the fallback figures).
        cmd = [str(cfg.perf_analyzer), "-i", "grpc", "-u", f"127.0.0.1:{server.grpc_port}", "-m", model,
               "--shape", "INPUT0:64", "--concurrency-range", str(concurrency), "-p", str(cfg.measurement_ms),
               "--max-trials", str(cfg.max_trials), "-f", str(csv_path), "--verbose-csv", "-v"]
        if stability != PA_DEFAULT_STABILITY_PCT:
            cmd += ["-s", str(stability)]
        cmd += cfg.pa_args
        m.attempts, m.stability_pct = attempt, stability
        m.commands.append(shlex.join(cmd))
        m.stdout_file, m.csv_file = str(out_path.relative_to(cfg.out)), str(csv_path.relative_to(cfg.out))
        m.loadavg_before = os.getloadavg()[0]
        ticks0 = server.cpu_ticks()
        rc, wall_s, cpu_s = _run_timed(cmd, out_path, cfg.pa_timeout_s)
        wall_s = max(wall_s, 1e-3)
        server_cpu_s = (server.cpu_ticks() - ticks0) / CLK_TCK
        m.wall_s, m.client_cpu_pct = round(wall_s, 2), round(100 * cpu_s / wall_s, 1)
        m.server_cpu_pct = round(100 * server_cpu_s / wall_s, 1)
        text = out_path.read_text(errors="replace")
        if rc == 0 and csv_path.exists() and (row := _parse_csv(csv_path)):
            m.csv_row, m.is_stable, m.error = row, True, None
            m.infer_per_s = float(row["Inferences/Second"])
            m.avg_us = float(row["Avg latency"]) if row.get("Avg latency") else None
            for p in DEFAULT_PERCENTILES:
                value = row.get(f"{p} latency")
                setattr(m, f"{p}_us", float(value) if value else None)
            break
        passes = _PASS_RE.findall(text)
        if rc is None:
            m.error = f"perf_analyzer timed out after {cfg.pa_timeout_s} s"
        elif "Failed to obtain stable measurement" in text:
            m.error = f"unstable at -s {stability} within {cfg.max_trials} windows"
            if passes:  # median of the last 3 windows (what stability compares): infer/s and mean latency only
                m.infer_per_s = statistics.median(float(p[1]) for p in passes[-3:])
                m.avg_us = statistics.median(float(p[2]) for p in passes[-3:])
                m.p50_us = m.p90_us = m.p95_us = m.p99_us = None
            continue
        else:
            m.error = f"perf_analyzer exited {rc}: " + " | ".join(text.strip().splitlines()[-3:])
        break
    if m.infer_per_s and m.avg_us:
        m.implied_concurrency = round(m.infer_per_s * m.avg_us / 1e6, 2)
    return m


# ---------------------------------------------------------------- setup and metadata


def ensure_models(cfg: Config) -> None:
    """Builds the reference models into <cache>/models unless they are there."""
    models_dir = cfg.cache / "models"
    if not all((models_dir / f"{m}.onnx").exists() for m in PEER_MODELS):
        logger.info("building the reference models into %s", models_dir)
        write_reference_models(models_dir)


def ensure_perf_analyzer(cfg: Config) -> None:
    """Installs perf_analyzer into <cache>/perf_analyzer unless it is there; RuntimeError if that fails."""
    if cfg.perf_analyzer.exists():
        return
    directory = cfg.perf_analyzer.parent
    logger.info("installing perf_analyzer into %s", directory)
    # PYTHON: the installer's pip is this interpreter's, which has pip even where `python3` is a bare system one.
    done = subprocess.run(["bash", str(peer_kit.PERF_ANALYZER_INSTALLER), str(directory)], check=False,
                          env={**os.environ, "PYTHON": sys.executable})
    if done.returncode != 0 or not cfg.perf_analyzer.exists():
        raise RuntimeError(f"perf_analyzer could not be installed into {directory} (exit {done.returncode}); "
                           f"see the output above, or run: {peer_kit.perf_analyzer_install_command(directory)}")


def _ensure_tools(cfg: Config) -> None:
    ensure_models(cfg)
    ensure_perf_analyzer(cfg)


def git_commit(repo: Path = REPO_ROOT) -> str:
    """The commit the results came from: the checkout's HEAD (a clone, a worktree, an editable install), else
    the current directory's when it is an infergate checkout (a `pip install .` runs from site-packages),
    else the installed version."""
    for where in (repo, Path.cwd()):
        if not (where / "setup.py").exists() or not (where / "bench").is_dir():
            continue  # not an infergate checkout: its HEAD would name some other project's commit
        try:
            done = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True,
                                  timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0 and done.stdout.strip():
            return done.stdout.strip()
    try:
        return "infergate " + importlib.metadata.version("infergate") + " (installed, not a checkout)"
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _output_of(cmd: list[str]) -> str:
    try:
        done = subprocess.run(cmd, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
        return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _package_version(python: Path, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    return _output_of([str(python), "-c", code]) or "unknown"


def _host_metadata(cfg: Config) -> dict[str, Any]:
    cpuinfo: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():  # the first processor's fields
        key, _, value = line.partition(":")
        cpuinfo.setdefault(key.strip(), value.strip())
    model = (f"{cpuinfo.get('model name', platform.processor() or 'unknown')} (family {cpuinfo.get('cpu family')} "
             f"model {cpuinfo.get('model')} stepping {cpuinfo.get('stepping')}, {cpuinfo.get('cpu MHz')} MHz)")
    pa_version = _output_of([str(cfg.perf_analyzer), "--version"]).splitlines()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu_model": model,
        "cpu_count": os.cpu_count(),
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
        "infergate_commit": git_commit(REPO_ROOT),
        "versions": {
            "perf_analyzer": pa_version[0] if pa_version else "unknown",
            "infergate": _package_version(cfg.python, "infergate"),
            "triton (nvidia-pytriton)": _package_version(cfg.cache / "triton" / "venv" / "bin" / "python",
                                                         "nvidia-pytriton"),
            "mlserver": _package_version(cfg.cache / "mlserver" / "venv" / "bin" / "python", "mlserver"),
        },
    }


# ---------------------------------------------------------------- results


@dataclass
class Cell:
    """One server x model x concurrency in the table: medians over rounds."""

    infer_per_s: float | None
    p50_us: float | None
    p99_us: float | None
    client_cpu_pct: float | None
    server_cpu_pct: float | None
    is_stable: bool
    error: str | None


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _cell(ms: list[Measurement], server: str, model: str, c: int) -> Cell | None:
    """None if the server was not measured there."""
    runs = [m for m in ms if (m.server, m.model, m.concurrency) == (server, model, c)]
    if not runs:
        return None
    return Cell(_median([m.infer_per_s for m in runs]), _median([m.p50_us for m in runs]),
                _median([m.p99_us for m in runs]), _median([m.client_cpu_pct for m in runs]),
                _median([m.server_cpu_pct for m in runs]), all(m.is_stable for m in runs),
                next((m.error for m in runs if m.error), None))


def _fmt(value: float | None, scale: float = 1.0, digits: int = 0) -> str:
    return "-" if value is None else f"{value / scale:,.{digits}f}"


def _throughput_text(cell: Cell | None) -> str:
    if cell is None:
        return "n/a"
    if cell.infer_per_s is None:
        return f"failed ({cell.error})" if cell.error else "failed"
    mark = "" if cell.is_stable else " †"
    return f"{_fmt(cell.infer_per_s)}{mark} ({_fmt(cell.p50_us, 1000, 2)} / {_fmt(cell.p99_us, 1000, 2)})"


def _ratio_text(ours: Cell | None, peer: Cell | None) -> str:
    if not ours or not peer or not ours.infer_per_s or not peer.infer_per_s:
        return "-"
    text = f"{ours.infer_per_s / peer.infer_per_s:.2f}x"
    if ours.p99_us and peer.p99_us:
        text += f" / {ours.p99_us / peer.p99_us:.2f}x"
    return text


def _cpu_text(cell: Cell | None) -> str:
    return "n/a" if cell is None else f"{_fmt(cell.client_cpu_pct)} % / {_fmt(cell.server_cpu_pct)} %"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def write_markdown(cfg: Config, meta: dict[str, Any], runs: list[ServerRun], ms: list[Measurement],
                   invocation: str) -> None:
    servers = cfg.servers
    peers = [p for p in ("triton", "mlserver") if "infergate" in servers and p in servers]
    label = {"infergate": "infergate", "triton": "Triton", "mlserver": "MLServer"}
    cells = {(s, m, c): _cell(ms, s, m, c) for s in servers for m in cfg.models for c in cfg.concurrency}
    reported = ", ".join(f"{r.server}: {r.metadata.get('name', '?')} {r.metadata.get('version', '?')}"
                         for r in runs if r.metadata) or "none"
    host = (f"{meta['date']} · {meta['cpu_model']} · {meta['cpu_count']} cores · {meta['kernel']} · "
            f"infergate commit `{meta['infergate_commit']}` · 1-min load average at start / end "
            f"{meta['loadavg_at_start'][0]:.2f} / {meta.get('loadavg_at_end', [float('nan')])[0]:.2f}")
    versions = ("Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
                + f". Servers' own metadata: {reported}.")
    setup = (f"Batch-1 requests over gRPC on 127.0.0.1, `-p {cfg.measurement_ms} --max-trials {cfg.max_trials}`, "
             f"one server at a time, {cfg.rounds} round(s) (cells are medians over rounds). Client and server share "
             "the cores: compare ratios rather than absolute figures.")
    legend = ("Cells: infer/s (P50 ms / P99 ms). Ratios: infergate's infer/s over the peer's, then infergate's P99 "
              "over the peer's (above 1, then below 1, favour infergate). † perf_analyzer never stabilised (not "
              f"even at -s {cfg.retry_stability_pct}): median infer/s of its last 3 windows, no percentiles.")
    lines = [f"# perf_analyzer: {', '.join(label[s] for s in servers)}", "", host, "", versions, "", setup, "",
             legend, ""]
    if max(meta["loadavg_at_start"][0], meta.get("loadavg_at_end", [0.0])[0]) > BUSY_LOADAVG:
        lines += ["**The host was busy (load average above): these figures are a smoke check, not results.**", ""]
    header = ["model", "concurrency", *(label[s] for s in servers), *(f"infergate/{label[p]}" for p in peers)]
    lines += _table(header, [
        [m, str(c), *(_throughput_text(cells[s, m, c]) for s in servers),
         *(_ratio_text(cells["infergate", m, c], cells[p, m, c]) for p in peers)]
        for m in cfg.models for c in cfg.concurrency])
    lines += ["", "CPU use over each perf_analyzer run (100 % = one core): client / server process tree.", ""]
    lines += _table(["model", "concurrency", *(label[s] for s in servers)],
                    [[m, str(c), *(_cpu_text(cells[s, m, c]) for s in servers)]
                     for m in cfg.models for c in cfg.concurrency])
    problems = [f"- {r.server} round {r.round}, start: {r.error}" for r in runs if r.error]
    problems += [f"- {m.server} round {m.round}, {m.model} c={m.concurrency}: {m.error}" for m in ms if m.error]
    if problems:
        lines += ["", "## Problems", "", *(p.splitlines()[0] for p in problems)]
    lines += ["", "## Commands", "", "```sh", invocation, ""]
    lines += [f"# {r.server} (round {r.round}) started with:\n{r.start_command}" for r in runs]
    lines += ["", "# perf_analyzer runs (stdout and CSV under raw/):", *(c for m in ms for c in m.commands), "```", ""]
    (cfg.out / "results.md").write_text("\n".join(lines))


def write_json(cfg: Config, meta: dict[str, Any], runs: list[ServerRun], ms: list[Measurement],
               invocation: str) -> None:
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()}
    doc = {"metadata": meta, "invocation": invocation, "settings": settings,
           "servers": [asdict(r) for r in runs], "results": [asdict(m) for m in ms]}
    (cfg.out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")


# ---------------------------------------------------------------- main


def _serve_budget_s(cfg: Config, runs: int) -> int:
    """How long a server may live: start-up plus every perf_analyzer run at its timeout, with retries."""
    attempts = 2 if cfg.retry_stability_pct else 1
    return cfg.ready_timeout_s + runs * attempts * cfg.pa_timeout_s + 120


def _start(cfg: Config, server: Server, run: ServerRun) -> None:
    """Starts the server, again (up to MAX_RESTARTS per run) if it exits before its models are ready."""
    while True:
        logger.info("starting %s (round %d)", server.name, run.round)
        try:
            server.start(run, _serve_budget_s(cfg, len(server.models) * len(cfg.concurrency)))
        except ServerExitedError as exc:
            if run.restarts >= MAX_RESTARTS:
                raise
            run.restarts += 1
            logger.warning("%s; starting it again", exc)
            server.stop()
            continue
        logger.info("%s ready in %.1f s: %s", server.name, run.start_s, run.metadata)
        return


def _measure_server(cfg: Config, server: Server, run: ServerRun, ms: list[Measurement]) -> None:
    """Every model x concurrency on one server; a server that dies mid-run is restarted and that run redone."""
    _start(cfg, server, run)
    for model in server.models:
        for c in cfg.concurrency:
            m = _measure(cfg, server, model, c, run.round)
            if not server.is_alive():
                if run.restarts >= MAX_RESTARTS:
                    ms.append(m)
                    raise RuntimeError(f"{server.name} died during {model} c={c} (restarted {run.restarts} times "
                                       f"already):\n{server.log_tail()}")
                logger.warning("%s died during %s c=%d; restarting it and measuring again. Log tail:\n%s",
                               server.name, model, c, server.log_tail())
                run.restarts += 1
                server.stop()
                _start(cfg, server, run)
                m = _measure(cfg, server, model, c, run.round)
                m.after_restart = True
            ms.append(m)
            logger.info("%-9s %-9s c=%-3d %s infer/s p50 %s us p99 %s us client CPU %s %%%s", server.name, model, c,
                        _fmt(m.infer_per_s), _fmt(m.p50_us), _fmt(m.p99_us), _fmt(m.client_cpu_pct),
                        f"  [{m.error}]" if m.error else "")


def run_all(cfg: Config, invocation: str) -> int:
    _ensure_tools(cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)
    meta = _host_metadata(cfg)
    runs: list[ServerRun] = []
    ms: list[Measurement] = []
    current: Server | None = None
    try:
        for rnd in range(1, cfg.rounds + 1):
            for name in cfg.servers:
                models = [m for m in cfg.models if m in PEER_MODELS or name == "infergate"]
                if not models:
                    continue
                raw_dir = cfg.out / "raw" / (name if cfg.rounds == 1 else f"{name}-r{rnd}")
                raw_dir.mkdir(parents=True, exist_ok=True)
                run = ServerRun(server=name, round=rnd)
                runs.append(run)
                current = SERVER_CLASSES[name](cfg, models, raw_dir)
                try:
                    _measure_server(cfg, current, run, ms)
                except RuntimeError as exc:
                    run.error = str(exc)
                    logger.error("%s", exc)
                finally:
                    logger.info("stopping %s", name)
                    current.stop()
                    current = None
                write_json(cfg, meta, runs, ms, invocation)
    finally:
        if current is not None:
            current.stop()
        meta["loadavg_at_end"] = os.getloadavg()
        write_json(cfg, meta, runs, ms, invocation)
        write_markdown(cfg, meta, runs, ms, invocation)
        logger.info("wrote %s and %s", cfg.out / "results.json", cfg.out / "results.md")
    return 1 if any(m.infer_per_s is None for m in ms) or any(r.error for r in runs) else 0


def _csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> tuple[Config, str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--servers", default=",".join(SERVER_NAMES), help="comma-separated: " + ", ".join(SERVER_NAMES))
    parser.add_argument("--models", default="mlp_small,mlp_large,identity",
                        help="comma-separated; identity is measured on infergate only")
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated perf_analyzer concurrencies")
    parser.add_argument("--out", type=Path, required=True, help="results folder, e.g. bench/results/perf_analyzer-DATE")
    parser.add_argument("--cache", type=Path, default=peer_kit.default_bench_cache(),
                        help=f"tools, models and peer venvs, kept between runs (env {peer_kit.CACHE_ENV})")
    parser.add_argument("--work", type=Path, default=peer_kit.default_work_dir("perf_compare"),
                        help="scratch (infergate repo)")
    default_python = REPO_ROOT / ".venv" / "bin" / "python"
    parser.add_argument("--python", type=Path, default=default_python if default_python.exists() else sys.executable,
                        help="interpreter with infergate (and so onnx), for readiness checks and the "
                             "identity model")
    parser.add_argument("--infergate-cmd", default=INFERGATE_CMD, help="infergate's command line; {repo} is replaced")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: -p {QUICK_MEASUREMENT_MS} --max-trials {QUICK_MAX_TRIALS}")
    parser.add_argument("--measurement-ms", type=int, default=None,
                        help=f"perf_analyzer -p, ms: {FULL_MEASUREMENT_MS}, {QUICK_MEASUREMENT_MS} with --quick")
    parser.add_argument("--max-trials", type=int, default=None,
                        help=f"perf_analyzer --max-trials: {FULL_MAX_TRIALS}, {QUICK_MAX_TRIALS} with --quick")
    parser.add_argument("--retry-stability-pct", type=int, default=None,
                        help="if perf_analyzer cannot stabilise at its default -s 10, rerun once with this -s "
                             f"(0: no retry; default {FULL_RETRY_STABILITY_PCT}, {QUICK_RETRY_STABILITY_PCT} with "
                             "--quick); each result records the -s it got")
    parser.add_argument("--rounds", type=int, default=1, help="repeat the whole server sequence; cells are medians")
    parser.add_argument("--ready-timeout-s", type=int, default=READY_TIMEOUT_S)
    parser.add_argument("--pa-arg", action="append", default=[], metavar="ARG",
                        help="extra perf_analyzer argument (repeatable), e.g. --pa-arg=--async")
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    servers, models = list(dict.fromkeys(_csv_list(args.servers))), list(dict.fromkeys(_csv_list(args.models)))
    if unknown := [s for s in servers if s not in SERVER_NAMES]:
        parser.error(f"unknown server(s) {unknown}; expected some of {SERVER_NAMES}")
    if unknown := [m for m in models if m not in PEER_MODELS + INFERGATE_ONLY_MODELS]:
        parser.error(f"unknown model(s) {unknown}; expected some of {PEER_MODELS + INFERGATE_ONLY_MODELS}")
    cfg = Config(
        servers=servers, models=models, concurrency=[int(c) for c in _csv_list(args.concurrency)],
        out=args.out.resolve(), cache=args.cache.resolve(), work=args.work.resolve(),
        python=Path(args.python), infergate_cmd=args.infergate_cmd,
        measurement_ms=args.measurement_ms or (QUICK_MEASUREMENT_MS if args.quick else FULL_MEASUREMENT_MS),
        max_trials=args.max_trials or (QUICK_MAX_TRIALS if args.quick else FULL_MAX_TRIALS),
        retry_stability_pct=(args.retry_stability_pct if args.retry_stability_pct is not None
                             else QUICK_RETRY_STABILITY_PCT if args.quick else FULL_RETRY_STABILITY_PCT),
        rounds=args.rounds, ready_timeout_s=args.ready_timeout_s,
        pa_args=args.pa_arg)
    invocation = shlex.join(["python", os.path.relpath(__file__, Path.cwd()), *(argv if argv is not None
                                                                                  else sys.argv[1:])])
    return cfg, invocation


def main(argv: list[str] | None = None) -> int:
    cfg, invocation = parse_args(argv)

    def _on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # unwinds through run_all's finally: servers stopped

    # Also where SIGINT was inherited as ignored (started in the background by a script): stop cleanly on all three.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_term)
    try:
        return run_all(cfg, invocation)
    except RuntimeError as exc:  # set-up (models, perf_analyzer): a server's own failure is in the results
        logger.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted: servers stopped, partial results written")
        return 130


if __name__ == "__main__":
    sys.exit(main())
