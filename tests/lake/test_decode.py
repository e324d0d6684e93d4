"""`decode_slices`: stored record slices become a materialization's input batch.

Command records (fence, trim) hold no row and are dropped, with their sequence numbers; every
other record keeps its own sequence number, timestamp, body and (when asked) headers.
"""

from __future__ import annotations

from typing import Any

from s2s.records import fence_record, trim_record
from s2s.v1 import records_pb2 as pb
from s2s.wire import record_entries
from server.lake.apply import RecordBatch
from server.lake.runner import decode_slices
from server.reader import RecordSlice


def _slice(records: list[pb.AppendRecord], first_seq: int, timestamp: int) -> RecordSlice:
    bodies = [record.body for record in records]
    headed = {
        index: [(h.name, h.value) for h in record.headers]
        for index, record in enumerate(records)
        if record.headers
    }
    chunks, _ = record_entries(bodies, headed, first_seq, [timestamp] * len(records))
    last_seq = first_seq + len(records) - 1
    return RecordSlice(b"".join(chunks), len(records), 0, first_seq, last_seq, timestamp)


def _column(batch: RecordBatch, name: str) -> list[Any]:
    values: list[Any] = batch.table.column(name).to_pylist()
    return values


def test_plain_slices_keep_every_record_in_order() -> None:
    slices = [
        _slice([pb.AppendRecord(body=b'{"a": 1}'), pb.AppendRecord(body=b"")], 0, 7),
        _slice([pb.AppendRecord(body=b'{"a": 3}')], 2, 9),
    ]
    batch = decode_slices(slices, with_headers=False, after_seq_num=-1)
    assert _column(batch, "seq_num") == [0, 1, 2]
    assert _column(batch, "timestamp") == [7, 7, 9]
    assert _column(batch, "raw") == [b'{"a": 1}', b"", b'{"a": 3}']
    assert _column(batch, "body") == ['{"a": 1}', "", '{"a": 3}']
    assert not batch.has_headers
    assert (batch.after_seq_num, batch.last_seq_num) == (-1, 2)


def test_command_records_are_dropped_and_headers_kept() -> None:
    tagged = pb.AppendRecord(headers=[pb.Header(name=b"tag", value=b"x")], body=b'{"b": 2}')
    records = [
        pb.AppendRecord(body=b'{"a": 1}'),
        fence_record("token"),
        tagged,
        trim_record(1),
        pb.AppendRecord(body=b'{"c": 3}'),
    ]
    batch = decode_slices([_slice(records, 10, 5)], with_headers=True, after_seq_num=9)
    assert _column(batch, "seq_num") == [10, 12, 14]
    assert _column(batch, "raw") == [b'{"a": 1}', b'{"b": 2}', b'{"c": 3}']
    assert _column(batch, "headers") == [[], [("tag", "x")], []]
    assert batch.last_seq_num == 14


def test_a_slice_of_only_commands_yields_no_rows_but_covers_them() -> None:
    commands = [_slice([trim_record(3), fence_record("")], 4, 1)]
    batch = decode_slices(commands, with_headers=False, after_seq_num=3)
    assert (_column(batch, "seq_num"), _column(batch, "raw")) == ([], [])
    assert batch.last_seq_num == 5
