"""The SDK's key-value store against a real server: the dict, commits and conflicts, reload,
history and watch, sync and async."""

from __future__ import annotations

import asyncio

import pytest

from client import KvChange, KvConflict, KvStore, S2SClient, S2SError, SyncClient
from s2s.kv_format import DEFAULT_BASIN


def test_a_store_is_a_dict_that_commits(sync_client: SyncClient) -> None:
    store = sync_client.get_kv_store("settings")
    assert (len(store), store.revision, dict(store)) == (0, 0, {})
    store["color"] = "blue"
    store["size"] = "10"
    assert store["color"] == "blue" and "size" in store and len(store) == 2
    assert repr(store) == (
        "KvStore(kv-stores/settings, revision 0, 2 pending: {'color': 'blue', 'size': '10'})"
    )
    revision = store.commit()
    assert revision == 2 and store.pending == []
    again = sync_client.get_kv_store("settings")
    assert dict(again) == {"color": "blue", "size": "10"} and again.revision == 2
    del again["color"]
    again["shape"] = "round"
    assert list(again) == ["shape", "size"]
    assert list(again.items()) == [("shape", "round"), ("size", "10")]
    assert again.commit() == 4
    store.reload()
    assert dict(store) == {"shape": "round", "size": "10"}
    with pytest.raises(KeyError):
        del store["color"]
    with pytest.raises(KeyError):
        store["color"]
    with pytest.raises(TypeError):
        store["n"] = 1  # type: ignore[assignment]
    with pytest.raises(ValueError, match="1-1024 bytes"):
        store[""] = "x"
    with pytest.raises(ValueError, match="NUL"):
        store["a\x00b"] = "x"
    store.discard()
    assert store.commit() == 4  # nothing pending: nothing appended
    history = store.history("color")
    assert [(c.op, c.value, c.seq_num) for c in history] == [
        ("put", "blue", 0),
        ("delete", None, 2),
    ]
    tail = sync_client.check_tail(DEFAULT_BASIN, "kv/settings")
    assert tail.seq_num == 4


def test_a_commit_too_large_for_one_append_is_refused_whole(sync_client: SyncClient) -> None:
    store = sync_client.get_kv_store("big")
    for i in range(1001):
        store[f"k{i}"] = "v"
    with pytest.raises(S2SError) as caught:
        store.commit()
    assert caught.value.code == "invalid" and "at most 1000 changes" in caught.value.message
    assert len(store.pending) == 1001 and sync_client.get_kv_store("big").revision == 0


def test_a_store_in_a_basin_of_ones_own(sync_client: SyncClient) -> None:
    with pytest.raises(S2SError) as caught:
        store = sync_client.get_kv_store("s", basin="absent-basin")
        store["k"] = "v"
        store.commit()
    assert caught.value.code == "basin_not_found"
    sync_client.create_basin("my-basin-1")
    store = sync_client.get_kv_store("s", basin="my-basin-1")
    store["k"] = "v"
    assert store.commit() == 1
    assert dict(sync_client.get_kv_store("s", basin="my-basin-1")) == {"k": "v"}


ROUNDS = 5
COMMITTERS = 6


async def test_concurrent_committers_one_wins_per_round(client: S2SClient) -> None:
    """Each round every committer loads the same revision and commits at once: exactly one
    wins, the others get `KvConflict`, reload and retry until theirs lands. In the end every
    change is applied exactly once."""
    stores = [await client.get_kv_store("race") for _ in range(COMMITTERS)]
    first_wins: list[int] = []

    async def one_round(index: int, store: KvStore, round_: int, barrier: asyncio.Barrier) -> bool:
        await store.reload()
        await barrier.wait()
        store["count"] = str(int(store.get("count", "0")) + 1)
        store[f"c{index}-r{round_}"] = "done"
        try:
            await store.commit()
        except KvConflict as conflict:
            assert conflict.revision == store.revision
            while True:  # reload and make the change again until it lands
                await store.reload()
                store["count"] = str(int(store.get("count", "0")) + 1)
                store[f"c{index}-r{round_}"] = "done"
                try:
                    await store.commit()
                    return False
                except KvConflict:
                    continue
        return True

    for round_ in range(ROUNDS):
        barrier = asyncio.Barrier(COMMITTERS)
        won = await asyncio.gather(
            *(one_round(i, store, round_, barrier) for i, store in enumerate(stores))
        )
        first_wins.append(sum(won))
    assert first_wins == [1] * ROUNDS
    final = await client.get_kv_store("race")
    assert final["count"] == str(ROUNDS * COMMITTERS)
    assert sorted(k for k in final if k != "count") == sorted(
        f"c{i}-r{r}" for i in range(COMMITTERS) for r in range(ROUNDS)
    )


async def test_watch_follows_commits_live(client: S2SClient) -> None:
    store = await client.get_kv_store("watched")
    store["before"] = "1"
    await store.commit()
    watcher = await client.get_kv_store("watched")
    seen: list[KvChange] = []

    async def watch() -> None:
        async for change in watcher.watch():
            seen.append(change)
            if len(seen) == 3:
                return

    task = asyncio.create_task(watch())
    await asyncio.sleep(0.3)
    store["a"] = "x"
    await store.commit()
    del store["before"]
    store["a"] = "y"
    await store.commit()
    await asyncio.wait_for(task, 10)
    assert [(c.op, c.key, c.value) for c in seen] == [
        ("put", "a", "x"),
        ("delete", "before", None),
        ("put", "a", "y"),
    ]
    assert [c.seq_num for c in seen] == [1, 2, 3]
    assert dict(watcher) == {"before": "1"}  # the store itself changes on reload only
    await watcher.reload()
    assert dict(watcher) == {"a": "y"}


def test_sync_watch_of_a_store_with_no_commits_yet(sync_client: SyncClient) -> None:
    store = sync_client.get_kv_store("sync-watched")
    changes = store.watch()
    writer = sync_client.get_kv_store("sync-watched")
    writer["k"] = "1"
    writer.commit()
    writer["k"] = "2"
    writer.commit()
    seen = [next(changes), next(changes)]
    assert [(c.op, c.key, c.value, c.seq_num) for c in seen] == [
        ("put", "k", "1", 0),
        ("put", "k", "2", 1),
    ]
    changes.close()  # type: ignore[attr-defined]


def test_repr_is_bounded(sync_client: SyncClient) -> None:
    store = sync_client.get_kv_store("wide")
    for i in range(60):
        store[f"k{i:02}"] = "x" * 1000
    text = repr(store)
    assert text.startswith("KvStore(kv-stores/wide, revision 0, 60 pending: {'k00': 'xxx")
    assert "... (1000 characters)" in text and text.endswith(", ... and 10 more})")
    assert len(text) < 60 * 150


async def test_watch_of_a_store_that_does_not_exist_yet(client: S2SClient) -> None:
    watcher = await client.get_kv_store("not-yet")
    changes = watcher.watch()
    first = asyncio.ensure_future(anext(changes))
    await asyncio.sleep(0.5)  # the watcher made the stream and waits at its tail
    assert not first.done()
    store = await client.get_kv_store("not-yet")
    store["k"] = "v"
    await store.commit()
    change = await asyncio.wait_for(first, 10)
    assert (change.op, change.key, change.value, change.seq_num) == ("put", "k", "v", 0)
    await changes.aclose()  # type: ignore[attr-defined]
