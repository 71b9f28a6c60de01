"""Every budget and timeout of the native HTTP/2 transport, and the sliding-window counter that enforces rates."""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# Rates are counted over one sliding window of BUDGET_WINDOW_S seconds (a weighted two-bucket count,
# as nginx's limit_req and Cloudflare's rate limits do). Each limit is per connection.
BUDGET_WINDOW_S = 10.0

# Resets: RST_STREAMs from the client plus streams the server had to refuse or reset (rapid reset,
# CVE-2023-44487). nghttp2 allows a token bucket of 1,000 with 33 more a second
# (nghttp2_option_set_stream_reset_rate_limit); Go's x/net/http2 instead bounds the handlers it
# starts (MaxConcurrentStreams running, a few times that queued, then GOAWAY). 1,000 per 10 s is
# nghttp2's burst with a third of its refill. Only premature resets of the client's count (below).
MAX_RESETS_PER_WINDOW = 1000
# A client's RST_STREAM counts against that budget only when the stream was younger than this
# (Envoy's premature_reset_min_stream_lifetime_seconds, also 1 s): rapid reset cancels at once, while
# a loaded client's deadline cancels (a 2 s deadline at 20,000 calls/s: thousands in 10 s, measured in
# CI) must not cost it its connection, and with it every call it has in flight.
PREMATURE_RESET_S = 1.0
# PINGs answered. grpc-core's own policy is the ping strikes below; Go counts PING ACKs among the
# 10,000 control frames it may have queued (maxQueuedControlFrames). This is the flood cap when
# strikes are off: 500 per 10 s is far above any keepalive or BDP probe rate.
MAX_PINGS_PER_WINDOW = 500
# SETTINGS frames (each needs an ACK and may touch every stream's window). A client sends one at the
# start and a few more when grpc-core's BDP estimator resizes its window; nghttp2 caps unacked
# SETTINGS it sends, not those it gets, and Go counts them among its queued control frames.
MAX_SETTINGS_PER_WINDOW = 100
# Frames that ask no work of the server: empty DATA without END_STREAM, empty HEADERS or
# CONTINUATION fragments, PRIORITY and unknown extension frames (CVE-2019-9518, "empty frames
# flood"; nghttp2 caps empty DATA the same way, Go does not).
MAX_EMPTY_FRAMES_PER_WINDOW = 1000
# WINDOW_UPDATE frames. A streaming reader returns credit a few hundred times a second at most;
# neither Go nor grpc-core count these, nghttp2 only in its outbound-queue flood check (10,000).
MAX_WINDOW_UPDATES_PER_WINDOW = 20000
# CONTINUATION frames in one header block (CVE-2024-27316 / CVE-2023-45288, the CONTINUATION
# flood). nghttp2 allows 8 (nghttp2_option_set_max_continuations); Go bounds the block's bytes.
# A 64 KiB block in 16 KiB frames needs 4.
MAX_CONTINUATIONS_PER_BLOCK = 16

MAX_CONCURRENT_STREAMS = 1024  # calls in flight per connection (announced); grpc-core's default is unlimited, Go's 250
MAX_FRAME_BYTES = 1 << 20  # largest frame we accept (announced; HTTP/2 allows 16 KiB to 16 MiB)
MAX_HEADER_LIST_BYTES = 64 * 1024  # decoded request headers per call (announced); grpc-core: 16 KiB soft, Go: 1 MiB
STREAM_WINDOW_BYTES = 8 * 1024 * 1024  # what a client may send on a call before its messages are taken
CONNECTION_WINDOW_BYTES = 64 * 1024 * 1024  # the same over all calls: the cap on buffered request bytes
MAX_MESSAGES_IN_FLIGHT = 256  # a stream's messages in work (ModelStreamInfer) before it gets no more window


