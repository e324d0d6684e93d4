"""The s2s Python client SDK (gRPC). Async first; `SyncClient` wraps it for blocking code.

async with S2SClient("127.0.0.1:50051") as client:
    stream = client.stream("my-basin", "events")
    ack = await stream.append([b"hello"])
    result = await client.sql("SELECT count(*) AS n FROM lake.app.events")
    print(result.table, result.truncated)
    store = await client.get_kv_store("settings")   # a key-value store on a stream
    store["color"] = "blue"
    await store.commit()
"""

from client._client import (
    AppendSession,
    Producer,
    ProducerSession,
    ReadParams,
    S2SClient,
    SqlResult,
    Stream,
)
from client._errors import (
    FencingTokenMismatchError,
    KvConflict,
    ReadUnwrittenError,
    S2SError,
    SeqNumMismatchError,
)
from client._kv import KvStore
from client._sync import SyncClient, SyncKvStore
from s2s.kv_format import Change, Entry
from s2s.kv_state import KvChange

__all__ = [
    "AppendSession",
    "Change",
    "Entry",
    "FencingTokenMismatchError",
    "KvChange",
    "KvConflict",
    "KvStore",
    "Producer",
    "ProducerSession",
    "ReadParams",
    "ReadUnwrittenError",
    "S2SClient",
    "S2SError",
    "SeqNumMismatchError",
    "SqlResult",
    "Stream",
    "SyncClient",
    "SyncKvStore",
]
