"""`s2s` commands that talk to a running server through the client SDK.

Each command prints results to stdout. A failure prints one line to stderr: a usage error
(a bad argument, flag combination or input line) exits 2, a failure of the server or the
connection exits 1, Ctrl-C exits 130, and a closed stdout (`| head`) ends quietly
with 141, as a shell reports SIGPIPE.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import pyarrow as pa
from google.protobuf import json_format
from google.protobuf.message import Message

from client import S2SClient, S2SError, SqlResult, Stream
from client.cli_args import (
    EnvOption,
    Parser,
    UsageError,
    boolean,
    encryption_key,
    json_text,
    nonempty,
    number,
    pem_certificates,
    rfc3339_ms,
    seq_num,
    server_address,
    whole_number,
)
from s2s import allocator
from s2s.config import (
    BasinConfig,
    BasinConfigPatch,
    StreamConfig,
    StreamConfigPatch,
    basin_config_from_json,
    basin_config_to_json,
    basin_patch_from_json,
    patch_stream_config,
    stream_config_from_json,
    stream_config_to_json,
    stream_patch_from_json,
)
from s2s.convert import basin_config_to_proto, stream_config_to_proto
from s2s.errors import S2Error
from s2s.records import (
    BATCH_METERED_BYTES_MAX,
    BATCH_RECORDS_MAX,
    fence_record,
    metered_size,
    trim_record,
)
from s2s.v1 import access_pb2 as apb
from s2s.v1 import control_pb2 as cpb
from s2s.v1 import lake_pb2 as lpb
from s2s.v1 import records_pb2 as pb
from s2s.wire import U64_MAX

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
STREAM_COMMANDS = ("append", "read", "fence", "trim", "bench")

Handler = Callable[[S2SClient, argparse.Namespace], Awaitable[None]]

EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


def add_commands(commands: Any) -> None:
    """Register the client commands on the `s2s` argument parser."""

    def command(name: str, help_text: str, handler: Handler) -> Parser:
        parser: Parser = commands.add_parser(name, help=help_text)
        for option in (SERVER_OPTION, *TLS_OPTIONS, TOKEN_OPTION):
            option.add_to(parser)
        if name in STREAM_COMMANDS:
            ENCRYPTION_KEY_OPTION.add_to(parser)
        parser.set_defaults(handler=handler, parser=parser)
        return parser

    tokens = command("tokens", "manage access tokens", _tokens)
    tokens.add_argument("action", choices=["issue", "list", "revoke"])
    tokens.add_argument("id", nargs="?", default="", help="the token's id (issue, revoke)")
    tokens.add_argument(
        "--scope",
        type=json_text,
        help='S2\'s scope as JSON (issue), e.g. \'{"basins": {"exact": "b"}, "streams": '
        '{"prefix": ""}, "op_groups": {"stream": {"read": true}}}\'',
    )
    tokens.add_argument(
        "--expires-at", type=rfc3339_ms, help="RFC 3339 expiry (issue); default: this token's"
    )
    tokens.add_argument(
        "--auto-prefix-streams",
        action="store_true",
        help="stream names are relative to the scope's stream prefix (issue)",
    )
    tokens.add_argument(
        "--limits", type=json_text, help='rate limits (issue): {"appends_per_s", "mib_per_s"}'
    )
    tokens.add_argument("--prefix", help="list only ids starting with this (list)")

    basins = command("basins", "manage basins", _basins)
    basins.add_argument("action", choices=["create", "list", "delete", "config"])
    basins.add_argument("name", nargs="?", default="")
    basins.add_argument(
        "--config", type=json_text, help="basin config as JSON (create), or changes to it (config)"
    )
    basins.add_argument("--prefix", help="list only names starting with this (list)")

    streams = command("streams", "manage streams", _streams)
    streams.add_argument("action", choices=["create", "list", "delete", "config"])
    streams.add_argument("basin")
    streams.add_argument("name", nargs="?", default="")
    streams.add_argument(
        "--config",
        type=json_text,
        help="stream config as JSON (create), or changes to it (config); null clears a field",
    )
    streams.add_argument("--prefix", help="list only names starting with this (list)")

    append = command(
        "append", "append stdin lines as records (batches of up to 1000 lines and 1 MiB)", _append
    )
    append.add_argument("basin")
    append.add_argument("stream")
    append.add_argument(
        "--ndjson",
        action="store_true",
        help='lines are {"body", "headers", "timestamp"}; a body that is not a string is '
        "stored as its JSON text",
    )
    append.add_argument("--match-seq-num", type=seq_num)
    append.add_argument("--fencing-token")

    read = command("read", "print records, one per line", _read)
    read.add_argument("basin")
    read.add_argument("stream")
    start = read.add_mutually_exclusive_group()
    start.add_argument("--from-seq", type=seq_num)
    start.add_argument("--from-ts", type=seq_num)
    start.add_argument("--tail-offset", type=seq_num)
    read.add_argument("--count", type=whole_number(1, U64_MAX), help="at most this many records")
    read.add_argument("--follow", action="store_true", help="keep reading new records")
    read.add_argument("--ndjson", action="store_true", help="print seq_num, timestamp, headers")

    tail = command("tail", "print the stream's tail", _tail)
    tail.add_argument("basin")
    tail.add_argument("stream")

    fence = command("fence", "set the stream's fencing token", _fence)
    fence.add_argument("basin")
    fence.add_argument("stream")
    fence.add_argument("token")
    fence.add_argument("--fencing-token", help="the current token, if the stream is fenced")

    trim = command("trim", "delete records before a sequence number", _trim)
    trim.add_argument("basin")
    trim.add_argument("stream")
    trim.add_argument("seq_num", type=seq_num)

    materializations = command(
        "materializations",
        "manage materializations (streams applied to lake tables)",
        _materializations,
    )
    materializations.add_argument(
        "action", choices=["create", "list", "get", "pause", "resume", "delete"]
    )
    materializations.add_argument("name", nargs="?", default="")
    materializations.add_argument("--table", help="target table, schema.table (create)")
    materializations.add_argument("--basin", help="source basin (default: the ingest stream)")
    materializations.add_argument("--stream", help="source stream (default: schema.table)")
    materializations.add_argument(
        "--mode", choices=["append", "merge"], help="append (default) or merge"
    )
    materializations.add_argument("--primary-key", help="the column merge mode upserts on")
    materializations.add_argument("--select", help="DuckDB select list over the record columns")
    materializations.add_argument("--where", help="DuckDB predicate over the record columns")
    materializations.add_argument(
        "--partition-by", nargs="+", action="extend", default=[], metavar="EXPR"
    )
    materializations.add_argument("--create-table", action="store_true")
    materializations.add_argument("--paused", action="store_true", help="create it paused")

    sql = command("sql", "run a read-only SQL query over the lake and print the rows", _sql)
    sql.add_argument("query")
    sql.add_argument("--limit", type=whole_number(1, 2**32 - 1), help="at most this many rows")
    sql.add_argument("--json", action="store_true", help="print one JSON object per row")

    bench = command("bench", "measure append throughput and ack latency", _bench)
    bench.add_argument("basin")
    bench.add_argument("--stream", default="s2s-bench")
    bench.add_argument(
        "--record-bytes", type=whole_number(0, BATCH_METERED_BYTES_MAX), default=1024
    )
    bench.add_argument(
        "--batch-records", type=whole_number(1, BATCH_RECORDS_MAX), default=BATCH_RECORDS_MAX
    )
    bench.add_argument("--inflight", type=whole_number(1, 1024), default=16)
    bench.add_argument("--seconds", type=number(0, low_inclusive=False), default=10.0)


def run(args: argparse.Namespace) -> int:
    """Run a client command; returns the exit status."""
    parser: Parser = args.parser
    for option in (SERVER_OPTION, *TLS_OPTIONS, TOKEN_OPTION):
        option.resolve(parser, args)
    if hasattr(args, ENCRYPTION_KEY_OPTION.dest):
        ENCRYPTION_KEY_OPTION.resolve(parser, args)
    if args.token is None:
        args.token = _local_root_token()
    _check_text_arguments(parser, args)
    try:
        asyncio.run(_dispatch(args))
    except UsageError as error:
        parser.error(str(error))
    except (S2SError, S2Error) as error:
        hint = ""
        if error.code == "unavailable":
            hint = (
                f" (is the server running at {args.server}? set --server or S2S_SERVER, and "
                "--tls if it serves TLS)"
            )
        print(f"error: {error}{hint}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`s2s read ... | head`): nothing left to print to. Point stdout
        # at /dev/null so the interpreter's final flush does not fail in turn.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    return 0


def _check_text_arguments(parser: Parser, args: argparse.Namespace) -> None:
    """Names, tokens and queries travel as UTF-8; an argument that is not valid text (bytes
    the shell passed that are not UTF-8) is a usage error, not a crash in the encoder."""
    for name, value in vars(args).items():
        values = value if isinstance(value, list) else [value]
        for item in values:
            if isinstance(item, str) and not _is_utf8(item):
                parser.error(f"{name.replace('_', '-')}: {item!r} is not valid UTF-8 text")


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


def _print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False))


def _refuse_flags(args: argparse.Namespace, allowed_with: str, *flags: str) -> None:
    """A flag that the action would ignore is refused rather than silently dropped."""
    given = [
        flag
        for flag in flags
        if getattr(args, flag.removeprefix("--").replace("-", "_")) not in (None, False, [])
    ]
    if given:
        verb = "goes" if len(given) == 1 else "go"
        raise UsageError(
            f"{' and '.join(given)} only {verb} with {allowed_with}, not {args.action}"
        )


def _config(parse: Callable[[Any], Any], value: Any) -> Any:
    """A --config value parsed by `s2s.config`, its complaint a usage error."""
    try:
        return parse(value)
    except S2Error as error:
        raise UsageError(f"--config: {error.message}") from None


def _check_management_args(args: argparse.Namespace, list_takes: str, names: str) -> None:
    """The flags and names `basins` and `streams` take, the same for both: `list` a prefix and
    no name, the other actions a name, and only `create` and `config` a config."""
    command = f"{args.command} {args.action}"
    if args.action == "list":
        _refuse_flags(args, "create or config", "--config")
        if args.name:
            raise UsageError(f"{command} takes {list_takes}")
        return
    _refuse_flags(args, "list", "--prefix")
    if not args.name:
        raise UsageError(f"{command} needs {names}")
    if args.action == "delete":
        _refuse_flags(args, "create or config", "--config")


def _print_listing(items: Iterable[cpb.BasinInfo | cpb.StreamInfo]) -> None:
    for item in items:
        state = "deleting" if item.HasField("deleted_at_ms") else "active"
        print(f"{item.name}\t{state}")


async def _basins(client: S2SClient, args: argparse.Namespace) -> None:
    _check_management_args(args, "no name: use --prefix to filter", "a basin name")
    if args.action == "list":
        _print_listing((await client.list_basins(prefix=args.prefix or "")).basins)
    elif args.action == "create":
        config = _config(basin_config_from_json, args.config)
        await client.create_basin(args.name, config)
        print(f"created basin {args.name}")
    elif args.action == "delete":
        await client.delete_basin(args.name)
        print(f"deleting basin {args.name}")
    elif args.config is not None:
        patch: BasinConfigPatch = _config(basin_patch_from_json, args.config)
        message, mask = _basin_reconfiguration(patch)
        _print_json(basin_config_to_json(await client.reconfigure_basin(args.name, message, mask)))
    else:
        _print_json(basin_config_to_json(await client.get_basin_config(args.name)))


async def _tokens(client: S2SClient, args: argparse.Namespace) -> None:
    issuing = ("--scope", "--expires-at", "--auto-prefix-streams", "--limits")
    if args.action == "list":
        _refuse_flags(args, "issue", *issuing)
        if args.id:
            raise UsageError("tokens list takes no id: use --prefix to filter")
        page = await client.list_access_tokens(prefix=args.prefix or "")
        for info in page.access_tokens:
            _print_json(json_format.MessageToDict(info, preserving_proto_field_name=True))
        return
    if not args.id:
        raise UsageError(f"tokens {args.action} needs the token's id")
    if args.action == "revoke":
        _refuse_flags(args, "issue", *issuing)
        await client.revoke_access_token(args.id)
        print(f"revoked access token {args.id}")
        return
    if args.scope is None:
        raise UsageError("tokens issue needs --scope")
    info = apb.AccessTokenInfo(
        id=args.id,
        expires_at_ms=args.expires_at,
        auto_prefix_streams=args.auto_prefix_streams,
        scope=_message(apb.AccessTokenScope(), args.scope, "--scope"),
    )
    if args.limits is not None:
        info.limits.CopyFrom(_message(apb.RateLimits(), args.limits, "--limits"))
    print(await client.issue_access_token(info))


MessageT = TypeVar("MessageT", bound=Message)


def _message(message: MessageT, value: Any, flag: str) -> MessageT:
    """`value` (parsed JSON) in the shape of `message`, whose fields follow S2's JSON names."""
    try:
        return json_format.ParseDict(value, message)
    except json_format.ParseError as error:
        raise UsageError(f"{flag}: {error}") from None


