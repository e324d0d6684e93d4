"""Power loss under LMDB: a crash that also drops every write not yet fsync'd.

The appender of the kill -9 tests floods a `StreamStore` whose data directory is on
`PowerLossFs` (tests/crash/powerloss_fs.py), a FUSE filesystem that keeps apart what was
written and what was synced. The test kills the appender, unmounts (the power goes), and
reopens the store on what was synced alone: every acknowledged batch must be there, whole,
where its ack said, with no partial batch and no reused sequence number (the kill -9 tests'
verifier). A planted bug, the same appender with LMDB's syncs off, must lose acknowledged
batches under the same power loss, which shows the layer really drops unsynced writes. The
same holds when a random half of the unsynced sectors and a random prefix of the unsynced
names reached the disk first (what writeback may have done), and for the files the server
writes itself (root token, certificate and key, server id), which a power loss must leave
whole and current once the server has started.
Root, /dev/fuse and libfuse 2 only (`make test` installs libfuse 2 on Debian); skipped with a
message elsewhere.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.crash.child import REPO_ROOT, run_and_kill
from tests.crash.lake_child import BATCHES, ROWS
from tests.crash.powerloss_mount import Mount, power_loss_mount, unavailable
from tests.crash.test_kill9 import Ack, Plans, run_child, verify
from tests.lake.conftest import LakeClient
from tests.server_process import ServerProcess

_UNAVAILABLE = unavailable()
pytestmark = pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or "")


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mount]:
    with power_loss_mount(tmp_path) as mounted:
        yield mounted


def _sigpipe_ignored() -> bool:
    """What the kernel says of this process: SigIgn in /proc/self/status is a hex bit mask."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGPIPE - 1) & 1)
    raise AssertionError("no SigIgn line in /proc/self/status")


def test_the_test_process_still_ignores_sigpipe_after_a_power_loss(mount: Mount) -> None:
    """libfuse leaves SIGPIPE at SIG_DFL when it stops: the pytest worker then died silently
    at a later test's write to a closed socket (`ignore_sigpipe_again`)."""
    assert _sigpipe_ignored()
    mount.power_loss()
    assert _sigpipe_ignored()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    mount.power_on()


@pytest.mark.parametrize("kill_after_s", [0.3, 1.0])
@pytest.mark.lmdb_only("power loss of the LMDB log's data directory (FUSE)")
def test_power_loss_loses_no_acknowledged_record(mount: Mount, kill_after_s: float) -> None:
    acks = run_child(mount.mount_point / "data", 1, kill_after_s, after_first_ack=True)
    mount.power_loss()
    assert acks and mount.fs is not None and mount.fs.synced_bytes > 0
    asyncio.run(verify(mount.durable / "data", list(acks), Plans(), probe_id=1))


@pytest.mark.lmdb_only("power loss of the LMDB log's data directory (FUSE)")
def test_a_server_acking_before_fsync_loses_records_at_power_loss(mount: Mount) -> None:
    acks: list[Ack] = run_child(
        mount.mount_point / "data", 1, 1.0, True, module="tests.crash.nosync_appender"
    )
    dropped = mount.power_loss()
    assert dropped > 0
    with pytest.raises(AssertionError):
        asyncio.run(verify(mount.durable / "data", list(acks), Plans(), probe_id=1))


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.lmdb_only("power loss of the LMDB log's data directory (FUSE)")
def test_power_loss_after_partial_writeback_loses_no_acknowledged_record(
    mount: Mount, seed: int
) -> None:
    acks = run_child(mount.mount_point / "data", 1, 0.5, after_first_ack=True)
    assert mount.fs is not None
    pending = mount.fs.pending_bytes()
    sectors, _ = mount.fs.persist_some(random.Random(seed))
    mount.power_loss()
    assert acks and pending > 0 and sectors > 0
    asyncio.run(verify(mount.durable / "data", list(acks), Plans(), probe_id=1))


SERVER_FILES = ("root.token", "tls/cert.pem", "tls/key.pem", "lake/server-id")


