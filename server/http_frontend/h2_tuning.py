"""HTTP/2 tuning for large request bodies: settings Hypercorn does not expose, and one fix.

1. **Windows and frames.** Hypercorn advertises HTTP/2's defaults: 64 KiB stream and
   connection windows, 16 KiB frames. A client streaming 1 MiB append batches (S2S sessions,
   the official SDK) then waits for a WINDOW_UPDATE every 64 KiB and cuts each batch into 64
   frames, each handled by pure-Python h2 on both ends. The server now advertises the sizes
   below in its first SETTINGS frame and opens the connection window to match. Reads are
   unaffected: the client's windows govern those. Memory stays bounded: Hypercorn
   acknowledges a chunk only once the app's queue (`max_app_queue_size`, 10 chunks) took it,
   so a stream holds at most its window plus ten frames, a connection at most its window
   plus ten frames per stream.
2. **Frame reprs.** h2 formats every received frame for a trace log line, even with logging
   off (`repr(frame)` is evaluated before the no-op logger is called), and hyperframe's repr
   hex-encodes the frame's whole body only to keep its first 20 hex digits. For S2S append
   sessions this was ~45% of the event loop's time (py-spy, `bench/http_append.py`). The
   replacement encodes only the bytes it keeps, so the text is identical.

Hypercorn, h2 and hyperframe are pinned (requirements.lock). `tests/interop/test_h2_tuning.py`
checks what a connection advertises and the repr text, so an upgrade that moves these
internals fails a test instead of silently undoing the tuning.
"""

from __future__ import annotations

import binascii
from typing import Any

import h2.settings
import hyperframe.frame
from hypercorn.protocol.h2 import H2Protocol

STREAM_WINDOW_BYTES = 8 * 1024 * 1024
"""Per stream: eight 1 MiB batches in flight before the client must wait for us."""
CONNECTION_WINDOW_BYTES = 32 * 1024 * 1024
"""Shared by a connection's streams; larger than one stream's, so sessions do not starve."""
FRAME_BYTES_MAX = 1024 * 1024
"""The largest DATA frame a client may send (HTTP/2 allows up to 16 MiB - 1)."""

_DEFAULT_WINDOW_BYTES = 65_535
_REPR_HEX_DIGITS = 20
_installed = False


def frame_data_repr(data: bytes | None) -> str:
    """hyperframe's text for frame data (first 20 hex digits), from only the bytes shown."""
    if not data:
        return "None"
    shown = binascii.hexlify(data[: _REPR_HEX_DIGITS // 2 + 1]).decode("ascii")
    if len(shown) > _REPR_HEX_DIGITS:
        shown = shown[:_REPR_HEX_DIGITS] + "..."
    return "<hex:" + shown + ">"


def install() -> None:
    """Patch Hypercorn's `H2Protocol` and hyperframe once per process; later calls do
    nothing."""
    global _installed
    if _installed:
        return
    _installed = True
    hyperframe.frame._raw_data_repr = frame_data_repr
    original_init = H2Protocol.__init__
    original_initiate = H2Protocol.initiate

    def init(self: H2Protocol, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        # Initial values, not assignments: h2 treats an assigned setting as pending until the
        # client acknowledges it, and its first SETTINGS frame sends the current values only.
        codes = h2.settings.SettingCodes
        values = {codes(code): value for code, value in self.connection.local_settings.items()}
        values[codes.INITIAL_WINDOW_SIZE] = STREAM_WINDOW_BYTES
        values[codes.MAX_FRAME_SIZE] = FRAME_BYTES_MAX
        self.connection.local_settings = h2.settings.Settings(client=False, initial_values=values)
        # Read by h2 when it parses inbound frames; set from the settings only at its own init.
        self.connection.max_inbound_frame_size = FRAME_BYTES_MAX

    async def initiate(self: H2Protocol, *args: Any, **kwargs: Any) -> None:
        await original_initiate(self, *args, **kwargs)
        self.connection.increment_flow_control_window(
            CONNECTION_WINDOW_BYTES - _DEFAULT_WINDOW_BYTES
        )
        await self._flush()

    H2Protocol.__init__ = init  # type: ignore[method-assign]
    H2Protocol.initiate = initiate  # type: ignore[method-assign]
