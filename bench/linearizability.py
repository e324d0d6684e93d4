"""The linearizability workload for as long as you like: clients of every kind on a few streams
of a real `s2s serve`, kill -9 and restarts, I/O faults inside LMDB's commits and power
losses by a nemesis, then the checker on the history.

    .venv/bin/python bench/linearizability.py --seed 7 --seconds 300 [--kills 20] [--faults 30]
        [--power-losses 10] [--streams 4]

Prints the operations recorded (how many had unknown outcomes, how many were answered
`storage`), the kills, the faults armed and injected (by kind), the checker's steps and time
per stream, and the verdict; exits 1 unless the history is linearizable and every armed fault
was injected. The same code as `make test`'s bounded run (tests/linearizability/). Faults need
Linux x86_64 with seccomp; power losses a FUSE mount (root, /dev/fuse, libfuse 2), with the
data directory on tests/crash/powerloss_fs.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.crash.powerloss_mount import power_loss_mount, unavailable  # noqa: E402
from tests.crash.syscall_faults import seccomp_unavailable  # noqa: E402
from tests.linearizability.checker import check  # noqa: E402
from tests.linearizability.history import STORAGE, NoEffect  # noqa: E402
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
    parser.add_argument("--faults", type=count, help="default: one per 10 seconds")
    parser.add_argument(
        "--power-losses",
        type=count,
        default=0,
        help="power losses: the data directory on the power-loss filesystem (root, FUSE)",
    )
    parser.add_argument("--streams", type=positive_int, default=2)
    args = parser.parse_args()
    kills = args.kills if args.kills is not None else max(1, int(args.seconds // 10))
    faults = args.faults if args.faults is not None else max(1, int(args.seconds // 10))
    no_seccomp = seccomp_unavailable()
    if faults and no_seccomp is not None:
        parser.error(f"--faults needs seccomp: {no_seccomp} (run with --faults 0)")
    no_power_loss = unavailable()
    if args.power_losses and no_power_loss is not None:
        parser.error(f"--power-losses needs a FUSE mount: {no_power_loss}")
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="s2s-lin-")))
        disk = (
            stack.enter_context(power_loss_mount(scratch / "disk")) if args.power_losses else None
        )
        run = asyncio.run(
            run_workload(
                (disk.mount_point if disk is not None else scratch) / "data",
                args.seed,
                args.seconds,
                kills,
                streams=args.streams,
                faults=faults,
                power_losses=args.power_losses,
                disk=disk,
            )
        )
    unknown = sum(operation.outcome is None for operation in run.history)
    failed = sum(operation.outcome == NoEffect(STORAGE) for operation in run.history)
    print(
        f"operations: {len(run.history)} ({unknown} of unknown outcome, {failed} answered "
        f"{STORAGE}), kills: {run.kills}, power losses: {len(run.power_losses)} "
        f"({sum(cut.pending_bytes for cut in run.power_losses):,} unsynced bytes at the cuts, "
        f"{sum(cut.sectors_kept for cut in run.power_losses):,} sectors of them kept)"
    )
    injected = [fault for fault in run.faults if fault.injected_ns is not None]
    kinds = Counter(fault.kind.name for fault in injected)
    print(
        f"faults armed: {len(run.faults)}, injected: {len(injected)} "
        f"({', '.join(f'{kind} {n}' for kind, n in sorted(kinds.items())) or 'none'}), "
        f"failed a commit: {sum(fault.commit_failed for fault in injected)}, "
        f"'fault injected' lines logged: {run.faults_injected_logged}"
    )
    started = time.monotonic()
    verdict = check(run.history)
    print(f"checked in {time.monotonic() - started:.1f} s: {verdict.describe()}")
    print(f"linearizable: {verdict.linearizable}")
    all_injected = len(injected) == len(run.faults) == run.faults_injected_logged
    return 0 if verdict.linearizable and all_injected else 1


if __name__ == "__main__":
    sys.exit(main())
