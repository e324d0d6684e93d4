"""The shape of a client command, as the command table (`client/cli.py`) lists it, and the
arguments many commands share: where a stream is (`BASIN STREAM` or `s2://BASIN/STREAM`).

A command is a name, a help line, a function adding its own arguments, and an async handler
given a connected client and the parsed arguments. Every command also gets the connection
flags, `--json` and the log flags (added by `client/cli.py`), so a new command, such as a
`kv` family, is one more entry in the table.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from client import S2SClient
from client.cli_args import S2_URI_SCHEME, Parser, UsageError, split_s2_uri

Handler = Callable[[S2SClient, argparse.Namespace], Awaitable[None]]


@dataclass(frozen=True)
class Command:
    """One `s2s` client command."""

    name: str
    help: str
    add_arguments: Callable[[Parser], None]
    handler: Handler
    stream_key: bool = False
    """Takes `--encryption-key`: it appends to or reads a stream's records."""
    stream_target: bool = False
    """Its first positionals are one stream: `BASIN STREAM` or `s2://BASIN/STREAM`
    (`add_stream_target`), resolved before the handler runs."""
    description: str | None = None
    """Longer help shown by `s2s NAME --help`; defaults to `help`."""


STREAM_METAVAR = "BASIN|s2://BASIN/STREAM"


def add_stream_target(parser: Parser) -> None:
    """Positionals for one stream: `BASIN STREAM`, or one `s2://BASIN/STREAM`."""
    parser.add_argument(
        "basin", metavar=STREAM_METAVAR, help="the basin, or the stream as s2://BASIN/STREAM"
    )
    parser.add_argument(
        "stream", nargs="?", metavar="STREAM", help="the stream, when the basin is given by name"
    )


def resolve_stream_target(args: argparse.Namespace) -> None:
    """Sets `args.basin` and `args.stream` from either form; a missing or doubled stream is a
    usage error."""
    parts = split_s2_uri(args.basin)
    if parts is None:
        if not args.stream:
            raise UsageError(
                f"{args.command} needs a stream: BASIN STREAM, or {S2_URI_SCHEME}BASIN/STREAM"
            )
        return
    basin, stream = parts
    if args.stream is not None:
        raise UsageError(
            f"{args.basin} already names the stream: {args.stream!r} is one argument too many"
        )
    if not basin or not stream:
        raise UsageError(f"{args.basin!r} must be {S2_URI_SCHEME}BASIN/STREAM")
    args.basin, args.stream = basin, stream


def basin_name(text: str) -> str:
    """A basin given as `NAME` or `s2://NAME`."""
    parts = split_s2_uri(text)
    if parts is None:
        return text
    basin, stream = parts
    if not basin or stream:
        raise UsageError(f"{text!r} must name a basin: {S2_URI_SCHEME}BASIN")
    return basin
