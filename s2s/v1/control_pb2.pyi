from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StorageClass(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STORAGE_CLASS_UNSPECIFIED: _ClassVar[StorageClass]
    STORAGE_CLASS_STANDARD: _ClassVar[StorageClass]
    STORAGE_CLASS_EXPRESS: _ClassVar[StorageClass]

class TimestampingMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TIMESTAMPING_MODE_UNSPECIFIED: _ClassVar[TimestampingMode]
    TIMESTAMPING_MODE_CLIENT_PREFER: _ClassVar[TimestampingMode]
    TIMESTAMPING_MODE_CLIENT_REQUIRE: _ClassVar[TimestampingMode]
    TIMESTAMPING_MODE_ARRIVAL: _ClassVar[TimestampingMode]

class StreamCipher(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STREAM_CIPHER_UNSPECIFIED: _ClassVar[StreamCipher]
    STREAM_CIPHER_AEGIS_256: _ClassVar[StreamCipher]
    STREAM_CIPHER_AES_256_GCM: _ClassVar[StreamCipher]

class ProvisionResult(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PROVISION_RESULT_UNSPECIFIED: _ClassVar[ProvisionResult]
    PROVISION_RESULT_CREATED: _ClassVar[ProvisionResult]
    PROVISION_RESULT_UPDATED: _ClassVar[ProvisionResult]
    PROVISION_RESULT_NOOP: _ClassVar[ProvisionResult]
STORAGE_CLASS_UNSPECIFIED: StorageClass
STORAGE_CLASS_STANDARD: StorageClass
STORAGE_CLASS_EXPRESS: StorageClass
TIMESTAMPING_MODE_UNSPECIFIED: TimestampingMode
TIMESTAMPING_MODE_CLIENT_PREFER: TimestampingMode
TIMESTAMPING_MODE_CLIENT_REQUIRE: TimestampingMode
TIMESTAMPING_MODE_ARRIVAL: TimestampingMode
STREAM_CIPHER_UNSPECIFIED: StreamCipher
STREAM_CIPHER_AEGIS_256: StreamCipher
STREAM_CIPHER_AES_256_GCM: StreamCipher
PROVISION_RESULT_UNSPECIFIED: ProvisionResult
PROVISION_RESULT_CREATED: ProvisionResult
PROVISION_RESULT_UPDATED: ProvisionResult
PROVISION_RESULT_NOOP: ProvisionResult

class RetentionPolicy(_message.Message):
    __slots__ = ("age_secs", "infinite")
    class Infinite(_message.Message):
        __slots__ = ()
        def __init__(self) -> None: ...
    AGE_SECS_FIELD_NUMBER: _ClassVar[int]
    INFINITE_FIELD_NUMBER: _ClassVar[int]
    age_secs: int
    infinite: RetentionPolicy.Infinite
    def __init__(self, age_secs: _Optional[int] = ..., infinite: _Optional[_Union[RetentionPolicy.Infinite, _Mapping]] = ...) -> None: ...

class Timestamping(_message.Message):
    __slots__ = ("mode", "uncapped")
    MODE_FIELD_NUMBER: _ClassVar[int]
    UNCAPPED_FIELD_NUMBER: _ClassVar[int]
    mode: TimestampingMode
    uncapped: bool
    def __init__(self, mode: _Optional[_Union[TimestampingMode, str]] = ..., uncapped: bool = ...) -> None: ...

class DeleteOnEmpty(_message.Message):
    __slots__ = ("min_age_secs",)
    MIN_AGE_SECS_FIELD_NUMBER: _ClassVar[int]
    min_age_secs: int
    def __init__(self, min_age_secs: _Optional[int] = ...) -> None: ...

class StreamConfig(_message.Message):
    __slots__ = ("storage_class", "retention_policy", "timestamping", "delete_on_empty")
    STORAGE_CLASS_FIELD_NUMBER: _ClassVar[int]
    RETENTION_POLICY_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPING_FIELD_NUMBER: _ClassVar[int]
    DELETE_ON_EMPTY_FIELD_NUMBER: _ClassVar[int]
    storage_class: StorageClass
    retention_policy: RetentionPolicy
    timestamping: Timestamping
    delete_on_empty: DeleteOnEmpty
    def __init__(self, storage_class: _Optional[_Union[StorageClass, str]] = ..., retention_policy: _Optional[_Union[RetentionPolicy, _Mapping]] = ..., timestamping: _Optional[_Union[Timestamping, _Mapping]] = ..., delete_on_empty: _Optional[_Union[DeleteOnEmpty, _Mapping]] = ...) -> None: ...

class BasinConfig(_message.Message):
    __slots__ = ("default_stream_config", "create_stream_on_append", "create_stream_on_read", "stream_cipher")
    DEFAULT_STREAM_CONFIG_FIELD_NUMBER: _ClassVar[int]
    CREATE_STREAM_ON_APPEND_FIELD_NUMBER: _ClassVar[int]
    CREATE_STREAM_ON_READ_FIELD_NUMBER: _ClassVar[int]
    STREAM_CIPHER_FIELD_NUMBER: _ClassVar[int]
    default_stream_config: StreamConfig
    create_stream_on_append: bool
    create_stream_on_read: bool
    stream_cipher: StreamCipher
    def __init__(self, default_stream_config: _Optional[_Union[StreamConfig, _Mapping]] = ..., create_stream_on_append: bool = ..., create_stream_on_read: bool = ..., stream_cipher: _Optional[_Union[StreamCipher, str]] = ...) -> None: ...

class BasinInfo(_message.Message):
    __slots__ = ("name", "location", "created_at_ms", "deleted_at_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DELETED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    location: str
    created_at_ms: int
    deleted_at_ms: int
    def __init__(self, name: _Optional[str] = ..., location: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., deleted_at_ms: _Optional[int] = ...) -> None: ...

class StreamInfo(_message.Message):
    __slots__ = ("name", "created_at_ms", "deleted_at_ms", "cipher")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DELETED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    CIPHER_FIELD_NUMBER: _ClassVar[int]
    name: str
    created_at_ms: int
    deleted_at_ms: int
    cipher: StreamCipher
    def __init__(self, name: _Optional[str] = ..., created_at_ms: _Optional[int] = ..., deleted_at_ms: _Optional[int] = ..., cipher: _Optional[_Union[StreamCipher, str]] = ...) -> None: ...

class ListBasinsRequest(_message.Message):
    __slots__ = ("prefix", "start_after", "limit")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    START_AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    start_after: str
    limit: int
    def __init__(self, prefix: _Optional[str] = ..., start_after: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListBasinsResponse(_message.Message):
    __slots__ = ("basins", "has_more")
    BASINS_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    basins: _containers.RepeatedCompositeFieldContainer[BasinInfo]
    has_more: bool
    def __init__(self, basins: _Optional[_Iterable[_Union[BasinInfo, _Mapping]]] = ..., has_more: bool = ...) -> None: ...

class CreateBasinRequest(_message.Message):
    __slots__ = ("basin", "config", "request_token")
    BASIN_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    basin: str
    config: BasinConfig
    request_token: str
    def __init__(self, basin: _Optional[str] = ..., config: _Optional[_Union[BasinConfig, _Mapping]] = ..., request_token: _Optional[str] = ...) -> None: ...

class CreateBasinResponse(_message.Message):
    __slots__ = ("info", "result")
    INFO_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    info: BasinInfo
    result: ProvisionResult
    def __init__(self, info: _Optional[_Union[BasinInfo, _Mapping]] = ..., result: _Optional[_Union[ProvisionResult, str]] = ...) -> None: ...

class GetBasinConfigRequest(_message.Message):
    __slots__ = ("basin",)
    BASIN_FIELD_NUMBER: _ClassVar[int]
    basin: str
    def __init__(self, basin: _Optional[str] = ...) -> None: ...

class GetBasinConfigResponse(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: BasinConfig
    def __init__(self, config: _Optional[_Union[BasinConfig, _Mapping]] = ...) -> None: ...

class ReconfigureBasinRequest(_message.Message):
    __slots__ = ("basin", "config", "mask")
    BASIN_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    basin: str
    config: BasinConfig
    mask: _field_mask_pb2.FieldMask
    def __init__(self, basin: _Optional[str] = ..., config: _Optional[_Union[BasinConfig, _Mapping]] = ..., mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class ReconfigureBasinResponse(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: BasinConfig
    def __init__(self, config: _Optional[_Union[BasinConfig, _Mapping]] = ...) -> None: ...

class DeleteBasinRequest(_message.Message):
    __slots__ = ("basin",)
    BASIN_FIELD_NUMBER: _ClassVar[int]
    basin: str
    def __init__(self, basin: _Optional[str] = ...) -> None: ...

class DeleteBasinResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListStreamsRequest(_message.Message):
    __slots__ = ("basin", "prefix", "start_after", "limit")
    BASIN_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    START_AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    basin: str
    prefix: str
    start_after: str
    limit: int
    def __init__(self, basin: _Optional[str] = ..., prefix: _Optional[str] = ..., start_after: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListStreamsResponse(_message.Message):
    __slots__ = ("streams", "has_more")
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    streams: _containers.RepeatedCompositeFieldContainer[StreamInfo]
    has_more: bool
    def __init__(self, streams: _Optional[_Iterable[_Union[StreamInfo, _Mapping]]] = ..., has_more: bool = ...) -> None: ...

class CreateStreamRequest(_message.Message):
    __slots__ = ("basin", "stream", "config", "request_token")
    BASIN_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    REQUEST_TOKEN_FIELD_NUMBER: _ClassVar[int]
    basin: str
    stream: str
    config: StreamConfig
    request_token: str
    def __init__(self, basin: _Optional[str] = ..., stream: _Optional[str] = ..., config: _Optional[_Union[StreamConfig, _Mapping]] = ..., request_token: _Optional[str] = ...) -> None: ...

class CreateStreamResponse(_message.Message):
    __slots__ = ("info", "result")
    INFO_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    info: StreamInfo
    result: ProvisionResult
    def __init__(self, info: _Optional[_Union[StreamInfo, _Mapping]] = ..., result: _Optional[_Union[ProvisionResult, str]] = ...) -> None: ...

class GetStreamConfigRequest(_message.Message):
    __slots__ = ("basin", "stream")
    BASIN_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    basin: str
    stream: str
    def __init__(self, basin: _Optional[str] = ..., stream: _Optional[str] = ...) -> None: ...

class GetStreamConfigResponse(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: StreamConfig
    def __init__(self, config: _Optional[_Union[StreamConfig, _Mapping]] = ...) -> None: ...

class ReconfigureStreamRequest(_message.Message):
    __slots__ = ("basin", "stream", "config", "mask")
    BASIN_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    basin: str
    stream: str
    config: StreamConfig
    mask: _field_mask_pb2.FieldMask
    def __init__(self, basin: _Optional[str] = ..., stream: _Optional[str] = ..., config: _Optional[_Union[StreamConfig, _Mapping]] = ..., mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class ReconfigureStreamResponse(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: StreamConfig
    def __init__(self, config: _Optional[_Union[StreamConfig, _Mapping]] = ...) -> None: ...

class DeleteStreamRequest(_message.Message):
    __slots__ = ("basin", "stream")
    BASIN_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    basin: str
    stream: str
    def __init__(self, basin: _Optional[str] = ..., stream: _Optional[str] = ...) -> None: ...

class DeleteStreamResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
