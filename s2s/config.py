"""Basin and stream configuration: shapes, defaults, resolution, patches and their JSON forms.

A `StreamConfig` is partial: `None` means "not set here". A stream's effective configuration is
resolved field by field (stream value, then the basin's default, then the system default) into
a `ResolvedStreamConfig`, which is what a stream stores at creation. The JSON forms follow S2's
v1 REST API (docs/s2-compat.md §5), so the same functions serve the HTTP layer and persistence.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from s2s.errors import S2Error, invalid
from s2s.wire import U64_MAX

STORAGE_CLASSES = ("standard", "express")
TIMESTAMPING_MODES = ("client-prefer", "client-require", "arrival")
STREAM_CIPHERS = ("aegis-256", "aes-256-gcm")

Retention = int | Literal["infinite"]
"""Retention by age in seconds (> 0), or "infinite"."""

RETENTION_AGE_SECS_DEFAULT = 7 * 24 * 3600


@dataclass(frozen=True)
class StreamConfig:
    """A partial stream configuration; `None` fields fall back to the basin, then the system."""

    storage_class: str | None = None
    retention: Retention | None = None
    timestamping_mode: str | None = None
    timestamping_uncapped: bool | None = None
    delete_on_empty_min_age_secs: int | None = None

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in dataclasses.fields(self))


@dataclass(frozen=True)
class ResolvedStreamConfig:
    """A stream's effective configuration, every field set."""

    storage_class: str = "express"
    retention: Retention = RETENTION_AGE_SECS_DEFAULT
    timestamping_mode: str = "client-prefer"
    timestamping_uncapped: bool = False
    delete_on_empty_min_age_secs: int = 0

    @property
    def retention_age_secs(self) -> int | None:
        """Age after which records expire, or None if they never do."""
        return None if self.retention == "infinite" else int(self.retention)

    def as_partial(self) -> StreamConfig:
        return StreamConfig(**dataclasses.asdict(self))


@dataclass(frozen=True)
class BasinConfig:
    default_stream_config: StreamConfig = field(default_factory=StreamConfig)
    stream_cipher: str | None = None
    create_stream_on_append: bool = False
    create_stream_on_read: bool = False


def resolve_stream_config(
    stream: StreamConfig, basin_default: StreamConfig
) -> ResolvedStreamConfig:
    """Resolve each field: the stream's value, else the basin default, else the system default."""
    system = ResolvedStreamConfig()
    values = {}
    for f in dataclasses.fields(StreamConfig):
        value = getattr(stream, f.name)
        if value is None:
            value = getattr(basin_default, f.name)
        if value is None:
            value = getattr(system, f.name)
        values[f.name] = value
    return ResolvedStreamConfig(**values)


StreamConfigPatch = dict[str, Any]
"""Field name -> new value, or None to clear it; absent fields are kept."""


def patch_stream_config(config: StreamConfig, patch: StreamConfigPatch) -> StreamConfig:
    return dataclasses.replace(config, **patch)


@dataclass(frozen=True)
class BasinConfigPatch:
    """A basin reconfiguration; `None` attributes are kept, `stream_cipher_set` marks a change."""

    default_stream_config: StreamConfigPatch | None = None
    clear_default_stream_config: bool = False
    stream_cipher: str | None = None
    stream_cipher_set: bool = False
    create_stream_on_append: bool | None = None
    create_stream_on_read: bool | None = None


def patch_basin_config(config: BasinConfig, patch: BasinConfigPatch) -> BasinConfig:
    defaults = StreamConfig() if patch.clear_default_stream_config else config.default_stream_config
    if patch.default_stream_config is not None:
        defaults = patch_stream_config(defaults, patch.default_stream_config)
    return BasinConfig(
        default_stream_config=defaults,
        stream_cipher=patch.stream_cipher if patch.stream_cipher_set else config.stream_cipher,
        create_stream_on_append=_keep(
            patch.create_stream_on_append, config.create_stream_on_append
        ),
        create_stream_on_read=_keep(patch.create_stream_on_read, config.create_stream_on_read),
    )


def _keep(new: bool | None, old: bool) -> bool:
    return old if new is None else new


# --- JSON ---------------------------------------------------------------------------------


def _bad_json(message: str) -> S2Error:
    return S2Error("bad_json", message)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad_json(f"{what} must be a JSON object")
    return value


