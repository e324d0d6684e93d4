"""This server's stable id: with a catalog shared by several servers (PostgreSQL), each runs
only the materializations it declared, because their source streams live on it
(`Materialization.owner`)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def load_server_id(root: Path) -> str:
    """The id kept in `root` (the lake's directory), made on the first start."""
    path = root / "server-id"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(".tmp")
        staging.write_text(uuid.uuid4().hex)
        os.replace(staging, path)
    return path.read_text().strip()
