"""`s2s serve` that dies (SIGKILL) between a commit and its acks, from outside.

Run as `python -m tests.crash.ack_lost_server serve ...` (what `ServerProcess` runs with
`command=ACK_LOST_SERVER`). It is the real server, except that once SIGUSR1 arms it, the first
commit that writes a producer's row (an idempotent batch) kills the process with SIGKILL on the
writer thread the moment the store returns: the commit is durable, and no ack of it was sent
(acks are handed to the event loop only after `commit` returns). It writes `ack loss armed` to
stderr when armed and `killed after commit` just before the kill. Either storage engine.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

import server.storage.choice
from server import cli
from server.storage.kv import LmdbStore, Put, Table, Write
from server.storage.postgres import PostgresStore

ACK_LOST_SERVER = (sys.executable, "-m", "tests.crash.ack_lost_server")
ARMED = "ack loss armed"
KILLED = "killed after commit"
_armed: list[bool] = []


def _killed_if_armed(writes: Sequence[Write]) -> None:
    if _armed and any(isinstance(w, Put) and w.table is Table.PRODUCERS for w in writes):
        _say(KILLED)
        os.kill(os.getpid(), signal.SIGKILL)


class _AckLostLmdbStore(LmdbStore):
    def commit(self, writes: Sequence[Write]) -> None:
        super().commit(writes)
        _killed_if_armed(writes)


class _AckLostPostgresStore(PostgresStore):
    def commit(self, writes: Sequence[Write]) -> None:
        super().commit(writes)
        _killed_if_armed(writes)


def _arm(signum: int, frame: FrameType | None) -> None:
    _armed.append(True)
    _say(ARMED)


def _say(line: str) -> None:
    # One unbuffered write: a signal handler must not reenter the buffered stderr mid-write.
    os.write(sys.stderr.fileno(), f"{line}\n".encode())


def install() -> None:
    """Arm on SIGUSR1, and make the server's stores kill it after an armed commit."""
    signal.signal(signal.SIGUSR1, _arm)
    # `open_key_value_store` builds the stores by these names; checked, since replacing a
    # name a module no longer uses would do nothing, silently.
    for name in ("LmdbStore", "PostgresStore"):
        if not isinstance(getattr(server.storage.choice, name, None), type):
            raise RuntimeError(f"server.storage.choice no longer builds a store by {name}")
    server.storage.choice.LmdbStore = _AckLostLmdbStore  # type: ignore[attr-defined]
    server.storage.choice.PostgresStore = _AckLostPostgresStore  # type: ignore[attr-defined]


def main() -> int:
    install()
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
