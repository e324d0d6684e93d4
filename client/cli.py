"""The `s2s` client commands: the command table, and how a command runs.

Every command in `COMMANDS` talks to a running server through the client SDK. Each gets the
connection flags (`--server`, `--tls`, `--tls-ca`, `--token`), `--json` (its result as JSON
lines instead of text), and `--log-level` / `--log-format` (its log on stderr: each request
at debug, each creation, deletion, reconfiguration and error at info or above). Adding a
command is adding a `Command` (client/cli_command.py) to the table.

A failure prints one line to stderr: a usage error (a bad argument, flag combination or input
line) exits 2, a failure of the server or the connection exits 1, Ctrl-C exits 130, and a
closed stdout (`| head`) ends quietly with 141, as a shell reports SIGPIPE.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from argcomplete.shell_integration import shellcode

from client import S2SClient, S2SError
from client.cli_append import COMMAND as APPEND
from client.cli_args import (
    EnvOption,
    Parser,
    UsageError,
    boolean,
    encryption_key,
    log_options,
    nonempty,
    pem_certificates,
    server_address,
)
from client.cli_bench import COMMAND as BENCH
from client.cli_command import Command, resolve_stream_target
from client.cli_kv import COMMAND as KV
from client.cli_lake import MATERIALIZATIONS, SQL
from client.cli_manage import BASINS, LS, STREAMS
from client.cli_read import READ, TAIL
from client.cli_stream_ops import CHECK_TAIL, FENCE, TRIM
from client.cli_tokens import COMMAND as TOKENS
from s2s.errors import S2Error
from s2s.logs import configure_client, fields

log = logging.getLogger(__name__)

COMMANDS: tuple[Command, ...] = (
    LS,
    BASINS,
    STREAMS,
    APPEND,
    READ,
    TAIL,
    CHECK_TAIL,
    FENCE,
    TRIM,
    TOKENS,
    MATERIALIZATIONS,
    SQL,
    KV,
    BENCH,
)
"""Every client command, in the order `s2s --help` lists them."""

CLIENT_LOGGERS = ("client",)
"""The loggers `--log-level` sets: the SDK's and these commands'."""

SERVER_OPTION = EnvOption(
    "--server", "S2S_SERVER", server_address, "127.0.0.1:50051", "gRPC address of the server"
)
TLS_OPTIONS = (
    EnvOption(
        "--tls",
        "S2S_TLS",
        boolean,
        False,
        "connect over TLS, trusting the system's certificate authorities (or --tls-ca)",
        switch=True,
    ),
    EnvOption(
        "--tls-ca",
        "S2S_TLS_CA",
        pem_certificates,
        None,
        "PEM file of the certificates to trust instead, such as a server's DATA_DIR/tls/"
        "cert.pem (implies --tls)",
    ),
)
TOKEN_OPTION = EnvOption(
    "--token",
    "S2S_ACCESS_TOKEN",
    nonempty,
    None,
    "access token (prefer the variable: a flag shows in the process list); default: the "
    "local server's root token, S2S_DATA_DIR/root.token (./data/root.token), if readable",
)
ROOT_TOKEN_FILE = "root.token"
ENCRYPTION_KEY_OPTION = EnvOption(
    "--encryption-key",
    "S2S_ENCRYPTION_KEY",
    encryption_key,
    None,
    "the stream's key, base64 of 32 bytes, for appends and reads of a stream created in a "
    "basin with a stream_cipher (prefer the variable: a flag shows in the process list)",
)
LOG_OPTIONS = log_options("warning")
CONNECTION_OPTIONS = (SERVER_OPTION, *TLS_OPTIONS, TOKEN_OPTION, *LOG_OPTIONS)

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
COMPLETION_SHELLS = ("bash", "zsh", "fish", "tcsh", "powershell")


def add_commands(commands: Any) -> None:
    """Register the client commands (and `completion`) on the `s2s` argument parser."""
    for command in COMMANDS:
        parser: Parser = commands.add_parser(
            command.name, help=command.help, description=command.description or command.help
        )
        command.add_arguments(parser)
        for option in CONNECTION_OPTIONS:
            option.add_to(parser)
        if command.stream_key:
            ENCRYPTION_KEY_OPTION.add_to(parser)
        parser.add_argument(
            "--json", action="store_true", help="print the result as JSON, one object per line"
        )
        parser.set_defaults(
            handler=command.handler, parser=parser, stream_target=command.stream_target
        )
    completion: Parser = commands.add_parser(
        "completion",
        help="print the shell code that completes s2s commands and flags",
        description='Shell completion, e.g. in ~/.bashrc: eval "$(s2s completion bash)". '
        "It runs s2s to find the completions (argcomplete's protocol).",
    )
    completion.add_argument("shell", choices=COMPLETION_SHELLS, help="the shell to complete in")
    completion.set_defaults(parser=completion)


COMMAND_NAMES = frozenset(command.name for command in COMMANDS)
"""The client commands: `s2s NAME ...` for one of these needs none of the server's modules."""