async def _streams(client: S2SClient, args: argparse.Namespace) -> None:
    _check_management_args(
        args, "a basin and no stream name: use --prefix", "a basin and a stream name"
    )
    if args.action == "list":
        _print_listing((await client.list_streams(args.basin, prefix=args.prefix or "")).streams)
    elif args.action == "create":
        config = _config(stream_config_from_json, args.config)
        await client.create_stream(args.basin, args.name, config)
        print(f"created stream {args.name}")
    elif args.action == "delete":
        await client.delete_stream(args.basin, args.name)
        print(f"deleting stream {args.name}")
    elif args.config is not None:
        patch: StreamConfigPatch = _config(stream_patch_from_json, args.config)
        message, mask = _stream_reconfiguration(patch)
        config = await client.reconfigure_stream(args.basin, args.name, message, mask)
        _print_json(stream_config_to_json(config))
    else:
        _print_json(stream_config_to_json(await client.get_stream_config(args.basin, args.name)))


_MASK_PATH_OF_FIELD = {
    "storage_class": "storage_class",
    "retention": "retention_policy",
    "timestamping_mode": "timestamping.mode",
    "timestamping_uncapped": "timestamping.uncapped",
    "delete_on_empty_min_age_secs": "delete_on_empty",
}
"""`StreamConfig` field -> the gRPC field-mask path that sets (or, left unset, clears) it."""


