"""`s2s kv get|put|del|ls|history|watch`: a key-value store on a stream, from the command line
(the SDK's `KvStore`; docs/adr/0015-kv-store.md).

    s2s kv put settings color blue        # commit one change
    s2s kv get settings color             # prints: blue
    s2s kv ls settings --values           # color<TAB>blue
    s2s kv watch settings --json          # one line per change, live

`--basin` names the store's basin (default `kv-stores`, made on the first commit). Each
command loads the store; `put` and `del` commit one change, loading again and retrying if
another commit landed first. `--json` (the table's, client/cli.py) prints one JSON object per
line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from client import KvChange, KvConflict, KvStore, S2SClient, S2SError
from client.cli_args import Parser, UsageError, whole_number
from client.cli_command import Command
from client.cli_output import Output, print_json
from s2s.errors import S2Error
from s2s.kv_format import DEFAULT_BASIN, validate_store_name
from s2s.logs import fields

log = logging.getLogger(__name__)

ACTIONS = ("get", "put", "del", "ls", "history", "watch")
COMMIT_ATTEMPTS_MAX = 5
"""`put` and `del` load again and retry after a conflict this many times at most."""


def add_arguments(parser: Parser) -> None:
    parser.add_argument(
        "action",
        choices=ACTIONS,
        help="get a key's value; put or del one; ls the keys; a key's history; watch changes",
    )
    parser.add_argument("store", help="the store's name (its stream is kv/NAME)")
    parser.add_argument("key", nargs="?", help="the key (get, put, del, history)")
    parser.add_argument("value", nargs="?", help="the value (put)")
    parser.add_argument("--basin", default=DEFAULT_BASIN, help="the store's basin")
    parser.add_argument("--prefix", help="only keys starting with this (ls)")
    parser.add_argument("--values", action="store_true", help="print values too (ls)")
    parser.add_argument(
        "--limit",
        type=whole_number(1, 2**32 - 1),
        help="only the latest N changes, each a record of the stream (history)",
    )


async def run(client: S2SClient, args: argparse.Namespace) -> None:
    _check_arguments(args)
    store = await client.get_kv_store(
        args.store, basin=args.basin, encryption_key=args.encryption_key
    )
    if args.action == "get":
        _get(store, args)
    elif args.action in ("put", "del"):
        await _change(store, args)
    elif args.action == "ls":
        _list(store, args)
    elif args.action == "history":
        for change in await store.history(args.key, args.limit):
            _print_change(change, args.json)
    else:
        async for change in store.watch():
            _print_change(change, args.json)
            sys.stdout.flush()


def _check_arguments(args: argparse.Namespace) -> None:
    try:
        validate_store_name(args.store)
    except S2Error as error:
        raise UsageError(error.message) from None
    takes_key = args.action in ("get", "put", "del", "history")
    if takes_key and args.key is None:
        raise UsageError(f"kv {args.action} needs a key")
    if not takes_key and args.key is not None:
        raise UsageError(f"kv {args.action} takes no key")
    if args.action == "put" and args.value is None:
        raise UsageError("kv put needs a value")
    if args.action != "put" and args.value is not None:
        raise UsageError("only kv put takes a value")
    for flag, actions in (("prefix", ("ls",)), ("values", ("ls",)), ("limit", ("history",))):
        if getattr(args, flag) not in (None, False) and args.action not in actions:
            raise UsageError(f"--{flag} goes with kv {' or '.join(actions)} only")


def _get(store: KvStore, args: argparse.Namespace) -> None:
    if args.key not in store:
        raise _not_found(store, args.key)
    entry = store.entry(args.key)
    Output(args.json).result(
        entry.value,
        {
            "key": args.key,
            "value": entry.value,
            "seq_num": entry.seq_num,
            "timestamp": entry.timestamp,
            "revision": store.revision,
        },
    )


async def _change(store: KvStore, args: argparse.Namespace) -> None:
    for _ in range(COMMIT_ATTEMPTS_MAX):
        try:
            if args.action == "put":
                store[args.key] = args.value
            else:
                del store[args.key]
        except KeyError:
            raise _not_found(store, args.key) from None
        except (TypeError, ValueError) as error:
            raise UsageError(str(error)) from None
        try:
            revision = await store.commit()
        except KvConflict:
            await store.reload()
            continue
        verb = "put" if args.action == "put" else "deleted"
        log.info(
            "%s %s in kv store %s/%s, revision %d",
            verb,
            args.key,
            store.basin,
            store.name,
            revision,
            extra=fields(event=f"kv-{args.action}", basin=store.basin, stream=store.stream_name),
        )
        Output(args.json).result(
            f"{verb} {args.key} in {store.name}, revision {revision}",
            {"key": args.key, "revision": revision},
        )
        return
    raise S2SError("kv_conflict", f"store {store.name!r} changed under every attempt: try again")


def _list(store: KvStore, args: argparse.Namespace) -> None:
    prefix = args.prefix or ""
    for key in store:
        if not key.startswith(prefix):
            continue
        if args.json:
            entry = store.entry(key)
            item: dict[str, Any] = {"key": key, "seq_num": entry.seq_num}
            if args.values:
                item["value"] = entry.value
            print_json(item)
        elif args.values:
            print(f"{key}\t{store[key]}")
        else:
            print(key)


def _print_change(change: KvChange, as_json: bool) -> None:
    text = f"put {change.key} {change.value}" if change.op == "put" else f"del {change.key}"
    Output(as_json).result(
        text,
        {
            "op": change.op,
            "key": change.key,
            "value": change.value,
            "seq_num": change.seq_num,
            "timestamp": change.timestamp,
        },
    )


def _not_found(store: KvStore, key: str) -> S2SError:
    return S2SError("key_not_found", f"no key {key!r} in store {store.name!r}")


COMMAND = Command(
    "kv",
    "a key-value store on a stream: get, put, del, ls, history, watch",
    add_arguments,
    run,
    stream_key=True,
    description="A key-value store kept in the stream kv/STORE of a basin (default kv-stores): "
    "get a key, put or del one (each a commit of its own), ls the keys, a key's history, or "
    "watch changes as they land. docs/adr/0015-kv-store.md",
)
