"""Conversions between the config dataclasses of `s2s.config` and their protobuf messages.

Shared by the gRPC server and the client, so both read and write configs the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from s2s.config import (
    BasinConfig,
    BasinConfigPatch,
    ResolvedStreamConfig,
    StreamConfig,
    StreamConfigPatch,
)
from s2s.errors import invalid
from s2s.v1 import control_pb2 as cpb

_STORAGE = {"standard": cpb.STORAGE_CLASS_STANDARD, "express": cpb.STORAGE_CLASS_EXPRESS}
_TIMESTAMPING = {
    "client-prefer": cpb.TIMESTAMPING_MODE_CLIENT_PREFER,
    "client-require": cpb.TIMESTAMPING_MODE_CLIENT_REQUIRE,
    "arrival": cpb.TIMESTAMPING_MODE_ARRIVAL,
}
_CIPHER = {"aegis-256": cpb.STREAM_CIPHER_AEGIS_256, "aes-256-gcm": cpb.STREAM_CIPHER_AES_256_GCM}
_STORAGE_BACK = {v: k for k, v in _STORAGE.items()}
_TIMESTAMPING_BACK = {v: k for k, v in _TIMESTAMPING.items()}
_CIPHER_BACK = {v: k for k, v in _CIPHER.items()}


def stream_cipher_proto(cipher: str | None) -> cpb.StreamCipher:
    """A cipher's name (None: plaintext) as the proto enum."""
    return _CIPHER.get(cipher or "", cpb.STREAM_CIPHER_UNSPECIFIED)


def _enum_name(names: Mapping[Any, str], number: int, field: str) -> str | None:
    """The name of an enum value of a message (None for 0, unset). proto3 keeps numbers it
    does not know; taking one for "unset" would silently clear what the sender meant to set."""
    if number == 0:
        return None
    name = names.get(number)
    if name is None:
        raise invalid(
            f"{field} {number} is not a known value (one of: {', '.join(names.values())})"
        )
    return name


_FIELDS_OF_PATH = {
    "storage_class": ("storage_class",),
    "retention_policy": ("retention",),
    "timestamping": ("timestamping_mode", "timestamping_uncapped"),
    "timestamping.mode": ("timestamping_mode",),
    "timestamping.uncapped": ("timestamping_uncapped",),
    "delete_on_empty": ("delete_on_empty_min_age_secs",),
    "delete_on_empty.min_age_secs": ("delete_on_empty_min_age_secs",),
}


def stream_config_to_proto(config: StreamConfig | ResolvedStreamConfig) -> cpb.StreamConfig:
    message = cpb.StreamConfig()
    if config.storage_class is not None:
        message.storage_class = _STORAGE[config.storage_class]
    if config.retention == "infinite":
        message.retention_policy.infinite.SetInParent()
    elif config.retention is not None:
        message.retention_policy.age_secs = config.retention
    if config.timestamping_mode is not None:
        message.timestamping.mode = _TIMESTAMPING[config.timestamping_mode]
    if config.timestamping_uncapped is not None:
        message.timestamping.uncapped = config.timestamping_uncapped
    if config.delete_on_empty_min_age_secs is not None:
        message.delete_on_empty.min_age_secs = config.delete_on_empty_min_age_secs
    return message


def stream_config_from_proto(message: cpb.StreamConfig) -> StreamConfig:
    retention: int | str | None = None
    policy = message.retention_policy.WhichOneof("policy")
    if policy == "infinite":
        retention = "infinite"
    elif policy == "age_secs":
        if message.retention_policy.age_secs == 0:
            raise invalid("retention_policy.age_secs must be greater than 0")
        retention = message.retention_policy.age_secs
    uncapped = message.timestamping.uncapped if message.timestamping.HasField("uncapped") else None
    return StreamConfig(
        storage_class=_enum_name(_STORAGE_BACK, message.storage_class, "storage_class"),
        retention=retention,  # type: ignore[arg-type]
        timestamping_mode=_enum_name(
            _TIMESTAMPING_BACK, message.timestamping.mode, "timestamping.mode"
        ),
        timestamping_uncapped=uncapped,
        delete_on_empty_min_age_secs=(
            message.delete_on_empty.min_age_secs if message.HasField("delete_on_empty") else None
        ),
    )


def stream_patch_from_proto(message: cpb.StreamConfig, paths: Iterable[str]) -> StreamConfigPatch:
    """The masked fields of `message` as a patch: unset masked fields clear (revert)."""
    values = stream_config_from_proto(message)
    patch: StreamConfigPatch = {}
    for path in paths:
        fields = _FIELDS_OF_PATH.get(path)
        if fields is None:
            raise invalid(f"unknown stream config field mask path {path!r}")
        for name in fields:
            patch[name] = getattr(values, name)
    return patch


def basin_config_to_proto(config: BasinConfig) -> cpb.BasinConfig:
    return cpb.BasinConfig(
        default_stream_config=stream_config_to_proto(config.default_stream_config),
        create_stream_on_append=config.create_stream_on_append,
        create_stream_on_read=config.create_stream_on_read,
        stream_cipher=stream_cipher_proto(config.stream_cipher),
    )


def basin_config_from_proto(message: cpb.BasinConfig) -> BasinConfig:
    return BasinConfig(
        default_stream_config=stream_config_from_proto(message.default_stream_config),
        stream_cipher=_enum_name(_CIPHER_BACK, message.stream_cipher, "stream_cipher"),
        create_stream_on_append=message.create_stream_on_append,
        create_stream_on_read=message.create_stream_on_read,
    )


def basin_patch_from_proto(message: cpb.BasinConfig, paths: Iterable[str]) -> BasinConfigPatch:
    stream_paths: list[str] = []
    kwargs: dict[str, object] = {}
    for path in paths:
        if path in ("create_stream_on_append", "create_stream_on_read"):
            kwargs[path] = getattr(message, path)
        elif path == "stream_cipher":
            kwargs["stream_cipher_set"] = True
            kwargs["stream_cipher"] = _enum_name(
                _CIPHER_BACK, message.stream_cipher, "stream_cipher"
            )
        elif path == "default_stream_config":
            kwargs["clear_default_stream_config"] = True
            stream_paths.extend(
                p for p in ("storage_class", "retention_policy", "timestamping", "delete_on_empty")
            )
        elif path.startswith("default_stream_config."):
            stream_paths.append(path.removeprefix("default_stream_config."))
        else:
            raise invalid(f"unknown basin config field mask path {path!r}")
    if stream_paths:
        kwargs["default_stream_config"] = stream_patch_from_proto(
            message.default_stream_config, stream_paths
        )
    return BasinConfigPatch(**kwargs)  # type: ignore[arg-type]
