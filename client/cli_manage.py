"""`s2s basins`, `s2s streams` and `s2s ls`: create, list, delete, show and reconfigure basins
and streams. Lists are tables with headers (every page, unless `--limit`); creations,
deletions and reconfigurations are logged at info."""

from __future__ import annotations

import argparse
import logging
from typing import Any

from client import S2SClient
from client.cli_args import S2_URI_SCHEME, Parser, UsageError, json_text, split_s2_uri, whole_number
from client.cli_command import Command, basin_name
from client.cli_config import (
    BASIN_FLAGS,
    STREAM_FLAGS,
    add_basin_config_flags,
    add_stream_config_flags,
    basin_flags_json,
    basin_reconfiguration,
    merged_config,
    parse_config,
    stream_flags_json,
    stream_reconfiguration,
)
from client.cli_output import Output, format_time
from s2s.config import (
    basin_config_from_json,
    basin_config_to_json,
    basin_patch_from_json,
    stream_config_from_json,
    stream_config_to_json,
    stream_patch_from_json,
)
from s2s.logs import fields
from s2s.v1 import control_pb2 as cpb

log = logging.getLogger(__name__)

PAGE_LIMIT_MAX = 1000
"""The most names the server lists in one page."""
ACTIONS = ("create", "list", "delete", "config", "reconfigure")
ACTIONS_HELP = (
    "create; list (a table, --prefix to filter); delete; config (print the configuration, or "
    "change the fields --config gives); reconfigure (change the fields given as flags or "
    "--config)"
)
CONFIG_ACTIONS = ("create", "config", "reconfigure")


def _add_listing_arguments(parser: Parser) -> None:
    parser.add_argument("--prefix", help="list only names starting with this (list)")
    parser.add_argument(
        "--start-after", metavar="NAME", help="list only names after this one (list)"
    )
    parser.add_argument(
        "--limit",
        type=whole_number(1, 2**31 - 1),
        help="list at most this many basins or streams (list)",
    )


def _add_config_argument(parser: Parser, what: str) -> None:
    parser.add_argument(
        "--config",
        type=json_text,
        metavar="JSON",
        help=f"{what} config as S2's JSON (create), or the fields to change, null clearing one "
        "(config, reconfigure)",
    )


def add_basins_arguments(parser: Parser) -> None:
    parser.add_argument("action", choices=ACTIONS, help=ACTIONS_HELP)
    parser.add_argument(
        "name", nargs="?", default="", metavar="BASIN", help="the basin's name, or s2://BASIN"
    )
    _add_config_argument(parser, "basin")
    add_basin_config_flags(parser)
    _add_listing_arguments(parser)


def add_streams_arguments(parser: Parser) -> None:
    parser.add_argument("action", choices=ACTIONS, help=ACTIONS_HELP)
    parser.add_argument(
        "basin",
        metavar="BASIN|s2://BASIN/STREAM",
        help="the basin, or the stream as s2://BASIN/STREAM (list: s2://BASIN/PREFIX)",
    )
    parser.add_argument(
        "name", nargs="?", default="", metavar="STREAM", help="the stream, when BASIN is a name"
    )
    _add_config_argument(parser, "stream")
    add_stream_config_flags(parser, defaults=False)
    _add_listing_arguments(parser)


def add_ls_arguments(parser: Parser) -> None:
    parser.add_argument(
        "target",
        nargs="?",
        metavar="BASIN|s2://BASIN/PREFIX",
        help="list this basin's streams (those starting with PREFIX); none: list the basins",
    )
    _add_listing_arguments(parser)


# --- checks --------------------------------------------------------------------------------


def _given(args: argparse.Namespace, flag: str) -> bool:
    return getattr(args, flag.removeprefix("--").replace("-", "_"), None) not in (None, False, [])


def refuse_flags(args: argparse.Namespace, allowed_with: str, *flags: str) -> None:
    """A flag that the action would ignore is refused rather than silently dropped."""
    given = [flag for flag in flags if _given(args, flag)]
    if given:
        verb = "goes" if len(given) == 1 else "go"
        raise UsageError(
            f"{' and '.join(given)} only {verb} with {allowed_with}, not {args.action}"
        )


