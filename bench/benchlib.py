"""Helpers shared by the bench scripts: percentiles, the machine probe line, a process's CPU
time, and starting a helper server process."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

PROBE_RECORD = b"x" * 1024


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def probe(directory: str) -> str:
    """1 KiB append+fdatasync latency on `directory`'s disk and a CPU loop: this VM drifts."""
    path = os.path.join(directory, "probe.log")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    latencies = []
    try:
        for _ in range(2000):
            began = time.perf_counter()
            os.write(fd, PROBE_RECORD)
            os.fdatasync(fd)
            latencies.append(time.perf_counter() - began)
    finally:
        os.close(fd)
        os.unlink(path)
    began = time.perf_counter()
    sum(range(10**7))
    cpu_ms = (time.perf_counter() - began) * 1e3
    return (
        f"probe: 1 KiB append+fdatasync p50 {percentile(latencies, 50) * 1e6:.0f} us "
        f"p99 {percentile(latencies, 99) * 1e6:.0f} us; python sum(range(1e7)) {cpu_ms:.0f} ms"
    )


def process_cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a process, all its threads, from /proc/PID/stat (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def processes_cpu_s(name: str) -> float:
    """User plus system CPU seconds of every process whose name starts with `name` (e.g.
    `postgres`: the server and its backends), from /proc (Linux)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended meanwhile
            continue
        command = text[text.index("(") + 1 : text.rindex(")")]
        if command.startswith(name):
            total += process_cpu_s(int(stat.parent.name))
    return total


def start_process(args: list[str], port_file: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start a helper server (e.g. an echo server) that writes its port to `port_file`."""
    process = subprocess.Popen(
        args, cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if os.path.exists(port_file) and Path(port_file).read_text().strip():
            return process, int(Path(port_file).read_text())
        time.sleep(0.05)
    process.kill()
    raise TimeoutError("server did not start")
