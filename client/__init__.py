"""The s2s Python client SDK (gRPC). Async first; `SyncClient` wraps it for blocking code.

async with S2SClient("127.0.0.1:50051") as client:
    stream = client.stream("my-basin", "events")
    ack = await stream.append([b"hello"])
    result = await client.sql("SELECT count(*) AS n FROM lake.app.events")
    print(result.table, result.truncated)
"""

from client._client import AppendSession, Producer, ReadParams, S2SClient, SqlResult, Stream
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
    "ReadParams",
    "ReadUnwrittenError",
    "S2SClient",
    "S2SError",
    "SeqNumMismatchError",
    "SqlResult",
    "Stream",
    "SyncClient",
]
