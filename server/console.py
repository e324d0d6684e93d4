"""The `s2s` console script's entry point.

Loading the command line (gRPC, DuckDB, Arrow) takes ~0.3 s; Ctrl-C in that time would end
with a KeyboardInterrupt traceback from whatever module was loading, and so would one between
the loading and the point where the command handles Ctrl-C itself (the server's settings, the
allocator's). So both happen here, where an interrupt exits 130 quietly like one at any later
point.
"""

from __future__ import annotations

import os
import sys

EXIT_INTERRUPTED = 130
SERVER_COMMANDS = ("serve", "migrate")
"""The commands that need the server's modules (and `--help`, completion: the whole parser)."""


def main() -> int:
    # gRPC core logs at INFO on stderr, read when it loads: each failed TLS handshake (a client
    # that does not trust the server's certificate, a plain-text client at a TLS port) would
    # add lines to a client command's one-line error, and to the server's log per attempt.
    # GRPC_VERBOSITY=debug still shows them.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    try:
        # Imported here, not at the top: the point is to catch an interrupt while it loads,
        # and before the command's own handling of Ctrl-C starts (the server's, once it runs).
        argv = sys.argv[1:]
        if argv and argv[0] not in SERVER_COMMANDS and "_ARGCOMPLETE" not in os.environ:
            from client.cli import COMMAND_NAMES
            from client.cli import main as run_client_command

            if argv[0] in COMMAND_NAMES:
                # A client command starts in a third of the time without the server's modules.
                return run_client_command(argv)
        # `serve` loads exactly what it needs, in its own order: an interrupt while loading
        # the client's modules first was seen swallowed, the server then starting regardless.
        from server.cli import main as run_command

        return run_command()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
