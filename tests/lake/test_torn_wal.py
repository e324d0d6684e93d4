"""A power loss during a lake commit can leave the embedded catalog's WAL with a torn tail:
zeros where the last sectors should be, or an entry whose data never reached the disk. DuckDB
refuses such a WAL; the server cuts it back to its last whole entry (server/lake/torn_wal.py),
keeps the cut bytes beside it, and starts. The stream stays the truth: every ingested row is
in the table once, the cut commits' rows applied again from their checkpoints."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from server.lake.torn_wal import cut_torn_wal
from tests.lake.conftest import LakeClient
from tests.server_process import ServerProcess

TABLE = "bronze.t"
ROWS = 200
REQUESTS = 10


def _zero_the_last_sectors(wal: Path) -> None:
    """The final commit's last sectors never reached the disk."""
    size = wal.stat().st_size
    with wal.open("r+b") as file:
        file.seek(size - 512)
        file.write(bytes(512))


def _append_a_hole(wal: Path) -> None:
    """An entry's header reached the disk and its data did not, then a later sector did."""
    with wal.open("ab") as file:
        file.write(struct.pack("<QQ", 256, 0x5EED) + bytes(256) + b"\x01" * 512)


@pytest.mark.parametrize("tear", [_zero_the_last_sectors, _append_a_hole])
def test_a_torn_catalog_wal_is_cut_and_every_row_lands_once(
    tmp_path: Path, tear: Callable[[Path], None]
) -> None:
    data_dir = tmp_path / "data"
    args = ["--lake-linger-ms", "20"]
    server = ServerProcess(str(data_dir), extra_args=args).start()
    lake = LakeClient(server.http_url)
    try:
        lake.declare(TABLE)
        per_request = ROWS // REQUESTS
        for request in range(REQUESTS):
            lake.ingest_ok(TABLE, [{"id": request * per_request + i} for i in range(per_request)])
    finally:
        lake.close()
        server.kill()
    wal = data_dir / "lake" / "catalog.ducklake.wal"
    assert wal.stat().st_size > 512, "the commits should still be in the WAL"
    tear(wal)

    restarted = ServerProcess(str(data_dir), extra_args=args).start()
    lake = LakeClient(restarted.http_url)
    try:
        log = "".join(restarted.log)
        assert "the lake catalog's WAL had a torn tail" in log, log
        kept = list(wal.parent.glob("catalog.ducklake.wal.torn-at-*"))
        assert len(kept) == 1 and kept[0].stat().st_size > 0, kept
        lake.caught_up(TABLE)
        ids = sorted(row[0] for row in lake.rows(f"SELECT id FROM {TABLE}"))
        assert ids == list(range(ROWS))
        assert "Traceback" not in "".join(restarted.log)
    finally:
        lake.close()
        restarted.stop()


def test_only_a_checksum_failure_of_the_catalogs_own_wal_is_cut(tmp_path: Path) -> None:
    """Another error, another file's WAL or an offset outside the file: nothing is cut."""
    catalog = tmp_path / "catalog.ducklake"
    wal = tmp_path / "catalog.ducklake.wal"
    wal.write_bytes(bytes(range(256)) * 4)
    other = tmp_path / "other.ducklake.wal"
    other.write_bytes(bytes(1024))

    def refusal(path: Path, offset: int) -> Exception:
        return Exception(
            f'Failure while replaying WAL file "{path}": Corrupt WAL file: entry at byte '
            f"position {offset} computed checksum 5381 does not match stored checksum 0"
        )

    assert not cut_torn_wal(catalog, Exception("IO Error: Could not set lock on file"))
    assert not cut_torn_wal(catalog, refusal(other, 512))
    assert not cut_torn_wal(catalog, refusal(wal, 4096))
    assert wal.read_bytes() == bytes(range(256)) * 4
    assert not list(tmp_path.glob("*.torn-at-*"))
    assert cut_torn_wal(catalog, refusal(wal, 528))
    assert wal.read_bytes() == (bytes(range(256)) * 4)[:512]
    [kept] = tmp_path.glob("catalog.ducklake.wal.torn-at-512-*")
    assert kept.read_bytes() == (bytes(range(256)) * 4)[512:]