@dataclass(frozen=True, slots=True)
class Http2Limits:
    """Budgets and timeouts of one native HTTP/2 server; 0 turns a limit or timeout off."""

    max_concurrent_streams: int = MAX_CONCURRENT_STREAMS
    max_frame_bytes: int = MAX_FRAME_BYTES
    max_header_list_bytes: int = MAX_HEADER_LIST_BYTES
    stream_window_bytes: int = STREAM_WINDOW_BYTES
    connection_window_bytes: int = CONNECTION_WINDOW_BYTES  # raised to fit one whole largest message
    max_messages_in_flight_per_stream: int = MAX_MESSAGES_IN_FLIGHT
    max_continuations_per_block: int = MAX_CONTINUATIONS_PER_BLOCK
    budget_window_s: float = BUDGET_WINDOW_S
    max_resets_per_window: int = MAX_RESETS_PER_WINDOW
    premature_reset_s: float = PREMATURE_RESET_S
    max_pings_per_window: int = MAX_PINGS_PER_WINDOW
    max_settings_per_window: int = MAX_SETTINGS_PER_WINDOW
    max_empty_frames_per_window: int = MAX_EMPTY_FRAMES_PER_WINDOW
    max_window_updates_per_window: int = MAX_WINDOW_UPDATES_PER_WINDOW
    # Timeouts. grpc-core has none of the first three as such (it bounds the handshake); Go's
    # http.Server has ReadHeaderTimeout and IdleTimeout, both off by default.
    preface_timeout_s: float = 10.0  # connection start to the client's preface and first SETTINGS
    header_block_timeout_s: float = 10.0  # HEADERS without END_HEADERS to the last CONTINUATION
    message_read_timeout_s: float = 30.0  # a call waiting on a request message that makes no progress
    idle_timeout_s: float = 300.0  # no calls for this long: GOAWAY(NO_ERROR) (grpc-core: max_connection_idle)
    ssl_handshake_timeout_s: float = 10.0
    # Keepalive, as grpc-core and Triton's --grpc-keepalive-* / --grpc-http2-* flags mean it.
    keepalive_time_s: float = 7200.0  # nothing read for this long: the server PINGs (GRPC_ARG_KEEPALIVE_TIME_MS)
    keepalive_timeout_s: float = 20.0  # no PING ACK within this: the connection is closed
    keepalive_permit_without_calls: bool = False  # keepalive pings (ours and the client's) with no call open
    max_pings_without_data: int = 2  # our pings in a row with no DATA/HEADERS sent between (0: no limit)
    min_recv_ping_interval_without_data_s: float = 300.0  # client PINGs closer than this are strikes
    max_ping_strikes: int = 2  # strikes beyond this: GOAWAY(ENHANCE_YOUR_CALM, "too_many_pings") (0: off)
    # Connections: beyond max_connections (0: RLIMIT_NOFILE's soft limit less reserved_fds) a new
    # connection first evicts the longest-idle one, else is closed at once.
    max_connections: int = 0
    reserved_fds: int = 64


DEFAULT_LIMITS = Http2Limits()


class SlidingWindowBudget:
    """Counts events over the last window_s seconds (this window's count plus the previous one's,
    weighted by how much of it still overlaps); `spend` says when the limit is passed."""

    __slots__ = ("limit", "window_s", "start_s", "current", "previous")

    def __init__(self, limit: int, window_s: float, now_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self.start_s = now_s
        self.current = 0
        self.previous = 0

    def spend(self, now_s: float, count: int = 1) -> bool:
        """Counts `count` events at now_s; True when the window's total is above the limit (0: no limit)."""
        if self.limit <= 0:
            return False
        elapsed = now_s - self.start_s
        if elapsed >= self.window_s:
            windows = int(elapsed // self.window_s)
            self.previous = self.current if windows == 1 else 0
            self.current = 0
            self.start_s += windows * self.window_s
            elapsed -= windows * self.window_s
        self.current += count
        return self.previous * (1.0 - elapsed / self.window_s) + self.current > self.limit
