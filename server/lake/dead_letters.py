"""Reading the dead letters: records a materialization could not turn into rows, kept with the
reason in `s2s.dead_letters` (written by `Applier`, in the same transaction as the batch's
rows and checkpoint; see connection.py)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from s2s.errors import invalid
from server.lake.connection import META_SCHEMA
from server.lake.query import QueryRunner
from server.lake.sqltext import quote_literal

DEAD_LETTERS_LIMIT_MAX = 1000


@dataclass(frozen=True)
class DeadLetter:
    materialization: str
    basin: str
    stream: str
    seq_num: int
    record_timestamp: int
    reason: str
    rejected_at: datetime.datetime
    body: bytes | None
    """The record's body as stored in the stream (any bytes)."""


class DeadLetters:
    def __init__(self, queries: QueryRunner) -> None:
        self._queries = queries

    async def recent(self, table: str, limit: int) -> list[DeadLetter]:
        """The most recent rejected records for `schema.table`, newest first."""
        if not 1 <= limit <= DEAD_LETTERS_LIMIT_MAX:
            raise invalid(f"limit must be between 1 and {DEAD_LETTERS_LIMIT_MAX}")
        result = await self._queries.read(
            "SELECT materialization, basin, stream, seq_num, record_timestamp, reason, "
            f"rejected_at, body FROM {META_SCHEMA}.dead_letters "
            f"WHERE lower(target_table) = {quote_literal(table.lower())} "
            f"ORDER BY rejected_at DESC, seq_num DESC LIMIT {int(limit)}"
        )
        return [DeadLetter(**row) for row in result.to_pylist()]
