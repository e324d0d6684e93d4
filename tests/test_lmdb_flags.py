"""The stream log's LMDB environment is opened with the flags our durability relies on.

docs/adr/0001-storage.md ("What LMDB guarantees") states them: synchronous commits (no
`MDB_NOSYNC`), a synchronous meta page (no `MDB_NOMETASYNC`, written through a descriptor opened
with `O_DSYNC`), no `MDB_MAPASYNC` and no `MDB_WRITEMAP` (pages are written with `write`, so a
stray write into the map cannot corrupt the file). Each is read back from the open environment
and, for the meta page's descriptor, from the kernel.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from server.storage.kv import LmdbStore

pytestmark = pytest.mark.lmdb_only("LMDB's environment flags and file descriptors")


def test_the_log_is_opened_with_synchronous_data_and_meta_flushes(tmp_path: Path) -> None:
    store = LmdbStore(str(tmp_path / "log"))
    try:
        flags = store.env_flags()
        assert flags["sync"] is True, "MDB_NOSYNC would acknowledge commits before fsync"
        assert flags["metasync"] is True, "MDB_NOMETASYNC would leave the meta page unsynced"
        assert flags["map_async"] is False
        assert flags["writemap"] is False
        assert flags["readonly"] is False
    finally:
        store.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc (Linux only)")
def test_the_meta_page_is_written_through_an_o_dsync_descriptor(tmp_path: Path) -> None:
    store = LmdbStore(str(tmp_path / "log"))
    try:
        data_file = os.path.realpath(tmp_path / "log" / "data.mdb")
        open_flags = [
            _open_flags(int(fd))
            for fd in os.listdir("/proc/self/fd")
            if os.path.realpath(f"/proc/self/fd/{fd}") == data_file
        ]
    finally:
        store.close()
    # One descriptor for the data pages (flushed by fdatasync), one for the meta page.
    assert sorted(bool(flags & os.O_DSYNC) for flags in open_flags) == [False, True]


def _open_flags(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == "flags":
            return int(value.strip(), 8)
    raise AssertionError(f"no flags for descriptor {fd}")
