"""`SyncClient`: the async client driven from blocking code on a private event-loop thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator, MutableMapping
from typing import Any, TypeVar, Unpack

from client._client import ReadParams, S2SClient, SqlResult
from client._kv import KvStore
from s2s.config import StreamConfig
from s2s.kv_format import DEFAULT_BASIN, Change, Entry
from s2s.kv_state import KvChange
from s2s.v1 import lake_pb2 as lpb
from s2s.v1 import records_pb2 as pb

T = TypeVar("T")


class SyncClient:
    """Blocking facade: each method runs the matching `S2SClient` call and waits for it."""

    def __init__(self, target: str = "127.0.0.1:50051", **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._client: S2SClient = self._run(self._make(target, options))

    @staticmethod
    async def _make(target: str, options: dict[str, Any]) -> S2SClient:
        return S2SClient(target, **options)

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._run(self._client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()

    def create_basin(self, name: str, **kwargs: Any) -> Any:
        return self._run(self._client.create_basin(name, **kwargs))

    def list_basins(self, **kwargs: Any) -> Any:
        return self._run(self._client.list_basins(**kwargs))

    def delete_basin(self, name: str) -> None:
        self._run(self._client.delete_basin(name))

    def create_stream(self, basin: str, name: str, config: StreamConfig | None = None) -> Any:
        return self._run(self._client.create_stream(basin, name, config))

    def list_streams(self, basin: str, **kwargs: Any) -> Any:
        return self._run(self._client.list_streams(basin, **kwargs))

    def delete_stream(self, basin: str, name: str) -> None:
        self._run(self._client.delete_stream(basin, name))

    def check_tail(self, basin: str, stream: str) -> pb.StreamPosition:
        return self._run(self._client.stream(basin, stream).check_tail())

    def append(
        self,
        basin: str,
        stream: str,
        records: Iterable[pb.AppendRecord | bytes],
        *,
        encryption_key: bytes | str | None = None,
        **kwargs: Any,
    ) -> pb.AppendAck:
        target = self._client.stream(basin, stream, encryption_key=encryption_key)
        return self._run(target.append(list(records), **kwargs))

    def read(
        self,
        basin: str,
        stream: str,
        *,
        encryption_key: bytes | str | None = None,
        **params: Unpack[ReadParams],
    ) -> pb.ReadBatch:
        return self._run(
            self._client.stream(basin, stream, encryption_key=encryption_key).read(**params)
        )

    def create_materialization(
        self, name: str, table: str, **kwargs: Any
    ) -> lpb.MaterializationStatus:
        return self._run(self._client.create_materialization(name, table, **kwargs))

    def list_materializations(self) -> list[lpb.MaterializationStatus]:
        return self._run(self._client.list_materializations())

    def get_materialization(self, name: str) -> lpb.MaterializationStatus:
        return self._run(self._client.get_materialization(name))

    def pause_materialization(self, name: str) -> lpb.MaterializationStatus:
        return self._run(self._client.pause_materialization(name))

    def resume_materialization(self, name: str) -> lpb.MaterializationStatus:
        return self._run(self._client.resume_materialization(name))

    def delete_materialization(self, name: str) -> None:
        self._run(self._client.delete_materialization(name))

    def sql(self, query: str, limit: int | None = None) -> SqlResult:
        return self._run(self._client.sql(query, limit))

    def get_kv_store(
        self,
        name: str,
        *,
        basin: str = DEFAULT_BASIN,
        encryption_key: bytes | str | None = None,
    ) -> SyncKvStore:
        """The key-value store `name` of `basin`, loaded (`S2SClient.get_kv_store`)."""
        store = self._client.get_kv_store(name, basin=basin, encryption_key=encryption_key)
        return SyncKvStore(self, self._run(store))

    def iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]:
        """A blocking iterator over an async one of the client's, closed when left."""
        try:
            while True:
                try:
                    yield self._run(anext(iterator))  # type: ignore[arg-type]
                except StopAsyncIteration:
                    return
        finally:
            self._run(iterator.aclose())  # type: ignore[attr-defined]

    def read_session(
        self,
        basin: str,
        stream: str,
        *,
        heartbeats: bool = False,
        encryption_key: bytes | str | None = None,
        **params: Unpack[ReadParams],
    ) -> Iterator[pb.ReadBatch]:
        """Blocking iterator over a read session's batches."""
        target = self._client.stream(basin, stream, encryption_key=encryption_key)
        return self.iterate(target.read_session(heartbeats=heartbeats, **params))


class SyncKvStore(MutableMapping[str, str]):
    """`KvStore` for blocking code: the dict works in memory; `commit`, `reload`, `history`
    and `watch` wait for the server."""

    def __init__(self, client: SyncClient, store: KvStore) -> None:
        self._client = client
        self._store = store

    @property
    def name(self) -> str:
        return self._store.name

    @property
    def basin(self) -> str:
        return self._store.basin

    @property
    def revision(self) -> int:
        return self._store.revision

    @property
    def pending(self) -> list[Change]:
        return self._store.pending

    def entry(self, key: str) -> Entry:
        return self._store.entry(key)

    def discard(self) -> None:
        self._store.discard()

    def reload(self) -> None:
        self._client._run(self._store.reload())

    def commit(self) -> int:
        return self._client._run(self._store.commit())

    def compact(self) -> int:
        return self._client._run(self._store.compact())

    def history(self, key: str, limit: int | None = None) -> list[KvChange]:
        return self._client._run(self._store.history(key, limit))

    def watch(self) -> Iterator[KvChange]:
        """Blocking iterator over the changes committed after `revision`, live."""
        return self._client.iterate(self._store.watch())

    def __getitem__(self, key: str) -> str:
        return self._store[key]

    def __setitem__(self, key: str, value: str) -> None:
        self._store[key] = value

    def __delitem__(self, key: str) -> None:
        del self._store[key]

    def __contains__(self, key: object) -> bool:
        return key in self._store

    def __len__(self) -> int:
        return len(self._store)

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __repr__(self) -> str:
        return repr(self._store)