def _check_flags(args: argparse.Namespace, config_flags: tuple[str, ...]) -> None:
    listing = ("--prefix", "--start-after", "--limit")
    if args.action != "list":
        refuse_flags(args, "list", *listing)
    if args.action not in CONFIG_ACTIONS:
        refuse_flags(args, "create, config or reconfigure", "--config", *config_flags)
    if args.action == "config":
        refuse_flags(args, "create or reconfigure", *config_flags)


# --- listings ------------------------------------------------------------------------------


def _state(info: cpb.BasinInfo | cpb.StreamInfo) -> str:
    return "deleting" if info.HasField("deleted_at_ms") else "active"


def _deleted_at(info: cpb.BasinInfo | cpb.StreamInfo) -> str | None:
    return format_time(info.deleted_at_ms) if info.HasField("deleted_at_ms") else None


def basin_json(info: cpb.BasinInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "state": _state(info),
        "created_at": format_time(info.created_at_ms),
        "deleted_at": _deleted_at(info),
    }


def stream_json(basin: str, info: cpb.StreamInfo) -> dict[str, Any]:
    cipher = cpb.StreamCipher.Name(info.cipher)
    return {
        "basin": basin,
        "name": info.name,
        "uri": f"{S2_URI_SCHEME}{basin}/{info.name}",
        "state": _state(info),
        "created_at": format_time(info.created_at_ms),
        "deleted_at": _deleted_at(info),
        "cipher": None if info.cipher == 0 else cipher,
    }


def _page_limit(wanted: int | None, listed: int) -> int:
    return PAGE_LIMIT_MAX if wanted is None else min(PAGE_LIMIT_MAX, wanted - listed)


async def all_basins(client: S2SClient, args: argparse.Namespace) -> list[cpb.BasinInfo]:
    basins: list[cpb.BasinInfo] = []
    after = args.start_after or ""
    while True:
        page = await client.list_basins(
            prefix=args.prefix or "", start_after=after, limit=_page_limit(args.limit, len(basins))
        )
        basins += page.basins
        if not page.has_more or not page.basins or len(basins) == args.limit:
            return basins
        after = basins[-1].name


async def all_streams(
    client: S2SClient, basin: str, prefix: str, args: argparse.Namespace
) -> list[cpb.StreamInfo]:
    streams: list[cpb.StreamInfo] = []
    after = args.start_after or ""
    while True:
        page = await client.list_streams(
            basin, prefix=prefix, start_after=after, limit=_page_limit(args.limit, len(streams))
        )
        streams += page.streams
        if not page.has_more or not page.streams or len(streams) == args.limit:
            return streams
        after = streams[-1].name


def print_basins(out: Output, basins: list[cpb.BasinInfo]) -> None:
    items = [basin_json(info) for info in basins]
    rows = [[item["name"], item["state"], item["created_at"]] for item in items]
    out.listing(("NAME", "STATE", "CREATED"), rows, items)


def print_streams(out: Output, basin: str, streams: list[cpb.StreamInfo], uris: bool) -> None:
    items = [stream_json(basin, info) for info in streams]
    rows = [
        [item["uri"] if uris else item["name"], item["state"], item["created_at"]] for item in items
    ]
    out.listing(("STREAM" if uris else "NAME", "STATE", "CREATED"), rows, items)


# --- basins --------------------------------------------------------------------------------


async def basins(client: S2SClient, args: argparse.Namespace) -> None:
    _check_flags(args, BASIN_FLAGS + STREAM_FLAGS)
    out = Output(args.json)
    if args.action == "list":
        if args.name:
            raise UsageError("basins list takes no name: use --prefix to filter")
        print_basins(out, await all_basins(client, args))
        return
    if not args.name:
        raise UsageError(f"basins {args.action} needs a basin name")
    name = basin_name(args.name)
    flags = basin_flags_json(args)
    if args.action == "create":
        config = parse_config(basin_config_from_json, merged_config(args.config, flags))
        info = (await client.create_basin(name, config)).info
        log.info("created basin %s", name, extra=fields(event="create", basin=name))
        out.result(f"created basin {name}", basin_json(info))
    elif args.action == "delete":
        await client.delete_basin(name)
        log.info("deleting basin %s", name, extra=fields(event="delete", basin=name))
        out.result(f"deleting basin {name}", {"name": name, "state": "deleting"})
    elif args.action == "reconfigure" or args.config is not None:
        changes = merged_config(args.config, flags)
        if changes is None:
            raise UsageError("basins reconfigure needs a change: a config flag or --config")
        message, mask = basin_reconfiguration(parse_config(basin_patch_from_json, changes))
        config = await client.reconfigure_basin(name, message, mask)
        log.info(
            "reconfigured basin %s: %s",
            name,
            ", ".join(mask) or "nothing",
            extra=fields(event="reconfigure", basin=name, fields=mask),
        )
        out.document(basin_config_to_json(config))
    else:
        out.document(basin_config_to_json(await client.get_basin_config(name)))


