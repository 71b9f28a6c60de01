"""The stress kit's client: requests with their own id and row, sent open- or closed-loop on grpc.aio, one Outcome each.

Every request is sent once, never retried, and ends in exactly one Outcome: the answer (its id and output as the
server returned them), a gRPC status, or LOST when nothing came back by its deadline plus DRAIN_GRACE_S.
Judging the outcomes is stress_accounting's job; this module only records them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
import numpy as np

from infergate.bench.loadgen.worker import CHANNEL_OPTIONS
from infergate.bench.loadgen.workload import CONNECT_TIMEOUT_S, INFER_METHOD
from infergate.bench.stress_model import INPUT, MODEL, OUTPUT
from infergate.proto import grpc_service_pb2 as pb

logger = logging.getLogger(__name__)

DRAIN_GRACE_S = 2.0  # after the last request's deadline, how long to wait before calling what is left LOST
LOST = "LOST"  # no answer and no status: the call was still open when the drain ended
OK = "OK"
CLOSED_REFUSED_PAUSE_S = 0.001  # closed loop: a client refused at once waits this long, not to spin on refusals


@dataclass(frozen=True)
class PhaseSpec:
    """What one phase sends. Times are CLOCK_MONOTONIC ns, which every process of the host shares."""

    phase: str  # the ids' prefix: request k of the phase has id f"{phase}-{k}"
    target: str
    rows: np.ndarray  # [pool, N_IN]: request k sends rows[k % pool]
    start_ns: int
    deadline_s: float  # each request's gRPC timeout
    offsets_ns: np.ndarray | None = None  # open loop: request k is due at start_ns + offsets_ns[k]
    concurrency: int = 0  # closed loop: requests in flight
    duration_s: float = 0.0  # closed loop: how long clients keep sending
    channels: int = 2  # TCP connections
    model: str = MODEL
    first: int = 0  # this process's share of an open loop: requests first, first + stride, ...
    stride: int = 1


@dataclass
class Outcome:
    """What became of one request."""

    index: int  # k: the request's place in its phase
    request_id: str
    row: int  # which of the phase's rows it sent
    scheduled_ns: int  # when it was due (closed loop: when it was sent)
    sent_ns: int
    done_ns: int
    code: str  # OK, a gRPC status code name, or LOST
    detail: str = ""  # the status message
    response_id: str | None = None  # the id the answer carried
    output: np.ndarray | None = None  # the answer's OUTPUT0 row [N_OUT]; None if it had none


@dataclass
class Recorder:
    """Outcomes in the order they completed; soak reads the new ones as they come."""

    outcomes: list[Outcome] = field(default_factory=list)
    sent: int = 0


def request_id(phase: str, index: int) -> str:
    return f"{phase}-{index}"


def encode_request(model: str, rid: str, row: np.ndarray) -> bytes:
    """A serialised ModelInferRequest of one row, with its id, asking for OUTPUT0."""
    request = pb.ModelInferRequest(model_name=model, id=rid)
    request.inputs.add(name=INPUT, datatype="FP32", shape=[1, int(row.shape[-1])])
    request.outputs.add(name=OUTPUT)
    request.raw_input_contents.append(np.ascontiguousarray(row, np.float32).tobytes())
    return request.SerializeToString()


def decode_answer(data: bytes) -> tuple[str, np.ndarray | None]:
    """(the response's id, its OUTPUT0 row) from a serialised ModelInferResponse; None when OUTPUT0 is missing."""
    response = pb.ModelInferResponse.FromString(data)
    for i, tensor in enumerate(response.outputs):
        if tensor.name == OUTPUT and i < len(response.raw_output_contents):
            values = np.frombuffer(response.raw_output_contents[i], np.float32)
            return response.id, values.reshape(-1) if tensor.datatype == "FP32" else None
    return response.id, None


async def call_once(call: Any, spec: PhaseSpec, k: int, scheduled_ns: int) -> Outcome:
    """Sends request k of the phase and waits for its end; cancelled, it is LOST."""
    rid, row = request_id(spec.phase, k), k % len(spec.rows)
    data = encode_request(spec.model, rid, spec.rows[row])
    sent_ns = time.monotonic_ns()
    outcome = Outcome(k, rid, row, scheduled_ns, sent_ns, 0, LOST)
    try:
        answer = await call(data, timeout=spec.deadline_s)
        outcome.code = OK
        try:
            outcome.response_id, outcome.output = decode_answer(answer)
        except Exception as exc:  # a malformed answer is a wrong answer, judged later
            outcome.detail = f"undecodable response: {exc}"
    except grpc.aio.AioRpcError as exc:
        outcome.code, outcome.detail = exc.code().name, exc.details() or ""
    except asyncio.CancelledError:
        outcome.detail = "no answer by the deadline plus the drain grace"
    outcome.done_ns = time.monotonic_ns()
    return outcome


async def _sleep_until(t_ns: int) -> None:
    # asyncio may wake a timer up to its clock resolution early: sleep again until the time has come.
    while (delay_s := (t_ns - time.monotonic_ns()) / 1e9) > 0:
        await asyncio.sleep(delay_s)


async def open_loop(calls: list[Any], spec: PhaseSpec, recorder: Recorder) -> None:
    """Sends this process's share of the schedule, each request on time, then waits for every end."""
    assert spec.offsets_ns is not None
    due = spec.offsets_ns[spec.first::spec.stride] + spec.start_ns
    tasks: set[asyncio.Task[None]] = set()

    async def one(k: int, scheduled_ns: int) -> None:
        recorder.outcomes.append(await call_once(calls[k % len(calls)], spec, k, scheduled_ns))

    for j, at_ns in enumerate(due.tolist()):
        if at_ns > time.monotonic_ns():
            await _sleep_until(at_ns)
        task = asyncio.ensure_future(one(spec.first + j * spec.stride, at_ns))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        recorder.sent += 1
    await _drain(tasks, spec.deadline_s)


async def closed_loop(calls: list[Any], spec: PhaseSpec, recorder: Recorder) -> None:
    """`concurrency` clients, each sending its next request when the last one ended, for duration_s."""
    end_ns = spec.start_ns + int(spec.duration_s * 1e9)
    counter = [0]

    async def client(c: int) -> None:
        while time.monotonic_ns() < end_ns:
            k = counter[0]
            counter[0] += 1
            recorder.sent += 1
            outcome = await call_once(calls[c % len(calls)], spec, k, time.monotonic_ns())
            recorder.outcomes.append(outcome)
            if outcome.code != OK and outcome.done_ns - outcome.sent_ns < CLOSED_REFUSED_PAUSE_S * 1e9:
                await asyncio.sleep(CLOSED_REFUSED_PAUSE_S)

    await _sleep_until(spec.start_ns)
    tasks = {asyncio.ensure_future(client(c)) for c in range(spec.concurrency)}
    await _drain(tasks, spec.duration_s + spec.deadline_s)


async def _drain(tasks: set[asyncio.Task[None]], within_s: float) -> None:
    """Waits for every task; what is still open after `within_s` plus the grace is cancelled (and so LOST)."""
    if tasks:
        await asyncio.wait(list(tasks), timeout=within_s + DRAIN_GRACE_S)
    for task in list(tasks):
        task.cancel()
    if tasks:
        await asyncio.wait(list(tasks))


def channels(target: str, count: int) -> list[grpc.aio.Channel]:
    return [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) for _ in range(count)]