def test_the_servers_own_files_survive_power_loss(mount: Mount) -> None:
    data_dir = mount.mount_point / "data"
    server = ServerProcess(str(data_dir), auth=True, extra_args=["--tls-self-signed"]).start()
    written = {name: (data_dir / name).read_bytes() for name in SERVER_FILES}
    server.kill()
    mount.power_loss()
    durable = mount.durable / "data"
    lost = [
        name
        for name, content in written.items()
        if not (durable / name).exists() or (durable / name).read_bytes() != content
    ]
    assert lost == [], f"lost or changed at power loss: {lost}"
    assert (durable / "root.token").stat().st_mode & 0o777 == 0o600
    assert (durable / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600
    # The server started when the power comes back keeps its identity and its token.
    mount.power_on()
    restarted = ServerProcess(str(data_dir), auth=True, extra_args=["--tls-self-signed"]).start()
    try:
        for name, content in written.items():
            assert (data_dir / name).read_bytes() == content, f"{name} replaced at restart"
    finally:
        restarted.stop()


@pytest.mark.parametrize("seed", [4, 5])
def test_the_lake_applies_every_acknowledged_row_exactly_once_across_power_loss(
    mount: Mount, seed: int
) -> None:
    """Ingest through `/v2/stream` into a materialized table while the power goes (after a
    random part of what was pending reached the disk): after the restart every acknowledged row
    is in the table, none twice, and nothing that was never sent."""
    data_dir = mount.mount_point / "data"
    args = ["--lake-linger-ms", "20"]
    server = ServerProcess(str(data_dir), extra_args=args).start()
    acked: list[int] = []
    with httpx.Client(base_url=server.http_url, timeout=30) as http:
        declared = http.post(
            "/v1/lake/materializations",
            json={"name": "t", "table": "bronze.t", "create_table": True},
        )
        assert declared.status_code == 201, declared.text
        deadline = time.monotonic() + 1.5
        batch = 0
        while time.monotonic() < deadline:
            ids = list(range(batch * 20, batch * 20 + 20))
            answer = http.post(
                "/v2/stream",
                json={"data": [{"id": i} for i in ids], "config": {"table": "bronze.t"}},
            )
            assert answer.status_code == 200 and answer.json()["success"], answer.text
            acked.extend(ids)
            batch += 1
    server.kill()
    assert mount.fs is not None
    mount.fs.persist_some(random.Random(seed))
    mount.power_loss()
    mount.power_on()
    restarted = ServerProcess(str(data_dir), extra_args=args).start()
    try:
        lake = LakeClient(restarted.http_url)
        try:
            lake.caught_up("t")
            ids = [row[0] for row in lake.rows("SELECT id FROM bronze.t")]
        finally:
            lake.close()
        assert len(ids) == len(set(ids)), "a row was applied twice"
        assert set(acked) <= set(ids), f"acknowledged rows lost: {len(set(acked) - set(ids))}"
        assert set(ids) <= set(range(batch * 20)), "a row that was never sent"
        assert "Traceback" not in "".join(restarted.log)
    finally:
        restarted.stop()


def test_lake_maintenance_keeps_every_row_across_power_loss(mount: Mount) -> None:
    """Merging a table's files writes a new file and drops the old ones from the catalog: a
    power loss after that commit must find the new file whole (the old ones are deleted)."""
    root = mount.mount_point / "lake"
    killed = run_and_kill(
        "tests.crash.lake_child", ["write", str(root)], mount.root / "child.stderr", 0.0, "DONE", 60
    )
    assert "DONE" in killed.lines, killed.stderr
    assert mount.fs is not None
    mount.fs.persist_some(random.Random(6))
    mount.power_loss()
    mount.power_on()
    counted = subprocess.run(
        [sys.executable, "-m", "tests.crash.lake_child", "count", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    total = BATCHES * ROWS
    assert counted.stdout.split() == ["COUNT", str(total), str(total)], counted.stderr
