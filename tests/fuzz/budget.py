"""How much each fuzz test tries, and with which randomness, set once for all of them.

`S2S_FUZZ_EXAMPLES` (default 3,000) scales every fuzz test; without `S2S_FUZZ_SEED` the
inputs are the same on every run (`make test` must not pass or fail by chance), and with it
each seed tries other inputs (the long runs, which outlast pytest's per-test timeout:
`S2S_FUZZ_EXAMPLES=50000 S2S_FUZZ_SEED=1 .venv/bin/pytest -p no:randomly --timeout 0 -s
tests/fuzz`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, seed, settings

EXAMPLES = int(os.environ.get("S2S_FUZZ_EXAMPLES", "3000"))
_SEED = os.environ.get("S2S_FUZZ_SEED")

Test = TypeVar("Test", bound=Callable[..., Any])


def fuzzed(examples: int = EXAMPLES) -> Callable[[Test], Test]:
    """Hypothesis settings for a fuzz test of `examples` inputs (apply above `@given`)."""

    def apply(test: Test) -> Test:
        configured: Test = settings(
            max_examples=examples,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            derandomize=_SEED is None,
            database=None,
        )(test)
        return configured if _SEED is None else seed(int(_SEED))(configured)

    return apply
