"""A runner's report as another node reads it (server/lake/runner_reports.py): what the
leader wrote comes back as written; anything else in its place, or a report three refreshes
old, is not used."""

from __future__ import annotations

import pytest

from server.lake.runner_reports import REPORT_STALE_S, RunnerReport

REPORT = RunnerReport("error", "the disk is full", 7, 1_800_000_000.5, 2, 1_800_000_001.0)


def test_a_report_comes_back_as_written() -> None:
    assert RunnerReport.decode(REPORT.encode()) == REPORT


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'{"state": "running"}',
        REPORT.encode().replace(b'"state":"error"', b'"state":3'),
        REPORT.encode().replace(b'"records_skipped":2', b'"records_skipped":"2"'),
        REPORT.encode()[:-1] + b',"extra":1}',
    ],
)
def test_anything_else_is_not_a_report(raw: bytes) -> None:
    assert RunnerReport.decode(raw) is None


def test_a_report_is_used_until_it_is_stale() -> None:
    assert REPORT.fresh(REPORT.reported_at + REPORT_STALE_S - 1)
    assert not REPORT.fresh(REPORT.reported_at + REPORT_STALE_S)
