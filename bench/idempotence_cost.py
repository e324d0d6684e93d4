"""What idempotent appends cost per batch on the server's event loop, in process: validation of
received protobuf (with its size, as the frontends call it) with and without the
`s2s-producer` header, and building a producer's next row (docs/adr/0016).

    .venv/bin/python bench/idempotence_cost.py [--rounds 7]

Each figure is the fastest of `--rounds` timeit runs. To compare with the code before a change,
run it from each tree (`cd OTHER_TREE && PYTHONPATH=. .venv/bin/python .../idempotence_cost.py`);
cases the tree cannot build (no producer header) print `n/a`.
"""

from __future__ import annotations

import argparse
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path.cwd()))  # the tree it runs from: to compare two trees

from s2s.records import validate_append_input
from s2s.v1 import records_pb2 as pb

PRODUCER_VALUE = b"0123456789abcdef0123456789abcdef 123456"


def _received(records: list[pb.AppendRecord]) -> tuple[pb.AppendInput, int]:
    encoded = pb.AppendInput(records=records).SerializeToString()
    return pb.AppendInput.FromString(encoded), len(encoded)


def _batch(count: int, body_bytes: int, headed: bool, producer: bool) -> tuple[pb.AppendInput, int]:
    records = [pb.AppendRecord(body=b"x" * body_bytes) for _ in range(count)]
    if headed:
        for record in records:
            record.headers.add(name=b"trace-id", value=b"0123456789abcdef")
    if producer:
        records[0].headers.add(name=b"s2s-producer", value=PRODUCER_VALUE)
    return _received(records)


def _validation(count: int, body_bytes: int, headed: bool, producer: bool) -> Callable[[], object]:
    message, size = _batch(count, body_bytes, headed, producer)
    return lambda: validate_append_input(message, size)


def _next_row() -> Callable[[], object] | None:
    try:
        from server.storage.layout import ProducerRow
    except ImportError:
        return None
    row = ProducerRow.first(0, (0, 1), (1, 1), 1)
    for seq in range(1, 16):
        row = row.then(seq, (seq, 1), (seq + 1, 1), 1)
    return lambda: row.then(16, (16, 1), (17, 1), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    cases: list[tuple[str, int, Callable[[], Callable[[], object] | None]]] = [
        ("validate 1000 x 1 KiB, no header", 200, lambda: _validation(1000, 1024, False, False)),
        (
            "validate 1000 x 1 KiB, producer header on record 0",
            200,
            lambda: _validation(1000, 1024, False, True),
        ),
        (
            "validate 1000 x 1000 B, a header on every record",
            50,
            lambda: _validation(1000, 1000, True, False),
        ),
        ("validate 1 x 100 B, no header", 5000, lambda: _validation(1, 100, False, False)),
        ("validate 1 x 100 B, one header", 5000, lambda: _validation(1, 100, True, False)),
        ("validate 1 x 100 B, producer header", 5000, lambda: _validation(1, 100, False, True)),
        ("a producer's next row (full window)", 20000, _next_row),
    ]
    for name, number, build in cases:
        try:
            run = build()
            if run is None:
                raise LookupError
            run()
        except Exception:  # the code under test predates the feature
            print(f"{name}: n/a")
            continue
        best = min(timeit.timeit(run, number=number) for _ in range(args.rounds)) / number
        print(f"{name}: {best * 1e6:,.1f} us")


if __name__ == "__main__":
    main()
