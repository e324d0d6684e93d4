"""`s2s migrate`: a real server's LMDB data directory copied into a real PostgreSQL (durable:
fsync on), then served from it by `s2s serve --storage postgres:...` on the same data
directory, as docs/deploy.md says. Through the API: every stream's records are byte-identical
(sequence numbers, timestamps, headers, bodies; an encrypted stream opens with its key), tails,
configs and stream listings are equal, the fencing token is still enforced (gRPC and HTTP 412),
the trim point still hides what it trimmed, the root token and an issued scoped token still
work (and the scoped one is still limited), a materialization resumes from its checkpoint
(every row once). A server on another data directory holding only the copied `root.token`
keeps the root token. Refusals (exit 2, one line, nothing written): a server running on the
source, a target that holds s2s data, a directory that is no s2s data directory; an
unreachable database is one line and exit 1. A copy that loses rows is caught by the
verification (exit 1, the key spaces named)."""

from __future__ import annotations

import io
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from client import FencingTokenMismatchError, S2SClient, S2SError
from s2s.config import BasinConfig, StreamConfig
from s2s.records import fence_record, trim_record
from s2s.v1 import access_pb2 as apb
from s2s.v1 import control_pb2 as cpb
from s2s.v1 import records_pb2 as pb
from server.migrate import migrate
from server.storage.kv import LmdbStore, Put, Table, Write
from server.storage.postgres import PostgresStore, table_name
from tests.postgres import PostgresServer, running_postgres
from tests.server_process import SOURCE_TREE_S2S, ServerProcess

pytestmark = [
    pytest.mark.xdist_group("migrate"),  # one PostgreSQL for the module
    pytest.mark.lmdb_only("migrates a server's LMDB data directory"),
]

PLAIN = "mig-plain"
SEALED = "mig-sealed"
KEY = bytes(range(32))
FENCE = "writer-1"
LAKE_TABLE = "bronze.events"
STREAMS = [(PLAIN, "events"), (PLAIN, "bulk"), (PLAIN, "fenced"), (PLAIN, "trimmed")]
SEALED_STREAM = (SEALED, "vault")
READER = apb.AccessTokenInfo(
    id="reader-1",
    scope=apb.AccessTokenScope(
        basins=apb.ResourceSet(exact=PLAIN),
        streams=apb.ResourceSet(prefix=""),
        op_groups=apb.PermittedOperationGroups(stream=apb.ReadWritePermissions(read=True)),
    ),
)


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with running_postgres(dbname="s2s_migrated", durable=True) as server:
        yield server


