"""Every lake transaction commits only after the data files it wrote are durable.

DuckDB writes a DuckLake table's Parquet files (and delete files) during the transaction but
never syncs them, while the catalog's commit is synced. A power loss between the two leaves a
catalog that names files which are missing or torn: the table can no longer be read, and the
materialization checkpoint committed with them has moved past the records whose rows are gone,
so "exactly once" becomes "never". `transaction` therefore syncs whatever the transaction
added under the lake's data path (the files, and the directories that gained entries) before
its COMMIT. A directory is listed again only when its mtime moved or is recent (mtimes are
coarse: a directory changed within the same tick as the last listing would look unchanged),
and only its new names are looked at. Measured here (`os.listdir` of a directory of 10,000
files, the machine loaded): 6 to 13 ms, against the tens to hundreds of milliseconds of a
DuckLake commit; maintenance keeps table directories far smaller.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from server.durable_file import sync_directory

RECENT_NS = 2_000_000_000
"""A directory whose mtime is this recent is listed again whether or not it moved."""


@dataclass
class _Listing:
    mtime_ns: int
    files: set[str] = field(default_factory=set)
    subdirectories: set[str] = field(default_factory=set)


class DataFiles:
    """The files under a local data path, as last seen durable. For an object-store path
    (`s3://...`) there is nothing to do: an object is durable once its upload returns."""

    def __init__(self, data_path: str) -> None:
        self._root = None if "://" in data_path else os.path.abspath(data_path)
        self._listings: dict[str, _Listing] = {}
        self._lock = threading.Lock()
        self.transactions_committed = 0
        """Lake transactions committed through `transaction` (the writer reopens DuckDB after
        so many: reopen.py)."""
        # What is there at start-up was written by an earlier process: each of its
        # transactions synced its own files before committing, so they are only recorded.
        self._scan(sync=False)

    def sync_new(self) -> int:
        """Sync every file and directory entry added since the last call; returns how many
        files were synced."""
        return self._scan(sync=True)

    def _scan(self, sync: bool) -> int:
        if self._root is None:
            return 0
        with self._lock:
            synced = 0
            now = time.time_ns()
            pending = [self._root]
            while pending:
                directory = pending.pop()
                try:
                    mtime_ns = os.stat(directory).st_mtime_ns
                except FileNotFoundError:
                    self._listings.pop(directory, None)
                    continue
                known = self._listings.get(directory)
                if known is None or known.mtime_ns != mtime_ns or now - mtime_ns < RECENT_NS:
                    known, new_files, changed = self._list(directory, mtime_ns, known)
                    if sync and changed:
                        synced += self._sync(directory, new_files)
                pending.extend(os.path.join(directory, name) for name in known.subdirectories)
            return synced

    def _list(
        self, directory: str, mtime_ns: int, before: _Listing | None
    ) -> tuple[_Listing, list[str], bool]:
        """List `directory` again; returns the listing, the files new in it, and whether any
        name is new (a new subdirectory's entry is this directory's to sync). Only new names
        are looked at one by one (a table directory holds thousands of files)."""
        names = set(os.listdir(directory))
        before = before or _Listing(0)
        listing = _Listing(mtime_ns, before.files & names, before.subdirectories & names)
        added = names - listing.files - listing.subdirectories
        for name in added:
            path = os.path.join(directory, name)
            if os.path.isdir(path) and not os.path.islink(path):
                listing.subdirectories.add(name)
            else:
                listing.files.add(name)
        self._listings[directory] = listing
        return listing, sorted(added - listing.subdirectories), bool(added)

    @staticmethod
    def _sync(directory: str, files: list[str]) -> int:
        """fsync the new files, then the directory that names them; returns the files synced."""
        synced = 0
        for name in files:
            try:
                fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            except FileNotFoundError:
                continue  # written and removed again within the transaction
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            synced += 1
        sync_directory(Path(directory))
        return synced


class LakeConflict(Exception):
    """Another lake transaction committed first a change this one conflicts with (DuckLake
    detects it at COMMIT: both changed the same table), or the caller found that the state it
    started from had moved (`apply.py`'s checkpoint). Nothing of this transaction committed.
    With a catalog shared by several servers, their transactions can meet this way."""


@contextmanager
def transaction(cursor: duckdb.DuckDBPyConnection, files: DataFiles) -> Iterator[None]:
    """BEGIN; the caller's statements; the new data files synced; COMMIT (ROLLBACK on any
    error, the caller's included). A COMMIT refused for a conflict is `LakeConflict`."""
    cursor.execute("BEGIN")
    try:
        yield
        files.sync_new()
        cursor.execute("COMMIT")
        files.transactions_committed += 1
    except BaseException as error:
        # A COMMIT that DuckDB refused has ended the transaction already; ROLLBACK then says
        # there is none, which must not hide why the COMMIT failed.
        with contextlib.suppress(duckdb.TransactionException):
            cursor.execute("ROLLBACK")
        if isinstance(error, duckdb.TransactionException) and _is_conflict(error):
            raise LakeConflict(str(error).strip().splitlines()[-1]) from error
        raise


def _is_conflict(error: duckdb.TransactionException) -> bool:
    """DuckLake's refusal of a commit that conflicts with one made since the transaction
    began ("Transaction conflict - attempting to insert into table ... but another
    transaction has deleted ..."): it has no class of its own, only its message."""
    return "conflict" in str(error).lower()
