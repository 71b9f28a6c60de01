"""`infergate serve` flags for the native HTTP/2 transport's budgets and timeouts (Triton's names where it has them)."""

from __future__ import annotations

import argparse
import dataclasses

from infergate.server.transports.h2_limits import DEFAULT_LIMITS, Http2Limits

# Triton's keepalive flags (tritonserver --help; grpc-core's doc/keepalive.md), in milliseconds as Triton takes them.
_TRITON_MS_FLAGS = (
    ("--grpc-keepalive-time", "keepalive_time_s",
     "after this many ms with nothing read, the server PINGs the client (GRPC_ARG_KEEPALIVE_TIME_MS)"),
    ("--grpc-keepalive-timeout", "keepalive_timeout_s",
     "ms to wait for the PING's acknowledgement before closing the connection (GRPC_ARG_KEEPALIVE_TIMEOUT_MS)"),
    ("--grpc-http2-min-recv-ping-interval-without-data", "min_recv_ping_interval_without_data_s",
     "client PINGs closer than this many ms, with no data sent between, are strikes "
     "(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS)"),
)
_TRITON_INT_FLAGS = (
    ("--grpc-http2-max-pings-without-data", "max_pings_without_data",
     "keepalive PINGs the server sends with no DATA or HEADERS sent between; 0: no limit "
     "(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA)"),
    ("--grpc-http2-max-ping-strikes", "max_ping_strikes",
     "ping strikes tolerated before GOAWAY(ENHANCE_YOUR_CALM, too_many_pings); 0: no limit "
     "(GRPC_ARG_HTTP2_MAX_PING_STRIKES)"),
)
# Ours: --grpc-http2-<field with dashes>, in the field's own unit.
_OWN_FLAGS = (
    ("max_concurrent_streams", "calls in flight per connection (announced); more are refused with REFUSED_STREAM"),
    ("max_connections", "open connections at most; 0: the RLIMIT_NOFILE soft limit less --grpc-http2-reserved-fds. "
                        "Beyond it the longest-idle connection is closed, or the new one is"),
    ("reserved_fds", "file descriptors kept free of connections when --grpc-http2-max-connections is 0"),
    ("idle_timeout_s", "seconds a connection may go without calls before GOAWAY(NO_ERROR); 0: never "
                       "(gRPC's max_connection_idle)"),
    ("preface_timeout_s", "seconds a new connection has to send the HTTP/2 preface and SETTINGS"),
    ("header_block_timeout_s", "seconds a header block may stay unfinished (CONTINUATION pending)"),
    ("message_read_timeout_s", "seconds a call may wait on a request message that makes no progress; "
                               "then it is CANCELLED"),
    ("ssl_handshake_timeout_s", "seconds a TLS handshake may take"),
    ("stream_window_bytes", "request bytes a call may have unread (its HTTP/2 window; grown to fit one message)"),
    ("connection_window_bytes", "request bytes a connection may have unread over all its calls (at least one "
                                "largest message)"),
    ("max_messages_in_flight_per_stream", "ModelStreamInfer requests of one stream in work before the stream "
                                          "gets no more window"),
    ("max_header_list_bytes", "decoded request headers per call (announced)"),
    ("max_frame_bytes", "largest frame accepted (announced)"),
    ("max_continuations_per_block", "CONTINUATION frames per header block"),
    ("budget_window_s", "the sliding window, in seconds, the per-connection rate budgets below are counted over"),
    ("max_resets_per_window", "stream resets (ours, and the client's premature ones) per window before "
                              "GOAWAY(ENHANCE_YOUR_CALM)"),
    ("premature_reset_s", "a client's reset of a stream younger than this many seconds counts as premature "
                          "(rapid reset); older ones (deadline cancels) are not budgeted"),
    ("max_pings_per_window", "PINGs per window before GOAWAY(ENHANCE_YOUR_CALM)"),
    ("max_settings_per_window", "SETTINGS frames per window before GOAWAY(ENHANCE_YOUR_CALM)"),
    ("max_empty_frames_per_window", "frames without content (empty DATA/CONTINUATION, PRIORITY, unknown types) "
                                    "per window before GOAWAY(ENHANCE_YOUR_CALM)"),
    ("max_window_updates_per_window", "WINDOW_UPDATE frames per window before GOAWAY(ENHANCE_YOUR_CALM)"),
)


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_http2_flags(parser: argparse.ArgumentParser) -> None:
    """Adds the native transport's flags (an argument group) to `infergate serve`'s parser."""
    group = parser.add_argument_group("native HTTP/2 transport (--transport native): budgets and timeouts")
    defaults = DEFAULT_LIMITS
    for flag, field, text in _TRITON_MS_FLAGS:
        group.add_argument(flag, type=int, default=None, metavar="MS",
                           help=f"{text}; default {getattr(defaults, field) * 1000:g}")
    group.add_argument("--grpc-keepalive-permit-without-calls", type=_bool, nargs="?", const=True, default=None,
                       metavar="BOOL", help="allow keepalive PINGs, the server's and the client's, while no call is "
                                            "open (GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS); default false")
    for flag, field, text in _TRITON_INT_FLAGS:
        group.add_argument(flag, type=int, default=None, metavar="N",
                           help=f"{text}; default {getattr(defaults, field)}")
    for field, text in _OWN_FLAGS:
        kind = float if field.endswith("_s") else int
        group.add_argument("--grpc-http2-" + field.replace("_", "-"), type=kind, default=None,
                           metavar="S" if kind is float else "N", help=f"{text}; default {getattr(defaults, field)}")


def http2_limits(args: argparse.Namespace) -> Http2Limits:
    """The Http2Limits the parsed flags ask for (defaults where a flag was not given)."""
    changes: dict[str, object] = {}
    given: dict[str, str] = {}  # field -> the flag that set it, for error messages
    for flag, field, _ in _TRITON_MS_FLAGS:
        value = getattr(args, _dest(flag), None)
        if value is not None:
            changes[field], given[field] = value / 1000.0, f"{flag} {value}"
    if (permit := getattr(args, "grpc_keepalive_permit_without_calls", None)) is not None:
        changes["keepalive_permit_without_calls"] = permit
    for flag, field, _ in _TRITON_INT_FLAGS:
        if (value := getattr(args, _dest(flag), None)) is not None:
            changes[field], given[field] = value, f"{flag} {value}"
    for field, _ in _OWN_FLAGS:
        if (value := getattr(args, "grpc_http2_" + field, None)) is not None:
            changes[field], given[field] = value, f"--grpc-http2-{field.replace('_', '-')} {value}"
    for field, value in changes.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise ValueError(f"{given[field]}: expected 0 (off) or a positive number")
    return dataclasses.replace(DEFAULT_LIMITS, **changes)  # type: ignore[arg-type]


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")