def _enum(value: Any, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise _bad_json(f"{what} must be one of {', '.join(allowed)}, got {value!r}")
    return str(value)


def _u64(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= U64_MAX:
        raise _bad_json(f"{what} must be an unsigned 64-bit integer")
    return value


def _bool(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise _bad_json(f"{what} must be true or false")
    return value


def _retention_from_json(value: Any) -> Retention:
    obj = _object(value, "retention_policy")
    if len(obj) != 1:
        raise _bad_json('retention_policy must be {"age": seconds} or {"infinite": {}}')
    if "infinite" in obj:
        return "infinite"
    if "age" in obj:
        age = _u64(obj["age"], "retention_policy.age")
        if age == 0:
            raise invalid("retention_policy.age must be greater than 0")
        return age
    raise _bad_json('retention_policy must be {"age": seconds} or {"infinite": {}}')


def stream_patch_from_json(value: Any) -> StreamConfigPatch:
    """Parse a StreamConfig or StreamReconfiguration object into field changes.

    Absent keys are left out; JSON null clears the field. As a full config (create/ensure),
    callers apply the result to an empty `StreamConfig`.
    """
    obj = _object(value, "stream config")
    patch: StreamConfigPatch = {}
    for key, item in obj.items():
        if key == "storage_class":
            patch["storage_class"] = (
                None if item is None else _enum(item, STORAGE_CLASSES, "storage_class")
            )
        elif key == "retention_policy":
            patch["retention"] = None if item is None else _retention_from_json(item)
        elif key == "timestamping":
            if item is None:
                patch["timestamping_mode"] = None
                patch["timestamping_uncapped"] = None
                continue
            ts = _object(item, "timestamping")
            for ts_key, ts_item in ts.items():
                if ts_key == "mode":
                    patch["timestamping_mode"] = (
                        None
                        if ts_item is None
                        else _enum(ts_item, TIMESTAMPING_MODES, "timestamping.mode")
                    )
                elif ts_key == "uncapped":
                    patch["timestamping_uncapped"] = (
                        None if ts_item is None else _bool(ts_item, "timestamping.uncapped")
                    )
                else:
                    raise _bad_json(f"unknown field timestamping.{ts_key}")
        elif key == "delete_on_empty":
            if item is None:
                patch["delete_on_empty_min_age_secs"] = None
                continue
            doe = _object(item, "delete_on_empty")
            for doe_key in doe:
                if doe_key != "min_age_secs":
                    raise _bad_json(f"unknown field delete_on_empty.{doe_key}")
            min_age = doe.get("min_age_secs")
            patch["delete_on_empty_min_age_secs"] = (
                0 if min_age is None else _u64(min_age, "delete_on_empty.min_age_secs")
            )
        else:
            raise _bad_json(f"unknown stream config field {key!r}")
    return patch


def stream_config_from_json(value: Any) -> StreamConfig:
    """Parse a full StreamConfig object (null or absent means "all unset")."""
    if value is None:
        return StreamConfig()
    return patch_stream_config(StreamConfig(), stream_patch_from_json(value))


def stream_config_to_json(config: StreamConfig | ResolvedStreamConfig) -> dict[str, Any]:
    """Serialize; unset fields are null (a resolved config has none)."""
    retention: Any = None
    if config.retention == "infinite":
        retention = {"infinite": {}}
    elif config.retention is not None:
        retention = {"age": config.retention}
    timestamping: Any = None
    if config.timestamping_mode is not None or config.timestamping_uncapped is not None:
        timestamping = {
            "mode": config.timestamping_mode,
            "uncapped": config.timestamping_uncapped,
        }
    delete_on_empty: Any = None
    if config.delete_on_empty_min_age_secs is not None:
        delete_on_empty = {"min_age_secs": config.delete_on_empty_min_age_secs}
    return {
        "storage_class": config.storage_class,
        "retention_policy": retention,
        "timestamping": timestamping,
        "delete_on_empty": delete_on_empty,
    }


def basin_config_from_json(value: Any) -> BasinConfig:
    if value is None:
        return BasinConfig()
    obj = _object(value, "basin config")
    unknown = set(obj) - {
        "default_stream_config",
        "stream_cipher",
        "create_stream_on_append",
        "create_stream_on_read",
    }
    if unknown:
        raise _bad_json(f"unknown basin config field {sorted(unknown)[0]!r}")
    cipher = obj.get("stream_cipher")
    return BasinConfig(
        default_stream_config=stream_config_from_json(obj.get("default_stream_config")),
        stream_cipher=None if cipher is None else _enum(cipher, STREAM_CIPHERS, "stream_cipher"),
        create_stream_on_append=_bool(
            obj.get("create_stream_on_append", False), "create_stream_on_append"
        ),
        create_stream_on_read=_bool(
            obj.get("create_stream_on_read", False), "create_stream_on_read"
        ),
    )


def basin_patch_from_json(value: Any) -> BasinConfigPatch:
    obj = _object(value, "basin reconfiguration")
    kwargs: dict[str, Any] = {}
    for key, item in obj.items():
        if key == "default_stream_config":
            if item is None:
                kwargs["clear_default_stream_config"] = True
            else:
                kwargs["default_stream_config"] = stream_patch_from_json(item)
        elif key == "stream_cipher":
            kwargs["stream_cipher_set"] = True
            kwargs["stream_cipher"] = (
                None if item is None else _enum(item, STREAM_CIPHERS, "stream_cipher")
            )
        elif key in ("create_stream_on_append", "create_stream_on_read"):
            kwargs[key] = _bool(item, key)
        else:
            raise _bad_json(f"unknown basin config field {key!r}")
    return BasinConfigPatch(**kwargs)


def basin_config_to_json(config: BasinConfig) -> dict[str, Any]:
    defaults = config.default_stream_config
    return {
        "default_stream_config": None if defaults.is_empty() else stream_config_to_json(defaults),
        "stream_cipher": config.stream_cipher,
        "create_stream_on_append": config.create_stream_on_append,
        "create_stream_on_read": config.create_stream_on_read,
    }


def basin_config_response_json(config: BasinConfig) -> dict[str, Any]:
    """The basin config as the API answers it: the stored form, except that stream defaults show
    the storage class they give streams, `express` unless set, as S2 shows it (the official
    TypeScript SDK's tests expect it; LITE shows null). Stored, an unset class stays unset, so
    an ensure asking for the same config again is a no-op. A basin with no stream defaults at
    all answers null, as S2 and LITE do."""
    answer = basin_config_to_json(config)
    defaults = answer["default_stream_config"]
    if defaults is not None and defaults["storage_class"] is None:
        defaults["storage_class"] = ResolvedStreamConfig().storage_class
    return answer