def main(argv: list[str]) -> int:
    """`s2s COMMAND ...` for a client command (`COMMAND_NAMES`), parsed without loading the
    server's modules (which `s2s serve` needs, and which take most of a command's start-up);
    `s2s --help` and completion go through the whole parser (server/cli.py)."""
    assert argv and argv[0] in COMMAND_NAMES, argv
    parser = Parser(prog="s2s", description="s2s: durable streams server")
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    return run(parser.parse_args(argv))


def print_completion(args: argparse.Namespace) -> int:
    """`s2s completion SHELL`."""
    sys.stdout.write(shellcode(["s2s"], shell=args.shell))
    return 0


def run(args: argparse.Namespace) -> int:
    """Run a client command; returns the exit status."""
    if args.command == "completion":
        return print_completion(args)
    parser: Parser = args.parser
    for option in CONNECTION_OPTIONS:
        option.resolve(parser, args)
    if hasattr(args, ENCRYPTION_KEY_OPTION.dest):
        ENCRYPTION_KEY_OPTION.resolve(parser, args)
    configure_client(args.log_level, args.log_format, CLIENT_LOGGERS)
    if args.token is None:
        args.token = _local_root_token()
    try:
        _check_text_arguments(args)
        if args.stream_target:
            resolve_stream_target(args)
        asyncio.run(_dispatch(args))
    except UsageError as error:
        if args.log_format == "json":
            log.error("%s", error, extra=fields(code="usage"))
            return EXIT_USAGE
        parser.error(str(error))
    except (S2SError, S2Error) as error:
        hint = ""
        if error.code == "unavailable":
            hint = (
                f" (is the server running at {args.server}? set --server or S2S_SERVER, and "
                "--tls if it serves TLS)"
            )
        log.error("%s%s", error, hint, extra=fields(code=error.code))
        return 1
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`s2s read ... | head`): nothing left to print to. Point stdout
        # at /dev/null so the interpreter's final flush does not fail in turn.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return 0


def _check_text_arguments(args: argparse.Namespace) -> None:
    """Names, tokens and queries travel as UTF-8; an argument that is not valid text (bytes
    the shell passed that are not UTF-8) is a usage error, not a crash in the encoder."""
    for name, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, str) and not _is_utf8(item):
                raise UsageError(f"{name.replace('_', '-')}: {item!r} is not valid UTF-8 text")


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _local_root_token() -> str | None:
    """The root token a server on this machine wrote into its data directory, if this user
    can read it: what makes the CLI work against `make serve` without a flag."""
    path = Path(os.environ.get("S2S_DATA_DIR") or "./data") / ROOT_TOKEN_FILE
    try:
        return path.read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


async def _dispatch(args: argparse.Namespace) -> None:
    async with S2SClient(
        args.server,
        retries=1,
        tls=args.tls,
        root_certificates=args.tls_ca,
        access_token=args.token,
    ) as client:
        await args.handler(client, args)
