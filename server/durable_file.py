"""Replace a small file so that a crash or a power loss at any moment leaves either the old
content or the new one, and once this returns, the new one for good.

The steps, each needed: the content goes to a temporary file in the same directory, created
with its final mode (a secret is never readable by others, even for a moment); the file is
fsync'd, so the rename cannot expose an empty or partial file; the rename replaces the old
name atomically; and the directory is fsync'd, because until then the rename is only in the
page cache and a power loss may undo it (POSIX makes a name durable only by syncing its
directory). The server's own files go through here: the root token, the self-signed
certificate and key, and the lake's server id.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def replace_durably(path: Path, data: bytes, mode: int) -> None:
    """Make `path` hold `data` with permissions `mode`, atomically and durably."""
    fd, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """Make the names in `directory` (files created, renamed or removed in it) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(root: Path) -> None:
    """Make every file and directory under `root`, and `root`'s own name, durable: for files
    written by code that does not sync them (DuckDB's extension installer)."""
    for directory, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        sync_directory(Path(directory))
    sync_directory(root.parent)