def _stream_reconfiguration(patch: StreamConfigPatch) -> tuple[cpb.StreamConfig, list[str]]:
    """A patch as the gRPC reconfigure request takes it: the new values and the mask of the
    fields to change; a masked field left unset is cleared (JSON null)."""
    message = stream_config_to_proto(patch_stream_config(StreamConfig(), patch))
    return message, [_MASK_PATH_OF_FIELD[name] for name in patch]


def _basin_reconfiguration(patch: BasinConfigPatch) -> tuple[cpb.BasinConfig, list[str]]:
    message = cpb.BasinConfig()
    mask: list[str] = []
    if patch.clear_default_stream_config:
        mask.append("default_stream_config")
    if patch.default_stream_config is not None:
        defaults, paths = _stream_reconfiguration(patch.default_stream_config)
        message.default_stream_config.CopyFrom(defaults)
        mask += [f"default_stream_config.{path}" for path in paths]
    if patch.stream_cipher_set:
        cipher = BasinConfig(stream_cipher=patch.stream_cipher)
        message.stream_cipher = basin_config_to_proto(cipher).stream_cipher
        mask.append("stream_cipher")
    for flag in ("create_stream_on_append", "create_stream_on_read"):
        value = getattr(patch, flag)
        if value is not None:
            setattr(message, flag, value)
            mask.append(flag)
    return message, mask


