"""Cuts the embedded lake catalog's write-ahead log back to its last whole entry when a power
loss tore its tail, so that the server starts again on its own.

DuckDB writes each WAL entry as `[size: 8 bytes][checksum: 8 bytes][data]` and syncs the
WAL at every commit. After a power loss, the part written since the last sync may come back
short (DuckDB cuts that off itself) or with holes: sectors written back out of order, the
rest read as zeros. DuckDB refuses a WAL with an entry that fails its checksum, so one such
hole kept the lake, and with it `s2s serve`, from starting until someone deleted the WAL by
hand.

Why cutting there loses nothing that was acknowledged: every commit syncs the whole WAL, so
had any commit at or after the failing entry finished, that entry would be whole on disk.
Every byte from it on belongs to commits that never finished, and a lake commit is
acknowledged (an ingest's `wait`, a materialization's checkpoint) only once it finished.
PostgreSQL's recovery stops at its WAL's first invalid record for the same reason. The
bytes cut are kept beside the WAL, synced, in `catalog.ducklake.wal.torn-at-OFFSET-TIME`:
nothing in the file tells a power loss from a failing disk, and an operator may want to
look.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from server.durable_file import sync_directory

log = logging.getLogger("s2s.lake")

ENTRY_HEADER_BYTES = 16
"""An entry's size and checksum, before its data: DuckDB reports the offset of the data."""

_CHECKSUM_FAILURE = re.compile(
    r'Failure while replaying WAL file "(?P<path>[^"]+)": Corrupt WAL file: entry at byte '
    r"position (?P<offset>\d+) computed checksum \d+ does not match stored checksum \d+"
)


def cut_torn_wal(catalog: Path, error: Exception) -> bool:
    """If `error` is DuckDB refusing `catalog`'s own WAL for an entry that fails its checksum,
    keep the bytes from that entry on beside the WAL, cut the WAL there, durably, and return
    True. Otherwise change nothing and return False."""
    match = _CHECKSUM_FAILURE.search(str(error))
    wal = Path(str(catalog) + ".wal")
    if match is None or not wal.exists() or not os.path.samefile(match["path"], wal):
        return False
    cut_at = int(match["offset"]) - ENTRY_HEADER_BYTES
    size = wal.stat().st_size
    if not 0 <= cut_at < size:
        return False
    kept = wal.with_name(f"{wal.name}.torn-at-{cut_at}-{time.strftime('%Y%m%dT%H%M%S')}")
    with wal.open("r+b") as file:
        file.seek(cut_at)
        torn = file.read()
        with kept.open("xb") as copy:
            copy.write(torn)
            copy.flush()
            os.fsync(copy.fileno())
        sync_directory(wal.parent)
        file.truncate(cut_at)
        file.flush()
        os.fsync(file.fileno())
    log.warning(
        "the lake catalog's WAL had a torn tail (a power loss during a commit that was never "
        "acknowledged): cut %d bytes at offset %d of %s, kept in %s",
        len(torn),
        cut_at,
        wal,
        kept,
    )
    return True
