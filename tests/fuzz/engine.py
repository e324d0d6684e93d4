"""Runs one fuzz target of `targets.py` under atheris (libFuzzer, coverage-guided), in this
process; atheris ends the process when it is done, so callers start it as a subprocess:

    .venv/bin/python -m tests.fuzz.engine --target frames --runs 10000 [--seed 1]

The corpus starts from the target's seeds, written to a fresh directory (or `--corpus`, kept
and grown across runs). The server's packages are imported under atheris' instrumentation, so
the fuzzer is guided by the branches of our code an input reaches; the C parsers we call
(json, protobuf, zlib, zstd) run but do not guide it.

Exit status 0: every input ended as the target's contract allows. Otherwise libFuzzer printed
the finding (a Python traceback, `timeout` or `out-of-memory`) and wrote the input that
caused it to `--artifacts` (default: the corpus directory's parent).

Bounds: `-timeout` (one input, seconds) and `-rss_limit_mb` make a hang and a memory blow-up
findings; `-max_len` keeps inputs within what one request of the API may carry in a fuzzing
budget (S2S frames: a few frames; the decoders' limits are tested on their own).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

import atheris

INPUT_TIMEOUT_S = 10
"""An input the decoder takes longer than this over is a hang."""
RSS_LIMIT_MB = 2048
"""Memory the fuzzing process may reach: a decoder that blows up its input is a finding."""
MAX_INPUT_BYTES = 64 * 1024
"""Longest input the fuzzer makes (seeds may be longer)."""


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--runs", type=int, required=True, help="inputs to try, seeds included")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer's random seed")
    parser.add_argument("--corpus", type=Path, help="corpus directory to start from and grow")
    parser.add_argument("--artifacts", type=Path, help="where a finding's input is written")
    args = parser.parse_args(argv)

    # Imported here, under instrumentation: every module of ours loads for the first time now.
    with atheris.instrument_imports(include=["s2s", "server", "tests.fuzz.targets"]):
        from tests.fuzz.targets import TARGETS

    target = TARGETS.get(args.target)
    if target is None:
        parser.error(f"unknown target {args.target!r}; one of {', '.join(TARGETS)}")
    corpus = args.corpus or Path(tempfile.mkdtemp(prefix=f"fuzz-{target.name}-"))
    corpus.mkdir(parents=True, exist_ok=True)
    for seed in target.seeds():
        (corpus / hashlib.sha1(seed).hexdigest()).write_bytes(seed)
    artifacts = args.artifacts or corpus.parent
    artifacts.mkdir(parents=True, exist_ok=True)
    libfuzzer_args = [
        sys.argv[0],
        f"-runs={args.runs}",
        f"-seed={args.seed}",
        f"-timeout={INPUT_TIMEOUT_S}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-max_len={MAX_INPUT_BYTES}",
        f"-artifact_prefix={artifacts}/{target.name}-",
        "-print_final_stats=1",
        str(corpus),
    ]
    atheris.Setup(libfuzzer_args, target.run)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv[1:])