# --- append ------------------------------------------------------------------------------

LINE_BYTES_MAX = BATCH_METERED_BYTES_MAX
"""The longest stdin line read: a record longer than an append takes (1 MiB metered) could
never be appended, and reading it whole would take unbounded memory."""

NDJSON_FIELDS = ("body", "headers", "timestamp")


def _utf8(text: str, where: str) -> bytes:
    try:
        return text.encode()
    except UnicodeEncodeError as error:
        raise UsageError(
            f"{where} holds {text[error.start : error.end]!r}, a lone surrogate: not valid "
            "Unicode text"
        ) from None


def _ndjson_body(value: Any, where: str) -> bytes:
    """A string body is stored as its text; any other JSON value as its (compact) JSON text,
    which is what reading it back and parsing it expects."""
    if isinstance(value, str):
        return _utf8(value, f"{where} body")
    try:
        # allow_nan=False: Python reads 1e400 as infinity and NaN as nan, which would be stored
        # as the non-JSON words Infinity and NaN, unreadable to every other JSON parser.
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise UsageError(
            f"{where} body has a number JSON cannot hold (NaN, Infinity, or too large)"
        ) from None
    return _utf8(text, f"{where} body")


def _record_from_json(line: bytes, where: str) -> pb.AppendRecord:
    try:
        obj = json.loads(line.decode())
    except UnicodeDecodeError as error:
        raise UsageError(f"{where} is not UTF-8 (byte {error.start + 1}): NDJSON is text") from None
    except json.JSONDecodeError as error:
        raise UsageError(f"{where} is not JSON: {error.msg} at column {error.colno}") from None
    except RecursionError:
        raise UsageError(f"{where} is JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise UsageError(f'{where} must be a JSON object such as {{"body": "text"}}')
    unknown = sorted(set(obj) - set(NDJSON_FIELDS))
    if unknown:
        raise UsageError(
            f"{where} has the field {unknown[0]!r}: the fields are {', '.join(NDJSON_FIELDS)}"
        )
    record = pb.AppendRecord(body=_ndjson_body(obj["body"], where) if "body" in obj else b"")
    headers = obj.get("headers") or []
    if not isinstance(headers, list):
        raise UsageError(f'{where} headers must be a list of ["name", "value"] pairs')
    for header in headers:
        if not (
            isinstance(header, list)
            and len(header) == 2
            and all(isinstance(h, str) for h in header)
        ):
            raise UsageError(
                f'{where} headers must be a list of ["name", "value"] string pairs, got '
                f"{json.dumps(header, ensure_ascii=False)[:80]}"
            )
        record.headers.add(name=_utf8(header[0], where), value=_utf8(header[1], where))
    timestamp = obj.get("timestamp")
    if timestamp is not None:
        if isinstance(timestamp, bool) or not isinstance(timestamp, int):
            raise UsageError(f"{where} timestamp must be milliseconds since the epoch, a number")
        if not 0 <= timestamp <= U64_MAX:
            raise UsageError(f"{where} timestamp must be from 0 to {U64_MAX}")
        record.timestamp = timestamp
    return record


def _lines(stream: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """Numbered lines without their newline; refuses one too long to ever be appended."""
    number = 0
    while line := stream.readline(LINE_BYTES_MAX + 1):
        number += 1
        if line.endswith(b"\n"):
            line = line[:-1]
        elif len(line) > LINE_BYTES_MAX:
            raise UsageError(
                f"stdin line {number} is longer than an append takes ({LINE_BYTES_MAX} bytes)"
            )
        yield number, line


def _batches(stream: IO[bytes], ndjson: bool) -> Iterator[list[pb.AppendRecord]]:
    batch: list[pb.AppendRecord] = []
    size = 0
    for line_number, line in _lines(stream):
        where = f"stdin line {line_number}"
        record = _record_from_json(line, where) if ndjson else pb.AppendRecord(body=line)
        record_size = metered_size(record)
        if record_size > BATCH_METERED_BYTES_MAX:
            raise UsageError(
                f"{where} is a record of {record_size} metered bytes, more than an append "
                f"takes ({BATCH_METERED_BYTES_MAX})"
            )
        if batch and (
            len(batch) >= BATCH_RECORDS_MAX or size + record_size > BATCH_METERED_BYTES_MAX
        ):
            yield batch
            batch, size = [], 0
        batch.append(record)
        size += record_size
    if batch:
        yield batch


def _stream(client: S2SClient, args: argparse.Namespace) -> Stream:
    return client.stream(args.basin, args.stream, encryption_key=args.encryption_key)


async def _append(client: S2SClient, args: argparse.Namespace) -> None:
    stream = _stream(client, args)
    match = args.match_seq_num
    total = 0
    last: pb.AppendAck | None = None
    try:
        # Bytes, not text: a plain line is stored exactly as it was, whatever its encoding.
        for batch in _batches(sys.stdin.buffer, args.ndjson):
            last = await stream.append(batch, match_seq_num=match, fencing_token=args.fencing_token)
            total += len(batch)
            match = None if match is None else last.end.seq_num
    except (UsageError, S2SError, S2Error) as error:
        if last is None:
            raise
        # Earlier batches are durable: say so, so a retry can start after them.
        done = f"the first {total} lines were appended as seq_num {_span(last, total)}, no more"
        if isinstance(error, UsageError):
            raise UsageError(f"{error}; {done}") from None
        raise S2SError(error.code, f"{error.message}; {done}") from None
    if last is None:
        raise UsageError("nothing to append: stdin was empty")
    print(f"appended {total} records, seq_num {_span(last, total)}")


def _span(last: pb.AppendAck, total: int) -> str:
    return f"{last.end.seq_num - total}..{last.end.seq_num - 1}"


# --- read ----------------------------------------------------------------------------------


def _ndjson_line(record: pb.SequencedRecord) -> str:
    headers = [
        [h.name.decode("utf-8", errors="replace"), h.value.decode("utf-8", errors="replace")]
        for h in record.headers
    ]
    return json.dumps(
        {
            "seq_num": record.seq_num,
            "timestamp": record.timestamp,
            "headers": headers,
            "body": record.body.decode("utf-8", errors="replace"),
        },
        ensure_ascii=False,
    )


async def _read(client: S2SClient, args: argparse.Namespace) -> None:
    stream = _stream(client, args)
    start: dict[str, Any] = {}
    if args.from_ts is not None:
        start["timestamp"] = args.from_ts
    elif args.tail_offset is not None:
        start["tail_offset"] = args.tail_offset
    else:
        start["seq_num"] = args.from_seq or 0
    count = args.count
    if not args.follow and count is None:
        tail = await stream.check_tail()
        count = tail.seq_num  # everything up to now, then stop
        if count == 0:
            return
    out = sys.stdout.buffer
    async for batch in stream.read_session(count=count, clamp=True, **start):
        for record in batch.records:
            # A plain body goes out as the bytes appended, so append and read round-trip.
            out.write(_ndjson_line(record).encode() if args.ndjson else record.body)
            out.write(b"\n")
        if args.follow:
            out.flush()
    out.flush()


async def _tail(client: S2SClient, args: argparse.Namespace) -> None:
    tail = await client.stream(args.basin, args.stream).check_tail()
    _print_json({"seq_num": tail.seq_num, "timestamp": tail.timestamp})


async def _fence(client: S2SClient, args: argparse.Namespace) -> None:
    ack = await _stream(client, args).append(
        [fence_record(args.token)], fencing_token=args.fencing_token
    )
    print(f"fenced at seq_num {ack.start.seq_num}")


async def _trim(client: S2SClient, args: argparse.Namespace) -> None:
    ack = await _stream(client, args).append([trim_record(args.seq_num)])
    print(f"trim requested at seq_num {ack.start.seq_num}")


# --- the lake ------------------------------------------------------------------------------


def materialization_json(status: lpb.MaterializationStatus) -> dict[str, Any]:
    """The status in the JSON shape of the HTTP API: unset optional fields are null."""

    def optional(key: str) -> Any:
        return getattr(status, key) if status.HasField(key) else None

    return {
        "name": status.name,
        "source": {"basin": status.source.basin, "stream": status.source.stream},
        "table": status.table,
        "mode": status.mode,
        "primary_key": optional("primary_key"),
        "select": optional("select"),
        "where": optional("where"),
        "partition_by": list(status.partition_by),
        "create_table": status.create_table,
        "state": status.state,
        "last_error": optional("last_error"),
        "applied_seq_num": status.applied_seq_num,
        "tail_seq_num": optional("tail_seq_num"),
        "lag_records": status.lag_records,
        "lag_seconds": status.lag_seconds,
        "rows_applied": status.rows_applied,
        "rows_rejected": status.rows_rejected,
        "last_snapshot_id": optional("last_snapshot_id"),
        "last_commit_at": optional("last_commit_at"),
        "records_skipped": status.records_skipped,
    }


CREATE_FLAGS = (
    "--table",
    "--basin",
    "--stream",
    "--mode",
    "--primary-key",
    "--select",
    "--where",
    "--partition-by",
    "--create-table",
    "--paused",
)


async def _materializations(client: S2SClient, args: argparse.Namespace) -> None:
    if args.action != "create":
        _refuse_flags(args, "create", *CREATE_FLAGS)
    if args.action == "list":
        if args.name:
            raise UsageError("materializations list takes no name")
        for status in await client.list_materializations():
            source = f"{status.source.basin}/{status.source.stream}"
            print(
                f"{status.name}\t{status.state}\t{source} -> {status.table}\t"
                f"{status.rows_applied} rows, {status.lag_records} behind"
            )
        return
    if not args.name:
        raise UsageError(f"materializations {args.action} needs a name")
    if args.action == "create":
        if not args.table:
            raise UsageError("materializations create needs --table schema.table")
        status = await client.create_materialization(
            args.name,
            args.table,
            basin=args.basin,
            stream=args.stream,
            mode=args.mode or "append",
            primary_key=args.primary_key,
            select=args.select,
            where=args.where,
            partition_by=args.partition_by,
            create_table=args.create_table,
            paused=args.paused,
        )
        source = f"{status.source.basin}/{status.source.stream}"
        print(f"created materialization {status.name}: {source} -> {status.table} ({status.state})")
    elif args.action == "get":
        _print_json(materialization_json(await client.get_materialization(args.name)))
    elif args.action == "pause":
        await client.pause_materialization(args.name)
        print(f"paused materialization {args.name}")
    elif args.action == "resume":
        await client.resume_materialization(args.name)
        print(f"resumed materialization {args.name}")
    else:
        await client.delete_materialization(args.name)
        print(f"deleted materialization {args.name}")


def _cell_text(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    # One line per row keeps the columns aligned.
    return str(value).replace("\n", "\\n")


def format_table(result: SqlResult) -> str:
    """Aligned columns under a header, numbers right-aligned, then the row count."""
    table = result.table
    columns = table.column_names
    # Column by column: a result may repeat a column name (SELECT 1 AS a, 2 AS a).
    cells = [[_cell_text(value) for value in column.to_pylist()] for column in table.columns]
    rows = [list(row) for row in zip(*cells, strict=True)] if cells else []
    numeric = [
        pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_decimal(f.type)
        for f in table.schema
    ]
    widths = [max([len(name)] + [len(row[i]) for row in rows]) for i, name in enumerate(columns)]

    def line(cells: list[str]) -> str:
        return " | ".join(
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(cells, widths, numeric, strict=True)
        ).rstrip()

    lines = [line(columns), "-+-".join("-" * width for width in widths)]
    lines += [line(row) for row in rows]
    lines.append(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    if result.truncated:
        lines.append("(truncated: more rows matched; raise --limit or narrow the query)")
    return "\n".join(lines)


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)  # timestamps, dates, decimals, UUIDs: their usual text form


async def _sql(client: S2SClient, args: argparse.Namespace) -> None:
    result = await client.sql(args.query, args.limit)
    if not args.json:
        print(format_table(result))
        return
    for row in result.table.to_pylist():
        print(json.dumps(row, ensure_ascii=False, default=_json_default))
    if result.truncated:
        print("truncated: more rows matched than were returned", file=sys.stderr)


# --- bench ---------------------------------------------------------------------------------


async def _bench(client: S2SClient, args: argparse.Namespace) -> None:
    record = pb.AppendRecord(body=b"x" * args.record_bytes)
    # Checked before the batch is built: 1000 records of 1 MiB would take 1 GiB to refuse.
    batch_metered = metered_size(record) * args.batch_records
    if batch_metered > BATCH_METERED_BYTES_MAX:
        raise UsageError(
            f"{args.batch_records} records of {args.record_bytes} bytes are {batch_metered} "
            f"metered bytes, more than an append takes ({BATCH_METERED_BYTES_MAX}): lower "
            "--record-bytes or --batch-records"
        )
    # Our own process: the server's allocator settings spare it re-faulting each batch buffer.
    allocator.tune()
    try:
        await client.create_stream(args.basin, args.stream)
    except S2SError as error:
        if error.code != "resource_already_exists":
            raise
    stream = _stream(client, args)
    message = pb.AppendInput(records=[record] * args.batch_records)
    batch_bytes = args.record_bytes * args.batch_records
    latencies: list[float] = []
    failures: list[BaseException] = []
    started = time.perf_counter()
    deadline = started + args.seconds
    next_report = started + 1.0

    def on_ack(began: float) -> Callable[[asyncio.Future[pb.AppendAck]], None]:
        def done(future: asyncio.Future[pb.AppendAck]) -> None:
            if future.cancelled():
                return
            # Taking the exception marks it retrieved: no "never retrieved" traceback later.
            error = future.exception()
            if error is None:
                latencies.append(time.perf_counter() - began)
            else:
                failures.append(error)

        return done

    async with stream.append_session(inflight_batches_max=args.inflight) as session:
        while (now := time.perf_counter()) < deadline and not failures:
            future = await session.submit(message)
            future.add_done_callback(on_ack(now))
            if now >= next_report:
                rate = len(latencies) * batch_bytes / (now - started) / 2**20
                print(
                    f"\r{len(latencies)} batches acked, {rate:.1f} MiB/s", end="", file=sys.stderr
                )
                next_report = now + 1.0
    elapsed = time.perf_counter() - started
    if next_report > started + 1.0:
        print(file=sys.stderr)  # ends the progress line
    if failures:
        raise failures[0]
    if not latencies:
        raise UsageError(f"no batch was acknowledged within --seconds {args.seconds:g}: give more")
    ordered = sorted(latencies)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1e3

    _print_json(
        {
            "batches": len(latencies),
            "records_per_s": round(len(latencies) * args.batch_records / elapsed),
            "mib_per_s": round(len(latencies) * batch_bytes / elapsed / 2**20, 1),
            "ack_latency_ms": {
                "p50": round(pct(50), 2),
                "p90": round(pct(90), 2),
                "p99": round(pct(99), 2),
            },
        }
    )
