"""A planted bug for the power-loss test: `tests.crash.appender` with LMDB's syncs turned off.

Run as `python -m tests.crash.nosync_appender DATA_DIR SEED`. Every environment this process
opens gets `sync=False, metasync=False` (`MDB_NOSYNC`, `MDB_NOMETASYNC`): commits return, and
the appender acknowledges, before anything is fsync'd. A kill -9 alone loses nothing (the page
cache survives the process); a power loss must lose acknowledged records, or the power-loss
layer drops nothing.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import lmdb

from tests.crash import appender

_open = lmdb.open


def _open_without_syncs(path: str, **options: Any) -> lmdb.Environment:
    return _open(path, **{**options, "sync": False, "metasync": False})


def main() -> None:
    # `lmdb.open` is the Environment class; a function that builds one stands in for it.
    lmdb.open = _open_without_syncs  # type: ignore[assignment]
    asyncio.run(appender.main(sys.argv[1], int(sys.argv[2])))


if __name__ == "__main__":
    main()