def _migrate(source: Path, conninfo: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SOURCE_TREE_S2S, "migrate", "--from", str(source), "--to", f"postgres:{conninfo}", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _assert_refused(result: subprocess.CompletedProcess[str], reason: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("error: refused, nothing written: "), result.stderr
    assert reason in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stdout == ""


def _database(postgres: PostgresServer, dbname: str) -> str:
    postgres.psql(f'CREATE DATABASE "{dbname}"', dbname="postgres")
    return postgres.libpq().replace(f"dbname={postgres.dbname}", f"dbname={dbname}")


def _fingerprint(postgres: PostgresServer) -> str:
    """Every key space's rows in the migrated database, hashed by PostgreSQL itself."""
    return postgres.psql(
        " UNION ALL ".join(
            f"SELECT '{table_name(t)}', count(*), md5(string_agg(key || value, '' ORDER BY key)) "
            f"FROM {table_name(t)}"
            for t in Table
        )
    )


@dataclass
class Seen:
    """What the API shows of everything the test wrote."""

    basins: cpb.ListBasinsResponse
    streams: list[cpb.ListStreamsResponse]
    configs: list[object]
    records: dict[tuple[str, str], list[tuple[int, int, list[tuple[bytes, bytes]], bytes]]]
    tails: dict[tuple[str, str], tuple[int, int]]
    tokens: list[str]


async def _records(
    client: S2SClient, basin: str, name: str, key: bytes | None = None
) -> list[tuple[int, int, list[tuple[bytes, bytes]], bytes]]:
    stream = client.stream(basin, name, encryption_key=key)
    tail = (await stream.check_tail()).seq_num
    records: list[tuple[int, int, list[tuple[bytes, bytes]], bytes]] = []
    next_seq = 0
    while next_seq < tail:
        batch = await stream.read(seq_num=next_seq)
        for record in batch.records:
            headers = [(h.name, h.value) for h in record.headers]
            records.append((record.seq_num, record.timestamp, headers, record.body))
        next_seq = records[-1][0] + 1
    return records


async def _seen(client: S2SClient) -> Seen:
    everything = [*STREAMS, SEALED_STREAM]
    records = {
        (basin, name): await _records(client, basin, name, KEY if basin == SEALED else None)
        for basin, name in everything
    }
    tails = {}
    for basin, name in everything:
        tail = await client.stream(basin, name).check_tail()
        tails[(basin, name)] = (tail.seq_num, tail.timestamp)
    configs: list[object] = [await client.get_basin_config(b) for b in (PLAIN, SEALED)]
    configs += [await client.get_stream_config(b, s) for b, s in everything]
    tokens = (await client.list_access_tokens()).access_tokens
    return Seen(
        basins=await client.list_basins(),
        streams=[await client.list_streams(b) for b in (PLAIN, SEALED)],
        configs=configs,
        records=records,
        tails=tails,
        tokens=sorted(t.id for t in tokens),
    )


async def _write(client: S2SClient) -> str:
    """Basins, streams and records of every kind; returns the scoped token's secret."""
    now_ms = int(time.time() * 1000)
    await client.create_basin(
        PLAIN, BasinConfig(StreamConfig(retention="infinite"), create_stream_on_append=True)
    )
    await client.create_basin(SEALED, BasinConfig(stream_cipher="aegis-256"))
    await client.create_stream(PLAIN, "events", StreamConfig(timestamping_mode="client-require"))
    await client.create_stream(PLAIN, "bulk", StreamConfig(storage_class="standard"))
    await client.create_stream(PLAIN, "trimmed", StreamConfig(delete_on_empty_min_age_secs=3600))
    await client.create_stream(*SEALED_STREAM)
    events = client.stream(PLAIN, "events")
    for batch in range(20):
        await events.append(
            [
                pb.AppendRecord(
                    timestamp=now_ms - 10_000 + batch * 10 + i,
                    headers=[
                        pb.Header(name=b"n", value=b"%d" % i),
                        pb.Header(name=b"empty", value=b""),
                    ],
                    body=bytes([batch, i, 0, 255]) * (i + 1),
                )
                for i in range(7)
            ]
        )
    # Three batches of 800 KiB: the copy at --transaction-mib 1 takes several transactions.
    bulk = client.stream(PLAIN, "bulk")
    for batch in range(3):
        await bulk.append([bytes([batch, i]) * 51_200 for i in range(8)])
    fenced = client.stream(PLAIN, "fenced")  # created on append
    await fenced.append([b"before the fence"])
    await fenced.append([fence_record(FENCE)])
    await fenced.append([b"fenced one", b"fenced two"], fencing_token=FENCE)
    trimmed = client.stream(PLAIN, "trimmed")
    for i in range(10):
        await trimmed.append([b"t%d" % i, b"u%d" % i])
    await trimmed.append([trim_record(12)])
    sealed = client.stream(*SEALED_STREAM, encryption_key=KEY)
    await sealed.append(
        [pb.AppendRecord(body=b"secret", headers=[pb.Header(name=b"h", value=b"v")])]
    )
    await sealed.append([b"secret two", b"secret three"])
    await client.create_materialization("events", LAKE_TABLE, create_table=True)
    return await client.issue_access_token(READER)


def _ingest(http_url: str, token: str, ids: list[int]) -> None:
    with httpx.Client(base_url=http_url, timeout=30) as http:
        response = http.post(
            "/v2/stream",
            json={"data": [{"id": i} for i in ids], "config": {"table": LAKE_TABLE, "wait": True}},
            headers={"authorization": f"Bearer {token}"},
        )
        assert response.status_code == 200, response.text


async def _lake_ids(client: S2SClient) -> list[int]:
    result = await client.sql(f"SELECT id FROM {LAKE_TABLE} ORDER BY id")
    ids: list[int] = result.table.column("id").to_pylist()
    return ids


async def test_a_migrated_database_serves_exactly_what_the_data_directory_held(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    lmdb_server = ServerProcess(str(source), auth=True).start()
    try:
        root = lmdb_server.root_token
        async with S2SClient(lmdb_server.target, access_token=root) as client:
            reader = await _write(client)
            _ingest(lmdb_server.http_url, root, [1, 2])
            before = await _seen(client)
        # While the server runs, its data directory is refused, and the target untouched.
        untouched = _database(postgres, "untouched")
        _assert_refused(
            _migrate(source, untouched), f"in use by a running s2s server (pid {lmdb_server.pid})"
        )
        tables = postgres.psql(
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 's2s%'", dbname="untouched"
        )
        assert tables == "0"
    finally:
        assert lmdb_server.stop() == 0
    assert before.records[(PLAIN, "trimmed")][0][0] == 12  # the trim hides 0-11

    migrated = _migrate(source, postgres.libpq(), "--transaction-mib", "1")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    lines = migrated.stdout.splitlines()
    assert [line.split()[0] for line in lines[:-1]] == [t.value.decode() for t in Table]
    assert all(line.endswith("  match") for line in lines[:-1]), migrated.stdout
    assert lines[-1] == f"verdict: match: all {len(Table)} key spaces copied exactly"
    copied = next(line for line in migrated.stderr.splitlines() if "copied batches:" in line)
    assert int(copied.split(" in ")[1].split()[0]) >= 3, copied  # 2.4 MiB at 1 MiB each
    assert "Traceback" not in migrated.stderr

    # On the same data directory, as docs/deploy.md says: root.token and lake/ stay in place.
    storage = ["--storage", f"postgres:{postgres.libpq()}"]
    pg_server = ServerProcess(str(source), auth=True, extra_args=storage).start()
    try:
        assert pg_server.root_token == root
        async with S2SClient(pg_server.target, access_token=root) as client:
            after = await _seen(client)
            assert after == before
            fenced = client.stream(PLAIN, "fenced")
            with pytest.raises(FencingTokenMismatchError) as mismatch:
                await fenced.append([b"intruder"], fencing_token="writer-0")
            assert mismatch.value.current_token == FENCE
            ack = await fenced.append([b"fenced three"], fencing_token=FENCE)
            assert ack.start.seq_num == before.tails[(PLAIN, "fenced")][0]
            assert (await client.stream(PLAIN, "trimmed").read(seq_num=0)).records[0].seq_num == 12
            # The lake resumes from its checkpoint: every row once, the new one too.
            assert await _lake_ids(client) == [1, 2]
            _ingest(pg_server.http_url, root, [3])
            assert await _lake_ids(client) == [1, 2, 3]
        with httpx.Client(base_url=pg_server.http_url, timeout=30) as http:
            headers = {"s2-basin": PLAIN, "authorization": f"Bearer {root}"}
            refused = http.post(
                "/v1/streams/fenced/records",
                json={"records": [{"body": "x"}], "fencing_token": "writer-0"},
                headers=headers,
            )
            assert (refused.status_code, refused.json()) == (412, {"fencing_token_mismatch": FENCE})
        async with S2SClient(pg_server.target, access_token=reader) as scoped:
            events = await scoped.stream(PLAIN, "events").read(seq_num=0)
            assert len(events.records) == 140
            with pytest.raises(S2SError) as denied:
                await scoped.stream(PLAIN, "events").append([b"no"])
            assert denied.value.code == "permission_denied"
    finally:
        assert pg_server.stop() == 0
    assert "Traceback" not in "".join(pg_server.log)

    # On another data directory, the copied root.token keeps the root token (a server that
    # found none would make a new secret).
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(source / "root.token", elsewhere / "root.token")
    moved_server = ServerProcess(str(elsewhere), auth=True, extra_args=storage).start()
    try:
        async with S2SClient(moved_server.target, access_token=root) as client:
            assert (await client.list_basins()).basins == before.basins.basins
        assert moved_server.root_token == root
    finally:
        assert moved_server.stop() == 0

    # Once it holds s2s data, the database is refused as a target, and left as it is.
    fingerprint = _fingerprint(postgres)
    _assert_refused(_migrate(source, postgres.libpq()), "already holds s2s data")
    assert _fingerprint(postgres) == fingerprint

    # An unreachable database is a failure in one line, not a refusal.
    unreachable = _migrate(source, "host=127.0.0.1 port=1 connect_timeout=2")
    assert unreachable.returncode == 1, unreachable.stderr
    assert unreachable.stderr.startswith("error: cannot connect to PostgreSQL"), unreachable.stderr
    assert "--to" in unreachable.stderr and len(unreachable.stderr.strip().splitlines()) == 1


def test_what_is_no_s2s_data_directory_is_refused(tmp_path: Path) -> None:
    nowhere = "host=127.0.0.1 port=1 connect_timeout=2"
    _assert_refused(_migrate(tmp_path / "missing", nowhere), "is not a directory")
    _assert_refused(_migrate(tmp_path, nowhere), "is not an s2s data directory")
    (tmp_path / "log").mkdir()
    (tmp_path / "log" / "data.mdb").write_bytes(b"not lmdb" * 1000)
    _assert_refused(_migrate(tmp_path, nowhere), "log/data.mdb is not an LMDB file")


def test_a_copy_that_loses_rows_is_caught(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A planted bug: every transaction of the copy drops its last row."""
    log = LmdbStore(str(tmp_path / "log"))
    log.commit(
        [Put(Table.BASINS, b"basin", b"config"), Put(Table.TAILS, b"tail", b"")]
        + [Put(Table.BATCHES, b"batch-%03d" % i, bytes(i)) for i in range(50)]
    )
    log.close()
    commit = PostgresStore.commit

    def lossy(self: PostgresStore, writes: Sequence[Write]) -> None:
        commit(self, writes[:-1])

    monkeypatch.setattr(PostgresStore, "commit", lossy)
    out, err = io.StringIO(), io.StringIO()
    target = "postgres:" + _database(postgres, "lossy")
    assert migrate(str(tmp_path), target, 1 << 20, out, err) == 1, err.getvalue()
    lines = out.getvalue().splitlines()
    assert [line.split()[0] for line in lines if " MISMATCH: " in line] == [
        "basins",
        "tails",
        "batches",
    ]
    assert "lmdb 50 keys" in lines[3] and "postgres 49 keys" in lines[3], lines[3]
    assert lines[-1].startswith("verdict: MISMATCH in basins, tails, batches: do not serve")
