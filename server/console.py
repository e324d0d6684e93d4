"""The `s2s` console script's entry point.

Loading the command line (gRPC, DuckDB, Arrow) takes ~0.3 s; Ctrl-C in that time would end
with a KeyboardInterrupt traceback from whatever module was loading. So the loading happens
here, where an interrupt exits 130 quietly like one at any later point.
"""

from __future__ import annotations

EXIT_INTERRUPTED = 130


def main() -> int:
    try:
        # Imported here, not at the top: the point is to catch an interrupt while it loads.
        from server.cli import main as run_command
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return run_command()
