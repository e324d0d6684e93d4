"""The package as users get it: every third-party module the code imports is a declared
dependency, and the wheel, installed into a fresh virtualenv and run away from the source tree,
starts a server that the installed CLI appends to and reads from.

`pip install .` once gave an `s2s` that died on start: two imported distributions were
installed in the development virtualenv (from requirements.lock) but not declared in
pyproject.toml, so only a clean install showed it.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import httpx

from tests.server_process import REPO, ServerProcess, environment_without_s2s

PACKAGES = ("s2s", "server", "client")
"""The import packages the wheel ships (pyproject.toml's packages.find)."""

INSTALL_TIMEOUT_S = 300
"""Building and installing take ~12 s here with pip's cache warm; the bound is for a cold one."""


def _normalized(distribution: str) -> str:
    """PEP 503 name normalization: `Foo_Bar` and `foo-bar` are the same distribution."""
    return re.sub(r"[-_.]+", "-", distribution).lower()


def _declared_dependencies() -> set[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = set()
    for requirement in project["dependencies"]:
        match = re.match(r"[A-Za-z0-9._-]+", requirement)
        assert match, f"unparsable dependency {requirement!r}"
        names.add(_normalized(match.group(0)))
    return names


def _imported_top_level_modules() -> dict[str, set[str]]:
    """Top-level module name -> the files importing it, for absolute imports in PACKAGES."""
    imported: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    relative = str(path.relative_to(REPO))
                    imported.setdefault(name.split(".")[0], set()).add(relative)
    return imported


def test_every_third_party_import_is_a_declared_dependency() -> None:
    declared = _declared_dependencies()
    distributions = packages_distributions()
    problems = []
    for module, files in sorted(_imported_top_level_modules().items()):
        if module in PACKAGES or module in sys.stdlib_module_names or module == "__future__":
            continue
        providers = distributions.get(module)
        where = ", ".join(sorted(files)[:3])
        if not providers:
            problems.append(f"{module} (imported by {where}) is not installed at all")
        elif not any(_normalized(name) in declared for name in providers):
            problems.append(
                f"{'/'.join(providers)} (imported as {module} by {where}) is not in "
                "pyproject.toml's dependencies"
            )
    assert not problems, "\n".join(problems)


def _run(*args: str | Path, cwd: Path, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=environment_without_s2s(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _build_wheel(work: Path) -> Path:
    """Build from a copy of what the wheel is made of, so the build leaves nothing (build/,
    *.egg-info) in the source tree and no stale build output can leak into the wheel."""
    source = work / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for package in PACKAGES:
        shutil.copytree(
            REPO / package,
            source / package,
            ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
        )
    wheels = work / "wheels"
    _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--no-build-isolation",
        "--wheel-dir",
        wheels,
        source,
        cwd=work,
        timeout_s=INSTALL_TIMEOUT_S,
    )
    (wheel,) = wheels.glob("s2s-*.whl")
    return wheel


def _install(wheel: Path, venv: Path, cwd: Path) -> None:
    _run(sys.executable, "-m", "venv", venv, cwd=cwd)
    _run(
        venv / "bin" / "python",
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "-c",
        REPO / "requirements.lock",
        wheel,
        cwd=cwd,
        timeout_s=INSTALL_TIMEOUT_S,
    )


def test_wheel_in_a_fresh_virtualenv_serves_and_appends(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    venv = tmp_path / "venv"
    wheel = _build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as archive:
        top_level = {name.split("/")[0] for name in archive.namelist()}
    # ADR 0005: exactly these three packages, so no further generic name slips in.
    assert top_level - {f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"} == set(
        PACKAGES
    ), top_level
    _install(wheel, venv, elsewhere)
    s2s = venv / "bin" / "s2s"

    location = _run(
        venv / "bin" / "python", "-c", "import server; print(server.__file__)", cwd=elsewhere
    ).stdout
    assert Path(location.strip()).is_relative_to(venv), location
    assert "serve" in _run(s2s, "--help", cwd=elsewhere).stdout

    server = ServerProcess(
        str(tmp_path / "data"), command=[s2s], cwd=elsewhere, env=environment_without_s2s()
    ).start(timeout_s=60)
    try:
        target = ("--server", f"127.0.0.1:{server.grpc_port}")
        _run(s2s, "basins", "create", "packaged-basin", *target, cwd=elsewhere)
        _run(s2s, "streams", "create", "packaged-basin", "events", *target, cwd=elsewhere)
        appended = subprocess.run(
            [str(s2s), "append", "packaged-basin", "events", *target],
            input="one\ntwo\n",
            cwd=elsewhere,
            env=environment_without_s2s(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert appended.returncode == 0, appended.stderr
        read = _run(s2s, "read", "packaged-basin", "events", *target, cwd=elsewhere)
        assert read.stdout.splitlines() == ["one", "two"]
        # The web console's files are package data: the installed server serves every one.
        static = REPO / "server" / "http_frontend" / "console" / "static"
        for path in sorted(static.rglob("*.*")):
            url = f"{server.http_url}/console/{path.relative_to(static).as_posix()}"
            assert httpx.get(url).status_code == 200, url
    finally:
        exit_code = server.stop()
    assert exit_code == 0, "".join(server.log)
    assert "Traceback" not in "".join(server.log)
