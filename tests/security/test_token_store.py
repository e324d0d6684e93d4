"""The token store on a real StreamStore and its files: what concurrent calls leave on disk."""

from __future__ import annotations

import asyncio
from pathlib import Path

from s2s.errors import S2Error
from server.access.scope import scope_from_json
from server.access.tokens import IssueRequest
from server.streamstore import StreamStore
from tests.storage_mode import storage_for


async def test_concurrent_issues_of_one_id_leave_the_answered_one_on_disk(tmp_path: Path) -> None:
    store = await StreamStore.open(str(tmp_path), storage=storage_for(tmp_path))
    try:
        path = await store.access_tokens.bootstrap_root(str(tmp_path))
        assert path is not None
        root = store.access_tokens.authenticate(f"Bearer {path.read_text().strip()}")
        request = IssueRequest(id="twice", scope=scope_from_json({"ops": ["list-basins"]}))
        results = await asyncio.gather(
            store.access_tokens.issue(root, request),
            store.access_tokens.issue(root, request),
            return_exceptions=True,
        )
    finally:
        await store.close()
    issued = [result for result in results if isinstance(result, str)]
    refused = [result.code for result in results if isinstance(result, S2Error)]
    assert len(issued) == 1 and refused == ["resource_already_exists"]
    reopened = await StreamStore.open(str(tmp_path), storage=storage_for(tmp_path))
    try:
        # The secret that was answered is the one stored: it still works after a restart.
        principal = reopened.access_tokens.authenticate(f"Bearer {issued[0]}")
        assert principal.info.id == "twice"
    finally:
        await reopened.close()
