"""`s2s check-tail`, `s2s fence` and `s2s trim`: a stream's position, and the two command
records that change how it may be written (fencing) and what it keeps (trimming)."""

from __future__ import annotations

import argparse
import logging

from client import S2SClient
from client.cli_args import Parser, seq_num
from client.cli_command import Command, add_stream_target
from client.cli_output import Output, format_time
from s2s.logs import fields
from s2s.records import fence_record, trim_record
from s2s.v1 import records_pb2 as pb

log = logging.getLogger(__name__)


def _position(position: pb.StreamPosition) -> dict[str, int]:
    return {"seq_num": position.seq_num, "timestamp": position.timestamp}


async def check_tail(client: S2SClient, args: argparse.Namespace) -> None:
    tail = await client.stream(args.basin, args.stream).check_tail()
    when = f" ({format_time(tail.timestamp)})" if tail.timestamp else ""
    Output(args.json).result(
        f"next seq_num {tail.seq_num}, last timestamp {tail.timestamp}{when}", _position(tail)
    )


def _add_condition_arguments(parser: Parser) -> None:
    parser.add_argument(
        "-f",
        "--fencing-token",
        help="only if the stream's current fencing token is this (needed once it is fenced)",
    )
    parser.add_argument(
        "-m",
        "--match-seq-num",
        type=seq_num,
        help="only if the command record would get this sequence number",
    )


def add_fence_arguments(parser: Parser) -> None:
    add_stream_target(parser)
    parser.add_argument(
        "token",
        metavar="NEW_TOKEN",
        help="the new fencing token, up to 36 bytes; '' clears it",
    )
    _add_condition_arguments(parser)


def add_trim_arguments(parser: Parser) -> None:
    add_stream_target(parser)
    parser.add_argument(
        "seq_num",
        type=seq_num,
        help="the first sequence number to keep: every record before it is deleted",
    )
    _add_condition_arguments(parser)


async def _append_command(
    client: S2SClient, args: argparse.Namespace, record: pb.AppendRecord
) -> pb.AppendAck:
    """Append one command record under the command line's conditions (`-m`, `-f`)."""
    stream = client.stream(args.basin, args.stream, encryption_key=args.encryption_key)
    return await stream.append(
        [record], match_seq_num=args.match_seq_num, fencing_token=args.fencing_token
    )


async def fence(client: S2SClient, args: argparse.Namespace) -> None:
    ack = await _append_command(client, args, fence_record(args.token))
    log.info(
        "fenced s2://%s/%s at seq_num %d",
        args.basin,
        args.stream,
        ack.start.seq_num,
        extra=fields(event="fence", basin=args.basin, stream=args.stream),
    )
    Output(args.json).result(
        f"fenced at seq_num {ack.start.seq_num}",
        {"fenced": _position(ack.start), "tail": _position(ack.tail)},
    )


async def trim(client: S2SClient, args: argparse.Namespace) -> None:
    ack = await _append_command(client, args, trim_record(args.seq_num))
    log.info(
        "trim of s2://%s/%s before seq_num %d requested at seq_num %d",
        args.basin,
        args.stream,
        args.seq_num,
        ack.start.seq_num,
        extra=fields(event="trim", basin=args.basin, stream=args.stream, trim_point=args.seq_num),
    )
    Output(args.json).result(
        f"trim requested at seq_num {ack.start.seq_num}",
        {"trim_point": args.seq_num, "requested": _position(ack.start)},
    )


CHECK_TAIL = Command(
    "check-tail",
    "print a stream's tail: the next sequence number and the last timestamp",
    add_stream_target,
    check_tail,
    stream_target=True,
)
FENCE = Command(
    "fence",
    "set a stream's fencing token (appends with another token are then refused)",
    add_fence_arguments,
    fence,
    stream_key=True,
    stream_target=True,
)
TRIM = Command(
    "trim",
    "delete a stream's records before a sequence number",
    add_trim_arguments,
    trim,
    stream_key=True,
    stream_target=True,
)
