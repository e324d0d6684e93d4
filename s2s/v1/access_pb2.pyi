from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResourceSet(_message.Message):
    __slots__ = ("exact", "prefix")
    EXACT_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    exact: str
    prefix: str
    def __init__(self, exact: _Optional[str] = ..., prefix: _Optional[str] = ...) -> None: ...

class ReadWritePermissions(_message.Message):
    __slots__ = ("read", "write")
    READ_FIELD_NUMBER: _ClassVar[int]
    WRITE_FIELD_NUMBER: _ClassVar[int]
    read: bool
    write: bool
    def __init__(self, read: bool = ..., write: bool = ...) -> None: ...

class PermittedOperationGroups(_message.Message):
    __slots__ = ("account", "basin", "stream")
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    BASIN_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    account: ReadWritePermissions
    basin: ReadWritePermissions
    stream: ReadWritePermissions
    def __init__(self, account: _Optional[_Union[ReadWritePermissions, _Mapping]] = ..., basin: _Optional[_Union[ReadWritePermissions, _Mapping]] = ..., stream: _Optional[_Union[ReadWritePermissions, _Mapping]] = ...) -> None: ...

class AccessTokenScope(_message.Message):
    __slots__ = ("basins", "streams", "access_tokens", "op_groups", "ops")
    BASINS_FIELD_NUMBER: _ClassVar[int]
    STREAMS_FIELD_NUMBER: _ClassVar[int]
    ACCESS_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OP_GROUPS_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    basins: ResourceSet
    streams: ResourceSet
    access_tokens: ResourceSet
    op_groups: PermittedOperationGroups
    ops: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, basins: _Optional[_Union[ResourceSet, _Mapping]] = ..., streams: _Optional[_Union[ResourceSet, _Mapping]] = ..., access_tokens: _Optional[_Union[ResourceSet, _Mapping]] = ..., op_groups: _Optional[_Union[PermittedOperationGroups, _Mapping]] = ..., ops: _Optional[_Iterable[str]] = ...) -> None: ...

class RateLimits(_message.Message):
    __slots__ = ("appends_per_s", "mib_per_s")
    APPENDS_PER_S_FIELD_NUMBER: _ClassVar[int]
    MIB_PER_S_FIELD_NUMBER: _ClassVar[int]
    appends_per_s: float
    mib_per_s: float
    def __init__(self, appends_per_s: _Optional[float] = ..., mib_per_s: _Optional[float] = ...) -> None: ...

class AccessTokenInfo(_message.Message):
    __slots__ = ("id", "expires_at_ms", "auto_prefix_streams", "scope", "limits")
    ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_MS_FIELD_NUMBER: _ClassVar[int]
    AUTO_PREFIX_STREAMS_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    id: str
    expires_at_ms: int
    auto_prefix_streams: bool
    scope: AccessTokenScope
    limits: RateLimits
    def __init__(self, id: _Optional[str] = ..., expires_at_ms: _Optional[int] = ..., auto_prefix_streams: bool = ..., scope: _Optional[_Union[AccessTokenScope, _Mapping]] = ..., limits: _Optional[_Union[RateLimits, _Mapping]] = ...) -> None: ...

class IssueAccessTokenRequest(_message.Message):
    __slots__ = ("info",)
    INFO_FIELD_NUMBER: _ClassVar[int]
    info: AccessTokenInfo
    def __init__(self, info: _Optional[_Union[AccessTokenInfo, _Mapping]] = ...) -> None: ...

class IssueAccessTokenResponse(_message.Message):
    __slots__ = ("access_token",)
    ACCESS_TOKEN_FIELD_NUMBER: _ClassVar[int]
    access_token: str
    def __init__(self, access_token: _Optional[str] = ...) -> None: ...

class ListAccessTokensRequest(_message.Message):
    __slots__ = ("prefix", "start_after", "limit")
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    START_AFTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    start_after: str
    limit: int
    def __init__(self, prefix: _Optional[str] = ..., start_after: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListAccessTokensResponse(_message.Message):
    __slots__ = ("access_tokens", "has_more")
    ACCESS_TOKENS_FIELD_NUMBER: _ClassVar[int]
    HAS_MORE_FIELD_NUMBER: _ClassVar[int]
    access_tokens: _containers.RepeatedCompositeFieldContainer[AccessTokenInfo]
    has_more: bool
    def __init__(self, access_tokens: _Optional[_Iterable[_Union[AccessTokenInfo, _Mapping]]] = ..., has_more: bool = ...) -> None: ...

class RevokeAccessTokenRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RevokeAccessTokenResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
