"""This server's stable id: with a catalog shared by several servers (PostgreSQL) that each
have a stream store of their own, each runs only the materializations it declared, because
their source streams live on it (`Materialization.owner`). Servers sharing the stream store
too run them wherever the lake's leader is (materializations.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

from server.durable_file import replace_durably


def load_server_id(root: Path) -> str:
    """The id kept in `root` (the lake's directory), made on the first start."""
    path = root / "server-id"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        replace_durably(path, uuid.uuid4().hex.encode(), mode=0o644)
    return path.read_text().strip()
