"""`s2s materializations` and `s2s sql`: the lake's tables, fed by streams, and read-only SQL
over them.

`s2s sql` takes its query as an argument, from `-f FILE` or from stdin, and prints the rows as
a table, CSV, JSON lines or Markdown. Without a query on a terminal (or with `-i`) it is
interactive: statements end with `;`, `\\format NAME` switches the output, `\\q` or Ctrl-D
leaves, and a failed statement prints its error and waits for the next.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from client import S2SClient, S2SError, SqlResult
from client.cli_args import Parser, UsageError, whole_number
from client.cli_command import Command
from client.cli_manage import refuse_flags
from client.cli_output import Output
from s2s.logs import fields
from s2s.v1 import lake_pb2 as lpb

log = logging.getLogger(__name__)

# --- materializations ----------------------------------------------------------------------

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


def add_materializations_arguments(parser: Parser) -> None:
    parser.add_argument(
        "action",
        choices=["create", "list", "get", "pause", "resume", "delete"],
        help="create; list (a table); get (its status as JSON); pause; resume; delete",
    )
    parser.add_argument("name", nargs="?", default="", help="the materialization's name")
    parser.add_argument("--table", metavar="SCHEMA.TABLE", help="target table (create)")
    parser.add_argument(
        "--basin", help="source basin (create; default: the table's ingest stream's)"
    )
    parser.add_argument("--stream", help="source stream (create; default: schema.table)")
    parser.add_argument(
        "--mode", choices=["append", "merge"], help="append (default) or merge (create)"
    )
    parser.add_argument(
        "--primary-key", metavar="COLUMN", help="the column merge mode upserts on (create)"
    )
    parser.add_argument(
        "--select",
        metavar="SQL",
        help="DuckDB select list over seq_num, timestamp, headers and body (create)",
    )
    parser.add_argument(
        "--where", metavar="SQL", help="DuckDB predicate over the record columns (create)"
    )
    parser.add_argument(
        "--partition-by",
        nargs="+",
        action="extend",
        default=[],
        metavar="EXPR",
        help="partition columns, or year|month|day|hour(col), bucket(n, col) (create)",
    )
    parser.add_argument(
        "--create-table", action="store_true", help="create the table if missing (create)"
    )
    parser.add_argument("--paused", action="store_true", help="create it paused (create)")


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


def _source(status: lpb.MaterializationStatus) -> str:
    return f"{status.source.basin}/{status.source.stream}"


async def materializations(client: S2SClient, args: argparse.Namespace) -> None:
    out = Output(args.json)
    if args.action != "create":
        refuse_flags(args, "create", *CREATE_FLAGS)
    if args.action == "list":
        if args.name:
            raise UsageError("materializations list takes no name")
        statuses = await client.list_materializations()
        rows = [
            [
                s.name,
                s.state,
                _source(s),
                s.table,
                str(s.rows_applied),
                str(s.lag_records),
            ]
            for s in statuses
        ]
        columns = ("NAME", "STATE", "SOURCE", "TABLE", "ROWS", "LAG")
        out.listing(columns, rows, map(materialization_json, statuses))
        return
    if not args.name:
        raise UsageError(f"materializations {args.action} needs a name")
    if args.action == "get":
        out.document(materialization_json(await client.get_materialization(args.name)))
        return
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
        text = (
            f"created materialization {status.name}: {_source(status)} -> {status.table} "
            f"({status.state})"
        )
    elif args.action == "pause":
        status = await client.pause_materialization(args.name)
        text = f"paused materialization {args.name}"
    elif args.action == "resume":
        status = await client.resume_materialization(args.name)
        text = f"resumed materialization {args.name}"
    else:
        await client.delete_materialization(args.name)
        log.info(
            "deleted materialization %s",
            args.name,
            extra=fields(event="delete", materialization=args.name),
        )
        out.result(f"deleted materialization {args.name}", {"deleted": args.name})
        return
    log.info(text, extra=fields(event=args.action, materialization=args.name))
    out.result(text, materialization_json(status))


# --- sql -----------------------------------------------------------------------------------

SQL_FORMATS = ("table", "csv", "json", "markdown")
QUERY_BYTES_MAX = 1024 * 1024
"""The longest query read from a file or stdin."""


def add_sql_arguments(parser: Parser) -> None:
    parser.add_argument(
        "query",
        nargs="?",
        help="one read-only statement; none: -f FILE, else stdin, else (on a terminal) "
        "the interactive mode",
    )
    parser.add_argument(
        "-f", "--file", metavar="FILE", help="read the query from FILE ('-' for stdin)"
    )
    parser.add_argument(
        "-i",
        "--interactive",
        action="store_true",
        help="read statements ending with ';' one after another (\\q or Ctrl-D leaves)",
    )
    parser.add_argument(
        "--format",
        choices=SQL_FORMATS,
        default=None,
        help="table (default: aligned columns and a row count), csv (with a header), json "
        "(one object per row) or markdown",
    )
    parser.add_argument(
        "--limit", type=whole_number(1, 2**32 - 1), help="return at most this many rows"
    )


def _text(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    # One line per row keeps the columns aligned.
    return str(value).replace("\n", "\\n")


def _numeric(table: pa.Table) -> list[bool]:
    return [
        pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_decimal(f.type)
        for f in table.schema
    ]


def _cells(table: pa.Table, cell: Callable[[Any], str]) -> list[list[str]]:
    # Column by column: a result may repeat a column name (SELECT 1 AS a, 2 AS a).
    columns = [[cell(value) for value in column.to_pylist()] for column in table.columns]
    return [list(row) for row in zip(*columns, strict=True)] if columns else []


def format_table(result: SqlResult) -> str:
    """Aligned columns under a header, numbers right-aligned, then the row count."""
    table = result.table
    columns = table.column_names
    rows = _cells(table, _text)
    numeric = _numeric(table)
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
    return "\n".join(lines) + "\n"


def format_csv(result: SqlResult) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(result.table.column_names)
    writer.writerows(_cells(result.table, lambda v: "" if v is None else _plain(v)))
    return buffer.getvalue()


def format_markdown(result: SqlResult) -> str:
    def escape(value: Any) -> str:
        return _text(value).replace("|", "\\|")

    names = [name.replace("|", "\\|") for name in result.table.column_names]
    align = ["---:" if right else "---" for right in _numeric(result.table)]
    lines = ["| " + " | ".join(names) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in _cells(result.table, escape)]
    return "\n".join(lines) + "\n"


def format_json(result: SqlResult) -> str:
    return "".join(
        json.dumps(row, ensure_ascii=False, default=_plain) + "\n"
        for row in result.table.to_pylist()
    )


def _plain(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)  # timestamps, dates, decimals, UUIDs: their usual text form


FORMATTERS: dict[str, Callable[[SqlResult], str]] = {
    "table": format_table,
    "csv": format_csv,
    "json": format_json,
    "markdown": format_markdown,
}


def _output_format(args: argparse.Namespace) -> str:
    if args.json and args.format not in (None, "json"):
        raise UsageError(f"--json is --format json: it cannot go with --format {args.format}")
    return "json" if args.json else (args.format or "table")


def _print_result(result: SqlResult, output_format: str) -> None:
    sys.stdout.write(FORMATTERS[output_format](result))
    sys.stdout.flush()
    if result.truncated and output_format != "table":
        log.warning("truncated: more rows matched than were returned; raise --limit")


def _read_query(path: str) -> str:
    try:
        if path == "-":
            data = sys.stdin.buffer.read(QUERY_BYTES_MAX + 1)
        else:
            with open(path, "rb") as file:
                data = file.read(QUERY_BYTES_MAX + 1)
    except OSError as error:
        raise UsageError(f"-f {path}: {error.strerror}") from None
    where = "stdin" if path == "-" else path
    if len(data) > QUERY_BYTES_MAX:
        raise UsageError(f"{where} holds more than {QUERY_BYTES_MAX} bytes: not one query")
    try:
        query = data.decode().strip()
    except UnicodeDecodeError:
        raise UsageError(f"{where} is not UTF-8 text") from None
    if not query:
        raise UsageError(f"{where} holds no query")
    return query


async def sql(client: S2SClient, args: argparse.Namespace) -> None:
    output_format = _output_format(args)
    if args.query is not None and args.file is not None:
        raise UsageError("give the query once: as an argument or with -f")
    interactive = args.interactive or (
        args.query is None and args.file is None and sys.stdin.isatty()
    )
    if interactive:
        if args.query is not None or args.file is not None:
            raise UsageError("-i reads its statements from stdin: give no query or -f")
        await _interactive(client, args, output_format)
        return
    query = args.query if args.query is not None else _read_query(args.file or "-")
    _print_result(await client.sql(query, args.limit), output_format)


PROMPT = "s2s> "
PROMPT_CONTINUED = "  -> "


async def _interactive(client: S2SClient, args: argparse.Namespace, output_format: str) -> None:
    """Statements from stdin, each ending with ';' at the end of a line."""
    terminal = sys.stdin.isatty()
    if terminal:
        import readline  # noqa: F401 (line editing and history for input())
    lines: list[str] = []
    while True:
        # input() blocks the loop, which has nothing else to do while a person types; a
        # thread would keep the process from exiting on Ctrl-C while it waits.
        try:
            line = input((PROMPT_CONTINUED if lines else PROMPT) if terminal else "")
        except EOFError:
            if terminal:
                print()
            return
        stripped = line.strip()
        if not lines and stripped in ("\\q", "quit", "exit"):
            return
        if not lines and stripped.startswith("\\format"):
            name = stripped.removeprefix("\\format").strip()
            if name in FORMATTERS:
                output_format = name
            else:
                log.error("\\format takes one of %s", ", ".join(SQL_FORMATS))
            continue
        if stripped:
            lines.append(line)
        if not stripped.endswith(";"):
            continue
        query, lines = "\n".join(lines), []
        try:
            _print_result(await client.sql(query, args.limit), output_format)
        except S2SError as error:
            log.error("%s", error, extra=fields(code=error.code))


MATERIALIZATIONS = Command(
    "materializations",
    "manage materializations (streams applied to lake tables)",
    add_materializations_arguments,
    materializations,
)
SQL = Command(
    "sql",
    "run read-only SQL over the lake: rows as a table, CSV, JSON or Markdown",
    add_sql_arguments,
    sql,
)
