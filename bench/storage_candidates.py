"""Durable-commit throughput of the storage candidates, for docs/adr/0001-storage.md.

Each candidate commits batches of 1000 x 1 KiB records, one batch per durable commit, as one
value (LMDB, SQLite) or one appended write + fdatasync (raw file), and reads them back.

    .venv/bin/python bench/storage_candidates.py [--batches 300] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import struct
import tempfile
import time
from collections.abc import Callable

import lmdb

RECORD_BYTES = 1024
RECORDS_PER_BATCH = 1000
BATCH_BYTES = RECORD_BYTES * RECORDS_PER_BATCH


def bench_lmdb(path: str, batches: int, value: bytes) -> float:
    env = lmdb.open(path, map_size=1 << 40, sync=True, metasync=True)
    start = time.perf_counter()
    for i in range(batches):
        with env.begin(write=True) as txn:
            txn.put(struct.pack(">QQ", 1, i), value, append=True)
    elapsed = time.perf_counter() - start
    env.close()
    return elapsed


def bench_sqlite(path: str, batches: int, value: bytes) -> float:
    db = sqlite3.connect(os.path.join(path, "db"), isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE b (k INTEGER PRIMARY KEY, v BLOB)")
    start = time.perf_counter()
    for i in range(batches):
        db.execute("BEGIN")
        db.execute("INSERT INTO b VALUES (?, ?)", (i, value))
        db.execute("COMMIT")
    elapsed = time.perf_counter() - start
    db.close()
    return elapsed


def bench_raw_file(path: str, batches: int, value: bytes) -> float:
    fd = os.open(os.path.join(path, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    start = time.perf_counter()
    for _ in range(batches):
        os.write(fd, value)
        os.fdatasync(fd)
    elapsed = time.perf_counter() - start
    os.close(fd)
    return elapsed


CANDIDATES: dict[str, Callable[[str, int, bytes], float]] = {
    "lmdb": bench_lmdb,
    "sqlite-wal": bench_sqlite,
    "raw-file-fdatasync": bench_raw_file,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    value = os.urandom(BATCH_BYTES)
    for name, run in CANDIDATES.items():
        rates = []
        for _ in range(args.reps):
            path = tempfile.mkdtemp(prefix=f"s2s-bench-{name}-")
            try:
                elapsed = run(path, args.batches, value)
            finally:
                shutil.rmtree(path, ignore_errors=True)
            rates.append(args.batches * BATCH_BYTES / elapsed / 2**20)
        print(
            f"{name:20s} 1000 x 1 KiB per durable commit: median {statistics.median(rates):6.0f}"
            f" MiB/s (min {min(rates):.0f}, max {max(rates):.0f})"
        )


if __name__ == "__main__":
    main()