async def connect(opened: list[grpc.aio.Channel]) -> list[Any]:
    """The ModelInfer callables of connected channels; raises TimeoutError naming the wait."""
    try:
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in opened)), CONNECT_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise TimeoutError(f"no connection within {CONNECT_TIMEOUT_S:g} s") from None
    return [c.unary_unary(INFER_METHOD) for c in opened]


async def _run(spec: PhaseSpec, action: tuple[int, Callable[[], None]] | None) -> list[Outcome]:
    recorder = Recorder()
    opened = channels(spec.target, spec.channels)
    try:
        calls = await connect(opened)
        hook = asyncio.ensure_future(_at(*action)) if action is not None else None
        await (open_loop if spec.offsets_ns is not None else closed_loop)(calls, spec, recorder)
        if hook is not None:
            await hook
    finally:
        for channel in opened:
            await channel.close()
    return recorder.outcomes


async def _at(t_ns: int, action: Callable[[], None]) -> None:
    await _sleep_until(t_ns)
    action()


def run_in_process(spec: PhaseSpec, action: tuple[int, Callable[[], None]] | None = None) -> list[Outcome]:
    """The phase on this process's event loop (uvloop when installed); `action` runs at its time, mid-load."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(_run(spec, action))
    return uvloop.run(_run(spec, action))  # type: ignore[no-any-return]


def _share(spec: PhaseSpec) -> list[Outcome]:
    return run_in_process(spec)


def run_phase(spec: PhaseSpec, processes: int = 1,
              action: tuple[int, Callable[[], None]] | None = None) -> list[Outcome]:
    """Every outcome of the phase, from `processes` client processes (spawned: grpc does not survive a fork).

    Open loop: process p sends requests p, p + processes, ...; closed loop: it runs its share of the clients.
    `action` (t_ns, fn) runs in this process at t_ns, while the load runs."""
    if processes <= 1:
        return run_in_process(spec, action)
    if spec.offsets_ns is not None:
        shares = [replace(spec, first=p, stride=processes) for p in range(processes)]
    else:
        split = [spec.concurrency // processes + (p < spec.concurrency % processes) for p in range(processes)]
        shares = [replace(spec, phase=f"{spec.phase}.{p}", concurrency=n) for p, n in enumerate(split) if n]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(len(shares), mp_context=context) as pool:
        pending = [pool.submit(_share, share) for share in shares]
        if action is not None:
            while (delay_s := (action[0] - time.monotonic_ns()) / 1e9) > 0:
                time.sleep(delay_s)
            action[1]()
        return [outcome for future in pending for outcome in future.result()]
