"""The decoders' fuzz targets (tests/fuzz/targets.py) under atheris for as long as you like:

    .venv/bin/python bench/fuzz.py --target all --runs 1000000 [--seed 1] [--keep DIR]

Each target runs in its own process (`tests/fuzz/engine.py`, the same code as `make test`'s
10,000 inputs), one after the other. Prints per target the inputs run, the time, libFuzzer's
coverage (`cov`: edges of our code reached; `ft`: features, edges with hit counts), the corpus
it grew, the peak memory, and its findings: the inputs that broke the contract, written to
`--keep` (default: a temporary directory, kept when there is a finding). Exits 1 on a finding.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fuzz.targets import TARGETS  # noqa: E402

_STATS = {
    "cov": re.compile(r"DONE\s+cov: (\d+)"),
    "ft": re.compile(r"DONE\s+cov: \d+ ft: (\d+)"),
    "corpus": re.compile(r"DONE\s+cov: \d+ ft: \d+ corp: (\d+)"),
    "runs": re.compile(r"stat::number_of_executed_units: (\d+)"),
    "rss_mb": re.compile(r"stat::peak_rss_mb:\s+(\d+)"),
}


def positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def fuzz(target: str, runs: int, seed: int, workdir: Path) -> bool:
    """Runs one target; prints its line of figures and any finding. True if none."""
    corpus = workdir / target / "corpus"
    artifacts = workdir / target
    log = workdir / f"{target}.log"
    started = time.monotonic()
    with log.open("w") as output:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.fuzz.engine",
                f"--target={target}",
                f"--runs={runs}",
                f"--seed={seed}",
                f"--corpus={corpus}",
                f"--artifacts={artifacts}",
            ],
            cwd=REPO,
            stdout=output,
            stderr=subprocess.STDOUT,
            check=False,
        )
    seconds = time.monotonic() - started
    text = log.read_text(errors="replace")
    stats = {
        name: (m.group(1) if (m := pattern.search(text)) else "?")
        for name, pattern in _STATS.items()
    }
    findings = sorted(p for p in artifacts.iterdir() if p.name.startswith(f"{target}-"))
    rate = int(stats["runs"]) / seconds if stats["runs"].isdigit() else 0
    print(
        f"{target:13} runs {stats['runs']:>9} in {seconds:7.1f} s ({rate:6.0f}/s)  "
        f"cov {stats['cov']:>4}  ft {stats['ft']:>5}  corpus {stats['corpus']:>4}  "
        f"rss {stats['rss_mb']:>4} MB  exit {done.returncode}  findings {len(findings)}",
        flush=True,
    )
    for finding in findings:
        print(f"  finding: {finding}")
    if done.returncode != 0:
        print(f"  log: {log}")
        crash = text.find("=== Uncaught Python exception")
        print(text[crash : crash + 3000] if crash >= 0 else text[-3000:])
    return done.returncode == 0 and not findings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="all", choices=["all", *TARGETS])
    parser.add_argument("--runs", type=positive, default=1_000_000, help="inputs per target")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer's random seed")
    parser.add_argument("--keep", type=Path, help="directory for corpora, logs and findings")
    args = parser.parse_args()
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="s2s-fuzz-"))
    workdir.mkdir(parents=True, exist_ok=True)
    targets = list(TARGETS) if args.target == "all" else [args.target]
    print(f"fuzz: {', '.join(targets)}; {args.runs} inputs each, seed {args.seed}; in {workdir}")
    clean = [fuzz(target, args.runs, args.seed, workdir) for target in targets]
    print("no findings" if all(clean) else "FINDINGS: see above")
    sys.exit(0 if all(clean) else 1)


if __name__ == "__main__":
    main()
