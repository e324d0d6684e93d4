"""The official TypeScript SDK (`@s2-dev/streamstore`, pinned in this folder's package-lock.json)
against a real `s2s serve` with access control on: runs this folder's vitest suite once, with
the server's address and root token in S2S_HTTP_URL and S2S_ACCESS_TOKEN.

Every file of the suite must pass.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.server_process import ServerProcess

pytestmark = pytest.mark.xdist_group("typescript")

SUITE = Path(__file__).resolve().parent
VITEST = SUITE / "node_modules" / "vitest" / "vitest.mjs"
"""Installed by `make .venv/typescript/.installed` (a step of `make test`)."""
RUN_TIMEOUT_S = 150
"""The whole suite takes about 6 s here; the bound is for a hung session."""


@dataclass(frozen=True)
class VitestRun:
    output: str = field(repr=False)
    """vitest's own report, and the server's log, for a failure message."""
    files: dict[str, dict[str, Any]] = field(repr=False)
    """vitest's JSON result of each test file, by file name."""

    def failures(self, file: str) -> list[str]:
        """The tests of `file` that did not pass, or why the file did not run."""
        result = self.files[file]
        failed = [t["fullName"] for t in result["assertionResults"] if t["status"] != "passed"]
        if result["status"] != "passed" and not failed:
            failed.append(result.get("message") or "the file failed without a test failing")
        return failed


@pytest.fixture(scope="module")
def vitest_run(tmp_path_factory: pytest.TempPathFactory) -> VitestRun:
    node = shutil.which("node")
    if node is None or not VITEST.exists():
        pytest.fail(
            "the TypeScript SDK suite needs node and its packages: "
            "run `make .venv/typescript/.installed` (make test does)"
        )
    tmp = tmp_path_factory.mktemp("typescript")
    report = tmp / "vitest.json"
    json_report = f"--outputFile.json={report}"
    server = ServerProcess(str(tmp / "data"), auth=True).start()
    try:
        completed = subprocess.run(
            [node, str(VITEST), "run", "--reporter=default", "--reporter=json", json_report],
            cwd=SUITE,
            env={
                **os.environ,
                "S2S_HTTP_URL": server.http_url,
                "S2S_ACCESS_TOKEN": server.root_token,
                "NO_COLOR": "1",
            },
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
    finally:
        server.stop()
    output = completed.stdout + completed.stderr + "\nserver log:\n" + "".join(server.log[-40:])
    if not report.exists():
        pytest.fail(f"vitest did not run (exit {completed.returncode}):\n{output}")
    results = json.loads(report.read_text())["testResults"]
    return VitestRun(output, {Path(result["name"]).name: result for result in results})


def test_every_file_of_the_suite_ran(vitest_run: VitestRun) -> None:
    assert set(vitest_run.files) == {path.name for path in SUITE.glob("*.test.ts")}


def test_the_typescript_sdk_works_against_s2s(vitest_run: VitestRun) -> None:
    failed = [
        f"{file}: {failure}"
        for file in sorted(vitest_run.files)
        for failure in vitest_run.failures(file)
    ]
    if failed:
        pytest.fail(
            "\n".join([f"{len(failed)} TypeScript tests failed:", *failed, vitest_run.output])
        )
