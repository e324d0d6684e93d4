"""The s2s Python client SDK (gRPC). Async first; `SyncClient` wraps it for blocking code.

async with S2SClient("127.0.0.1:50051") as client:
    stream = client.stream("my-basin", "events")
    ack = await stream.append([b"hello"])
"""

from client._client import AppendSession, Producer, S2SClient, Stream, make_input
from client._errors import (
    FencingTokenMismatchError,
    ReadUnwrittenError,
    S2SError,
    SeqNumMismatchError,
)
from client._sync import SyncClient

__all__ = [
    "AppendSession",
    "FencingTokenMismatchError",
    "Producer",
    "ReadUnwrittenError",
    "S2SClient",
    "S2SError",
    "SeqNumMismatchError",
    "Stream",
    "SyncClient",
    "make_input",
]