# --- streams -------------------------------------------------------------------------------


def _stream_target(args: argparse.Namespace) -> tuple[str, str]:
    """(basin, stream name or list prefix) from `BASIN [NAME]` or `s2://BASIN/NAME`."""
    parts = split_s2_uri(args.basin)
    if parts is None:
        return args.basin, args.name
    if args.name:
        raise UsageError(f"{args.basin} already names the stream: {args.name!r} is one too many")
    if not parts[0]:
        raise UsageError(f"{args.basin!r} must be {S2_URI_SCHEME}BASIN/STREAM")
    return parts


async def streams(client: S2SClient, args: argparse.Namespace) -> None:
    _check_flags(args, STREAM_FLAGS)
    out = Output(args.json)
    basin, name = _stream_target(args)
    if args.action == "list":
        if name and args.prefix:
            raise UsageError("give the prefix once: in s2://BASIN/PREFIX or as --prefix")
        if name and split_s2_uri(args.basin) is None:
            raise UsageError("streams list takes a basin and no stream name: use --prefix")
        streams = await all_streams(client, basin, name or args.prefix or "", args)
        print_streams(out, basin, streams, uris=False)
        return
    if not name:
        raise UsageError(f"streams {args.action} needs a basin and a stream name")
    uri = f"{S2_URI_SCHEME}{basin}/{name}"
    flags = stream_flags_json(args)
    if args.action == "create":
        config = parse_config(stream_config_from_json, merged_config(args.config, flags))
        info = (await client.create_stream(basin, name, config)).info
        log.info("created stream %s", uri, extra=fields(event="create", basin=basin, stream=name))
        out.result(f"created stream {name}", stream_json(basin, info))
    elif args.action == "delete":
        await client.delete_stream(basin, name)
        log.info("deleting stream %s", uri, extra=fields(event="delete", basin=basin, stream=name))
        out.result(f"deleting stream {name}", {"basin": basin, "name": name, "state": "deleting"})
    elif args.action == "reconfigure" or args.config is not None:
        changes = merged_config(args.config, flags)
        if changes is None:
            raise UsageError("streams reconfigure needs a change: a config flag or --config")
        message, mask = stream_reconfiguration(parse_config(stream_patch_from_json, changes))
        config = await client.reconfigure_stream(basin, name, message, mask)
        log.info(
            "reconfigured stream %s: %s",
            uri,
            ", ".join(mask) or "nothing",
            extra=fields(event="reconfigure", basin=basin, stream=name, fields=mask),
        )
        out.document(stream_config_to_json(config))
    else:
        out.document(stream_config_to_json(await client.get_stream_config(basin, name)))


# --- ls ------------------------------------------------------------------------------------


async def ls(client: S2SClient, args: argparse.Namespace) -> None:
    out = Output(args.json)
    if args.target is None:
        print_basins(out, await all_basins(client, args))
        return
    parts = split_s2_uri(args.target)
    basin, prefix = parts if parts is not None else (args.target, "")
    if not basin:
        raise UsageError(f"{args.target!r} must be BASIN or {S2_URI_SCHEME}BASIN/PREFIX")
    if prefix and args.prefix:
        raise UsageError("give the prefix once: in s2://BASIN/PREFIX or as --prefix")
    streams = await all_streams(client, basin, prefix or args.prefix or "", args)
    print_streams(out, basin, streams, uris=True)


BASINS = Command(
    "basins", "create, list, delete and reconfigure basins", add_basins_arguments, basins
)
STREAMS = Command(
    "streams", "create, list, delete and reconfigure streams", add_streams_arguments, streams
)
LS = Command("ls", "list the basins, or a basin's streams", add_ls_arguments, ls)
