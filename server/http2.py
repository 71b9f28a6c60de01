"""Moved to server/transports/native.py (and h2_state.py, h2_limits.py); this name goes once nothing imports it."""

from infergate.server.transports.native import Http2Server, Route, Stream

__all__ = ["Http2Server", "Route", "Stream"]
