"""HTTP/2 request data that arrives after its response ended: dropped, not a dead connection.

A response may end before its request body has all arrived: an error answered before the
body was read (a missing `s2-basin` header, a body over a limit), or an S2S append session
ended by a terminal frame while the client still sends. Hypercorn forgets a stream once its
response ends, and the next DATA frame for it then raises `KeyError` in
`H2Protocol._handle_events` (END_STREAM alone is guarded there): a traceback in the log, and
the connection closes with every other request on it. The official SDK sends all of a
client's requests over one connection. Measured before this fix: 128 of 200 such requests
(200 KB bodies refused for a missing header) broke their connection.

`install` makes Hypercorn skip DATA events of streams it no longer has, after handing their
flow-control credit back to the connection (h2 leaves the stream's own window alone once the
stream is closed), so the client's other streams keep their window. Events are then handed
to Hypercorn one at a time, each followed by its flush of pending output: ~0.3 us more per
event, beside the tens of microseconds h2 takes to parse a frame. Hypercorn is pinned
(requirements.lock); `tests/interop/test_h2_late_data.py` fails if an upgrade moves these
internals.
"""

from __future__ import annotations

import h2.events
from hypercorn.protocol.h2 import H2Protocol

_installed = False


def install() -> None:
    """Patch Hypercorn's `H2Protocol` once per process; later calls do nothing."""
    global _installed
    if _installed:
        return
    _installed = True
    original = H2Protocol._handle_events

    async def handle_events(self: H2Protocol, events: list[h2.events.Event]) -> None:
        # One event at a time: whether a stream is known depends on the events before it in
        # the same batch (its request may open it, the app may answer while one is handled).
        for event in events:
            if isinstance(event, h2.events.DataReceived) and event.stream_id not in self.streams:
                self.connection.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id
                )
            else:
                await original(self, [event])
        await self._flush()

    H2Protocol._handle_events = handle_events  # type: ignore[method-assign]
