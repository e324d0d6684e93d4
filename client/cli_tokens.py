"""`s2s tokens`: issue, list and revoke access tokens (S2's scopes, as JSON)."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message

from client import S2SClient
from client.cli_args import Parser, UsageError, json_text, rfc3339_ms
from client.cli_command import Command
from client.cli_manage import refuse_flags
from client.cli_output import Output, format_time
from s2s.logs import fields
from s2s.v1 import access_pb2 as apb

log = logging.getLogger(__name__)

ISSUE_FLAGS = ("--scope", "--expires-at", "--auto-prefix-streams", "--limits")


def add_arguments(parser: Parser) -> None:
    parser.add_argument(
        "action",
        choices=["issue", "list", "revoke"],
        help="issue (prints the new token's secret, once); list (a table); revoke",
    )
    parser.add_argument("id", nargs="?", default="", help="the token's id (issue, revoke)")
    parser.add_argument(
        "--scope",
        type=json_text,
        metavar="JSON",
        help='S2\'s scope as JSON (issue), e.g. \'{"basins": {"exact": "b"}, "streams": '
        '{"prefix": ""}, "op_groups": {"stream": {"read": true}}}\'',
    )
    parser.add_argument(
        "--expires-at",
        type=rfc3339_ms,
        metavar="TIME",
        help="RFC 3339 expiry, e.g. 2027-01-01T00:00:00Z (issue); default: this token's own",
    )
    parser.add_argument(
        "--auto-prefix-streams",
        action="store_true",
        help="stream names are relative to the scope's stream prefix (issue)",
    )
    parser.add_argument(
        "--limits",
        type=json_text,
        metavar="JSON",
        help='rate limits (issue): {"appends_per_s": appends a second, "mib_per_s": MiB a second}',
    )
    parser.add_argument("--prefix", help="list only ids starting with this (list)")


MessageT = TypeVar("MessageT", bound=Message)


def _message(message: MessageT, value: Any, flag: str) -> MessageT:
    """`value` (parsed JSON) in the shape of `message`, whose fields follow S2's JSON names."""
    try:
        return json_format.ParseDict(value, message)
    except json_format.ParseError as error:
        raise UsageError(f"{flag}: {error}") from None


def token_json(info: apb.AccessTokenInfo) -> dict[str, Any]:
    return json_format.MessageToDict(info, preserving_proto_field_name=True)


async def tokens(client: S2SClient, args: argparse.Namespace) -> None:
    out = Output(args.json)
    if args.action == "list":
        refuse_flags(args, "issue", *ISSUE_FLAGS)
        if args.id:
            raise UsageError("tokens list takes no id: use --prefix to filter")
        page = await client.list_access_tokens(prefix=args.prefix or "")
        infos = list(page.access_tokens)
        rows = [
            [
                info.id,
                format_time(info.expires_at_ms) if info.HasField("expires_at_ms") else "never",
                "yes" if info.auto_prefix_streams else "no",
                json.dumps(token_json(info).get("scope", {}), separators=(",", ":")),
            ]
            for info in infos
        ]
        out.listing(("ID", "EXPIRES", "AUTO-PREFIX", "SCOPE"), rows, map(token_json, infos))
        return
    refuse_flags(args, "list", "--prefix")
    if not args.id:
        raise UsageError(f"tokens {args.action} needs the token's id")
    if args.action == "revoke":
        refuse_flags(args, "issue", *ISSUE_FLAGS)
        await client.revoke_access_token(args.id)
        log.info("revoked access token %s", args.id, extra=fields(event="delete", token=args.id))
        out.result(f"revoked access token {args.id}", {"revoked": args.id})
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
    secret = await client.issue_access_token(info)
    log.info("issued access token %s", args.id, extra=fields(event="create", token=args.id))
    out.result(secret, {"id": args.id, "access_token": secret})


COMMAND = Command("tokens", "issue, list and revoke access tokens", add_arguments, tokens)
