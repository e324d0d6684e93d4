"""`s2s kv` against a real server: each action, its --json form, and usage errors."""

from __future__ import annotations

import base64
import json
import queue
import subprocess
import sys
import threading

from tests.server_process import REPO, ServerProcess

S2S_KV = (sys.executable, "-m", "server.cli", "kv")
BASINS_CREATE = (sys.executable, "-m", "server.cli", "basins", "create")


def s2s(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*S2S_KV, *args, "--server", server.target],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )


def test_put_get_ls_del_history(server: ServerProcess) -> None:
    put = s2s(server, "put", "settings", "color", "blue")
    assert (put.returncode, put.stdout) == (0, "put color in settings, revision 1\n"), put.stderr
    assert s2s(server, "put", "settings", "size", "10 px").returncode == 0
    assert s2s(server, "get", "settings", "color").stdout == "blue\n"
    got = json.loads(s2s(server, "get", "settings", "size", "--json").stdout)
    assert got == {
        "key": "size",
        "value": "10 px",
        "seq_num": 1,
        "timestamp": got["timestamp"],
        "revision": 2,
    }
    assert s2s(server, "ls", "settings").stdout == "color\nsize\n"
    assert s2s(server, "ls", "settings", "--values").stdout == "color\tblue\nsize\t10 px\n"
    assert s2s(server, "ls", "settings", "--prefix", "si").stdout == "size\n"
    listed = [
        json.loads(line) for line in s2s(server, "ls", "settings", "--json").stdout.splitlines()
    ]
    assert listed == [{"key": "color", "seq_num": 0}, {"key": "size", "seq_num": 1}]
    deleted = s2s(server, "del", "settings", "color", "--json")
    assert json.loads(deleted.stdout) == {"key": "color", "revision": 3}
    absent = s2s(server, "del", "settings", "color")
    assert absent.returncode == 1 and absent.stderr.startswith("error: key_not_found")
    missing = s2s(server, "get", "settings", "color")
    assert missing.returncode == 1 and "no key 'color'" in missing.stderr
    history = s2s(server, "history", "settings", "color").stdout
    assert history == "put color blue\ndel color\n"
    assert s2s(server, "ls", "empty").stdout == ""
    s2s(server, "put", "elsewhere", "k", "v", "--basin", "no-such-basin")
    other = s2s(server, "get", "elsewhere", "k", "--basin", "no-such-basin")
    assert other.returncode == 1 and other.stderr.startswith("error: key_not_found")


def test_usage_errors_exit_2(server: ServerProcess) -> None:
    for args, message in [
        (("get", "settings"), "needs a key"),
        (("put", "settings", "k"), "needs a value"),
        (("ls", "settings", "k"), "takes no key"),
        (("get", "settings", "k", "v"), "only kv put takes a value"),
        (("get", "settings", "k", "--prefix", "x"), "--prefix goes with kv ls"),
        (("get", "a/b", "k"), "store name"),
        (("put", "settings", "", "v"), "1-1024 bytes"),
        (("nope", "settings"), "invalid choice"),
    ]:
        result = s2s(server, *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)


def test_watch_prints_changes_live(server: ServerProcess) -> None:
    s2s(server, "put", "live", "a", "1")
    watcher = subprocess.Popen(
        [*S2S_KV, "watch", "live", "--json", "--server", server.target],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    lines: queue.Queue[str] = queue.Queue()
    output = watcher.stdout
    assert output is not None

    def forward() -> None:
        for line in output:
            lines.put(line)

    threading.Thread(target=forward, daemon=True).start()
    try:
        # Put until the watcher, which takes a moment to start, prints the change.
        for attempt in range(100):
            assert s2s(server, "put", "live", "b", str(attempt)).returncode == 0
            try:
                first = json.loads(lines.get(timeout=0.3))
                break
            except queue.Empty:
                continue
        assert (first["op"], first["key"]) == ("put", "b")
        s2s(server, "del", "live", "a")
        while (change := json.loads(lines.get(timeout=10)))["op"] == "put":
            assert change["key"] == "b"
        assert (change["op"], change["key"], change["value"]) == ("delete", "a", None)
    finally:
        watcher.terminate()
        watcher.wait(10)


def test_a_store_in_an_encrypted_basin_takes_its_key(server: ServerProcess) -> None:
    key = base64.b64encode(bytes(range(32))).decode()
    made = subprocess.run(
        [
            *BASINS_CREATE,
            "kv-cli-sealed",
            "--stream-cipher",
            "aegis-256",
            "--server",
            server.target,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    put = s2s(
        server, "put", "secrets", "pin", "1234", "--basin", "kv-cli-sealed", "--encryption-key", key
    )
    assert put.returncode == 0, put.stderr
    got = s2s(server, "get", "secrets", "pin", "--basin", "kv-cli-sealed", "--encryption-key", key)
    assert (got.returncode, got.stdout) == (0, "1234\n"), got.stderr
    refused = s2s(server, "get", "secrets", "pin", "--basin", "kv-cli-sealed")
    assert refused.returncode == 1 and "missing encryption key" in refused.stderr
