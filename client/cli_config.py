"""Basin and stream configurations on the command line: `--config JSON` (S2's JSON shapes, as
`s2s.config` reads them) or flags for single fields (`--retention-policy 7d`), merged into one
JSON object; and a patch turned into what the gRPC reconfigure calls take (values and a mask).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from client.cli_args import Parser, UsageError, boolean, duration_s
from s2s.config import (
    STORAGE_CLASSES,
    STREAM_CIPHERS,
    TIMESTAMPING_MODES,
    BasinConfig,
    BasinConfigPatch,
    StreamConfig,
    StreamConfigPatch,
    patch_stream_config,
)
from s2s.convert import basin_config_to_proto, stream_config_to_proto
from s2s.errors import S2Error
from s2s.v1 import control_pb2 as cpb

INFINITE = "infinite"


def retention(text: str) -> int | str:
    """`--retention-policy`: a duration in whole seconds of at least 1 s, or `infinite`."""
    if text == INFINITE:
        return INFINITE
    seconds = duration_s(text)
    if seconds == 0:
        raise argparse.ArgumentTypeError("must be at least 1s, or infinite")
    return seconds


STREAM_FLAGS = (
    "--storage-class",
    "--retention-policy",
    "--timestamping-mode",
    "--timestamping-uncapped",
    "--delete-on-empty-min-age",
)
BASIN_FLAGS = ("--create-stream-on-append", "--create-stream-on-read", "--stream-cipher")


def add_stream_config_flags(parser: Parser, defaults: bool) -> None:
    """Flags for single stream config fields; for a basin (`defaults`) they set the stream
    defaults."""
    whose = "new streams' default " if defaults else ""
    parser.add_argument(
        "--storage-class",
        choices=STORAGE_CLASSES,
        help=f"{whose}storage class (both are fsync'd before the ack here)",
    )
    parser.add_argument(
        "--retention-policy",
        type=retention,
        metavar="DURATION|infinite",
        help=f"{whose}retention: records older than DURATION (e.g. 7d, 12h, 3600s) are "
        "deleted, or infinite",
    )
    parser.add_argument(
        "--timestamping-mode",
        choices=TIMESTAMPING_MODES,
        help=f"{whose}timestamping mode: where record timestamps come from",
    )
    parser.add_argument(
        "--timestamping-uncapped",
        type=boolean,
        metavar="true|false",
        help=f"{whose}timestamping: whether client timestamps may be later than the arrival time",
    )
    parser.add_argument(
        "--delete-on-empty-min-age",
        type=duration_s,
        metavar="DURATION",
        help=f"{whose}delete-on-empty: a stream empty for DURATION (e.g. 1h, 7d) is deleted; "
        "0s never",
    )


def add_basin_config_flags(parser: Parser) -> None:
    add_stream_config_flags(parser, defaults=True)
    parser.add_argument(
        "--create-stream-on-append",
        type=boolean,
        metavar="true|false",
        help="an append to a stream that does not exist creates it",
    )
    parser.add_argument(
        "--create-stream-on-read",
        type=boolean,
        metavar="true|false",
        help="a read of a stream that does not exist creates it",
    )
    parser.add_argument(
        "--stream-cipher",
        choices=STREAM_CIPHERS,
        help="encrypt the records of streams created from now on with this cipher and the "
        "client's key",
    )


def stream_flags_json(args: argparse.Namespace) -> dict[str, Any]:
    """The stream config fields given as flags, as S2's JSON."""
    config: dict[str, Any] = {}
    if args.storage_class is not None:
        config["storage_class"] = args.storage_class
    if args.retention_policy is not None:
        policy = args.retention_policy
        config["retention_policy"] = {INFINITE: {}} if policy == INFINITE else {"age": policy}
    timestamping: dict[str, Any] = {}
    if args.timestamping_mode is not None:
        timestamping["mode"] = args.timestamping_mode
    if args.timestamping_uncapped is not None:
        timestamping["uncapped"] = args.timestamping_uncapped
    if timestamping:
        config["timestamping"] = timestamping
    if args.delete_on_empty_min_age is not None:
        config["delete_on_empty"] = {"min_age_secs": args.delete_on_empty_min_age}
    return config


def basin_flags_json(args: argparse.Namespace) -> dict[str, Any]:
    config: dict[str, Any] = {}
    defaults = stream_flags_json(args)
    if defaults:
        config["default_stream_config"] = defaults
    for key in ("create_stream_on_append", "create_stream_on_read", "stream_cipher"):
        value = getattr(args, key)
        if value is not None:
            config[key] = value
    return config


def merged_config(given: Any, flags: dict[str, Any]) -> Any:
    """`--config`'s JSON with the flags' fields added; a field set both ways is refused."""
    if not flags:
        return given
    if given is None:
        return flags
    if not isinstance(given, dict):
        raise UsageError("--config must be a JSON object to go with config flags")
    merged = dict(given)
    for key, value in flags.items():
        if key not in merged:
            merged[key] = value
        elif isinstance(merged[key], dict) and isinstance(value, dict):
            merged[key] = merged_config(merged[key], value)
        else:
            raise UsageError(f"{key} is set by --config and by a flag: give it once")
    return merged


def parse_config(parse: Callable[[Any], Any], value: Any) -> Any:
    """A config value parsed by `s2s.config`, its complaint a usage error."""
    try:
        return parse(value)
    except S2Error as error:
        raise UsageError(f"--config: {error.message}") from None


_MASK_PATH_OF_FIELD = {
    "storage_class": "storage_class",
    "retention": "retention_policy",
    "timestamping_mode": "timestamping.mode",
    "timestamping_uncapped": "timestamping.uncapped",
    "delete_on_empty_min_age_secs": "delete_on_empty",
}
"""`StreamConfig` field -> the gRPC field-mask path that sets (or, left unset, clears) it."""


def stream_reconfiguration(patch: StreamConfigPatch) -> tuple[cpb.StreamConfig, list[str]]:
    """A patch as the gRPC reconfigure request takes it: the new values and the mask of the
    fields to change; a masked field left unset is cleared (JSON null)."""
    message = stream_config_to_proto(patch_stream_config(StreamConfig(), patch))
    return message, [_MASK_PATH_OF_FIELD[name] for name in patch]


def basin_reconfiguration(patch: BasinConfigPatch) -> tuple[cpb.BasinConfig, list[str]]:
    message = cpb.BasinConfig()
    mask: list[str] = []
    if patch.clear_default_stream_config:
        mask.append("default_stream_config")
    if patch.default_stream_config is not None:
        defaults, paths = stream_reconfiguration(patch.default_stream_config)
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
