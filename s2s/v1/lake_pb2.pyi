from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MaterializationSpec(_message.Message):
    __slots__ = ("name", "table", "basin", "stream", "mode", "primary_key", "select", "where", "partition_by", "create_table", "paused")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    BASIN_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_KEY_FIELD_NUMBER: _ClassVar[int]
    SELECT_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    PARTITION_BY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TABLE_FIELD_NUMBER: _ClassVar[int]
    PAUSED_FIELD_NUMBER: _ClassVar[int]
    name: str
    table: str
    basin: str
    stream: str
    mode: str
    primary_key: str
    select: str
    where: str
    partition_by: _containers.RepeatedScalarFieldContainer[str]
    create_table: bool
    paused: bool
    def __init__(self, name: _Optional[str] = ..., table: _Optional[str] = ..., basin: _Optional[str] = ..., stream: _Optional[str] = ..., mode: _Optional[str] = ..., primary_key: _Optional[str] = ..., select: _Optional[str] = ..., where: _Optional[str] = ..., partition_by: _Optional[_Iterable[str]] = ..., create_table: bool = ..., paused: bool = ...) -> None: ...

class MaterializationSource(_message.Message):
    __slots__ = ("basin", "stream")
    BASIN_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    basin: str
    stream: str
    def __init__(self, basin: _Optional[str] = ..., stream: _Optional[str] = ...) -> None: ...

class MaterializationStatus(_message.Message):
    __slots__ = ("name", "source", "table", "mode", "primary_key", "select", "where", "partition_by", "create_table", "state", "last_error", "applied_seq_num", "tail_seq_num", "lag_records", "lag_seconds", "rows_applied", "rows_rejected", "last_snapshot_id", "last_commit_at", "records_skipped")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_KEY_FIELD_NUMBER: _ClassVar[int]
    SELECT_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    PARTITION_BY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TABLE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQ_NUM_FIELD_NUMBER: _ClassVar[int]
    TAIL_SEQ_NUM_FIELD_NUMBER: _ClassVar[int]
    LAG_RECORDS_FIELD_NUMBER: _ClassVar[int]
    LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ROWS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    ROWS_REJECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_COMMIT_AT_FIELD_NUMBER: _ClassVar[int]
    RECORDS_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: MaterializationSource
    table: str
    mode: str
    primary_key: str
    select: str
    where: str
    partition_by: _containers.RepeatedScalarFieldContainer[str]
    create_table: bool
    state: str
    last_error: str
    applied_seq_num: int
    tail_seq_num: int
    lag_records: int
    lag_seconds: float
    rows_applied: int
    rows_rejected: int
    last_snapshot_id: int
    last_commit_at: float
    records_skipped: int
    def __init__(self, name: _Optional[str] = ..., source: _Optional[_Union[MaterializationSource, _Mapping]] = ..., table: _Optional[str] = ..., mode: _Optional[str] = ..., primary_key: _Optional[str] = ..., select: _Optional[str] = ..., where: _Optional[str] = ..., partition_by: _Optional[_Iterable[str]] = ..., create_table: bool = ..., state: _Optional[str] = ..., last_error: _Optional[str] = ..., applied_seq_num: _Optional[int] = ..., tail_seq_num: _Optional[int] = ..., lag_records: _Optional[int] = ..., lag_seconds: _Optional[float] = ..., rows_applied: _Optional[int] = ..., rows_rejected: _Optional[int] = ..., last_snapshot_id: _Optional[int] = ..., last_commit_at: _Optional[float] = ..., records_skipped: _Optional[int] = ...) -> None: ...

class CreateMaterializationRequest(_message.Message):
    __slots__ = ("spec",)
    SPEC_FIELD_NUMBER: _ClassVar[int]
    spec: MaterializationSpec
    def __init__(self, spec: _Optional[_Union[MaterializationSpec, _Mapping]] = ...) -> None: ...

class CreateMaterializationResponse(_message.Message):
    __slots__ = ("materialization",)
    MATERIALIZATION_FIELD_NUMBER: _ClassVar[int]
    materialization: MaterializationStatus
    def __init__(self, materialization: _Optional[_Union[MaterializationStatus, _Mapping]] = ...) -> None: ...

class ListMaterializationsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListMaterializationsResponse(_message.Message):
    __slots__ = ("materializations",)
    MATERIALIZATIONS_FIELD_NUMBER: _ClassVar[int]
    materializations: _containers.RepeatedCompositeFieldContainer[MaterializationStatus]
    def __init__(self, materializations: _Optional[_Iterable[_Union[MaterializationStatus, _Mapping]]] = ...) -> None: ...

class GetMaterializationRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetMaterializationResponse(_message.Message):
    __slots__ = ("materialization",)
    MATERIALIZATION_FIELD_NUMBER: _ClassVar[int]
    materialization: MaterializationStatus
    def __init__(self, materialization: _Optional[_Union[MaterializationStatus, _Mapping]] = ...) -> None: ...

class PauseMaterializationRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class PauseMaterializationResponse(_message.Message):
    __slots__ = ("materialization",)
    MATERIALIZATION_FIELD_NUMBER: _ClassVar[int]
    materialization: MaterializationStatus
    def __init__(self, materialization: _Optional[_Union[MaterializationStatus, _Mapping]] = ...) -> None: ...

class ResumeMaterializationRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ResumeMaterializationResponse(_message.Message):
    __slots__ = ("materialization",)
    MATERIALIZATION_FIELD_NUMBER: _ClassVar[int]
    materialization: MaterializationStatus
    def __init__(self, materialization: _Optional[_Union[MaterializationStatus, _Mapping]] = ...) -> None: ...

class DeleteMaterializationRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteMaterializationResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class QueryRequest(_message.Message):
    __slots__ = ("sql", "limit")
    SQL_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    sql: str
    limit: int
    def __init__(self, sql: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class QueryResponse(_message.Message):
    __slots__ = ("arrow_ipc_stream", "truncated")
    ARROW_IPC_STREAM_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    arrow_ipc_stream: bytes
    truncated: bool
    def __init__(self, arrow_ipc_stream: _Optional[bytes] = ..., truncated: bool = ...) -> None: ...
