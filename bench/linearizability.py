"""The linearizability workload for as long as you like: clients of every kind on a few streams
of a real `s2s serve`, kill -9 and restarts by a nemesis, then the checker on the history.

    .venv/bin/python bench/linearizability.py --seed 7 --seconds 300 [--kills 20] [--streams 4]

Prints the operations recorded (and how many had unknown outcomes), the kills, the checker's
steps and time per stream, and the verdict; exits 1 unless the history is linearizable. The
same code as `make test`'s bounded run (tests/linearizability/).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.linearizability.checker import check  # noqa: E402
from tests.linearizability.workload import run_workload  # noqa: E402


def positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
    return value


def positive_int(text: str) -> int:
    value = count(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be 1 or more, not 0")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--seconds", type=positive, required=True)
    parser.add_argument("--kills", type=count, help="default: one per 10 seconds")
    parser.add_argument("--streams", type=positive_int, default=2)
    args = parser.parse_args()
    kills = args.kills if args.kills is not None else max(1, int(args.seconds // 10))
    with tempfile.TemporaryDirectory(prefix="s2s-linearizability-") as data_dir:
        run = asyncio.run(
            run_workload(Path(data_dir), args.seed, args.seconds, kills, streams=args.streams)
        )
    unknown = sum(operation.outcome is None for operation in run.history)
    print(f"operations: {len(run.history)} ({unknown} of unknown outcome), kills: {run.kills}")
    started = time.monotonic()
    verdict = check(run.history)
    print(f"checked in {time.monotonic() - started:.1f} s: {verdict.describe()}")
    print(f"linearizable: {verdict.linearizable}")
    return 0 if verdict.linearizable else 1


if __name__ == "__main__":
    sys.exit(main())
