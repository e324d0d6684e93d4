"""What the node that runs a shared lake's materializations reports of each runner, so that a
status asked of any node says what the runner itself says (docs/adr/0013-several-nodes.md).

Where nodes share the stream store and the lake's catalog, one of them runs the
materializations; the others answer a status with the catalog's checkpoint, which holds the
progress but not the runner's own state (`error` and why, `waiting_for_stream`) nor when it
last committed. So the leader writes those to the shared store, in `SYSTEM[lake/runner/NAME]`,
when its state, error or skipped count changes, and every `REPORT_REFRESH_S` anyway (so a
report's age says whether its writer still runs); once a second at most. Another node uses a
report younger than `REPORT_STALE_S` and says `on_another_server` without one: the leader may
be gone, and its successor reports within a second of taking over.

A report's times are wall-clock (`time.time()`), so nodes are assumed to agree on the time to
well within `REPORT_STALE_S`, as NTP keeps them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from s2s.errors import S2Error
from server.lake.runner import RunnerStatus
from server.storage.committer import GroupCommitter
from server.storage.kv import Delete, KeyValueStore, Put, Table, Write

log = logging.getLogger("s2s.lake")

REPORT_KEY_PREFIX = b"lake/runner/"
REPORT_REFRESH_S = 10.0
"""How often an unchanged report is written again: how late another node may see the last
commit's time."""
REPORT_STALE_S = 30.0
"""A report older than this is not used: three refreshes were missed."""
REPORTS_LISTED_MAX = 10_000
"""Reports read at once when a new leader drops those of materializations gone since."""


@dataclass(frozen=True)
class RunnerReport:
    state: str
    last_error: str | None
    last_snapshot_id: int | None
    last_commit_at: float | None
    records_skipped: int
    reported_at: float

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, raw: bytes) -> RunnerReport | None:
        """The report, or None if `raw` is not one as `encode` writes it (never trusted)."""
        try:
            fields: Any = json.loads(raw)
            report = cls(**fields)
        except (ValueError, TypeError):
            return None
        valid = (
            isinstance(report.state, str)
            and isinstance(report.last_error, str | None)
            and isinstance(report.last_snapshot_id, int | None)
            and isinstance(report.last_commit_at, int | float | None)
            and isinstance(report.records_skipped, int)
            and isinstance(report.reported_at, int | float)
        )
        return report if valid else None

    def fresh(self, now: float) -> bool:
        return now - self.reported_at < REPORT_STALE_S


def report_key(name: str) -> bytes:
    return REPORT_KEY_PREFIX + name.encode()


async def read_report(kv: KeyValueStore, name: str) -> RunnerReport | None:
    """The leader's report of materialization `name`, if there is a fresh one."""
    raw = await asyncio.to_thread(kv.get, Table.SYSTEM, report_key(name))
    report = None if raw is None else RunnerReport.decode(raw)
    return report if report is not None and report.fresh(time.time()) else None


class RunnerReporter:
    """The leader's side: writes the reports that changed, or are due again."""

    def __init__(self, kv: KeyValueStore, committer: GroupCommitter) -> None:
        self._kv = kv
        self._committer = committer
        self._sent: dict[str, tuple[tuple[object, ...], float]] = {}
        """Per name, what was last written (the parts whose change makes a report due) and
        when; empty until this node has led and written once."""
        self._listed = False
        """Whether the reports of materializations gone since were dropped (once a lead)."""
        self._failing = False

    def stop(self) -> None:
        """This node no longer leads: when it leads again, it reports everything afresh."""
        self._sent.clear()
        self._listed = False

    async def publish(self, statuses: Mapping[str, RunnerStatus]) -> None:
        """Write the reports due among `statuses` (every materialization, by name) and drop
        those of names no longer in it; a store out of reach is tried again next time."""
        now = time.time()
        writes: list[Write] = []
        if not self._listed:
            keys = await asyncio.to_thread(self._reported_keys)
            known = {report_key(name) for name in statuses}
            writes.extend(Delete(Table.SYSTEM, key) for key in keys if key not in known)
        sent = dict(self._sent)
        for name, status in statuses.items():
            due_when_changed = (status.state, status.last_error, status.records_skipped)
            last = sent.get(name)
            if (
                last is not None
                and last[0] == due_when_changed
                and now - last[1] < REPORT_REFRESH_S
            ):
                continue
            report = RunnerReport(
                status.state,
                status.last_error,
                status.last_snapshot_id,
                status.last_commit_at,
                status.records_skipped,
                now,
            )
            writes.append(Put(Table.SYSTEM, report_key(name), report.encode()))
            sent[name] = (due_when_changed, now)
        for name in [name for name in sent if name not in statuses]:
            writes.append(Delete(Table.SYSTEM, report_key(name)))
            del sent[name]
        if not writes:
            return
        try:
            await self._committer.commit(writes)
        except S2Error as error:
            if not self._failing:
                log.warning("cannot write the materializations' reports: %s", error.message)
            self._failing = True
            return
        self._failing = False
        self._sent = sent
        self._listed = True

    def _reported_keys(self) -> list[bytes]:
        end = REPORT_KEY_PREFIX[:-1] + bytes([REPORT_KEY_PREFIX[-1] + 1])
        rows = self._kv.scan(Table.SYSTEM, REPORT_KEY_PREFIX, end, REPORTS_LISTED_MAX)
        return [key for key, _ in rows]
