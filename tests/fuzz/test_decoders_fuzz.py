"""The decoders under atheris, coverage-guided: 10,000 inputs per target of `targets.py` (the S2S
frame reader, JSON and protobuf appends over HTTP, S2S and gRPC, stored batches, `/v2/stream`
bodies), each ending as its contract allows: no other exception, no hang, no blow-up.

Each target runs in its own process (atheris owns the process and exits at the end); the
inputs are the same on every run (libFuzzer's seed is fixed). About 4 s per target here, half
of it importing the server under instrumentation. The long runs: `bench/fuzz.py`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fuzz.targets import TARGETS

RUNS = 10_000
_TIMEOUT_S = 120
_REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_input_ends_as_the_decoders_contract_allows(target: str, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "tests.fuzz.engine",
        f"--target={target}",
        f"--runs={RUNS}",
        "--seed=1",
        f"--corpus={tmp_path / 'corpus'}",
        f"--artifacts={tmp_path}",
    ]
    done = subprocess.run(
        command, cwd=_REPO, capture_output=True, text=True, timeout=_TIMEOUT_S, check=False
    )
    output = "\n".join(
        line for line in done.stderr.splitlines() if not line.startswith("INFO: Instrumenting")
    )
    findings = [path.name for path in tmp_path.iterdir() if path.name.startswith(f"{target}-")]
    assert done.returncode == 0 and not findings, f"{findings}\n{output[-6000:]}"
    executed = re.search(r"stat::number_of_executed_units: (\d+)", output)
    assert executed is not None and int(executed.group(1)) >= RUNS, output[-2000:]
    coverage = re.search(r"DONE\s+cov: (\d+)", output)
    assert coverage is not None and int(coverage.group(1)) > 0, "no coverage: not instrumented?"
