from s2s.v1 import access_pb2 as _access_pb2
from s2s.v1 import control_pb2 as _control_pb2
from s2s.v1 import records_pb2 as _records_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CheckTailRequest(_message.Message):
    __slots__ = ("basin", "stream")
    BASIN_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    basin: str
    stream: str
    def __init__(self, basin: _Optional[str] = ..., stream: _Optional[str] = ...) -> None: ...

class CheckTailResponse(_message.Message):
    __slots__ = ("tail",)
    TAIL_FIELD_NUMBER: _ClassVar[int]
    tail: _records_pb2.StreamPosition
    def __init__(self, tail: _Optional[_Union[_records_pb2.StreamPosition, _Mapping]] = ...) -> None: ...

class AppendRequest(_message.Message):
    __slots__ = ("basin", "stream", "input")
    BASIN_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    basin: str
    stream: str
    input: _records_pb2.AppendInput
    def __init__(self, basin: _Optional[str] = ..., stream: _Optional[str] = ..., input: _Optional[_Union[_records_pb2.AppendInput, _Mapping]] = ...) -> None: ...

class AppendResponse(_message.Message):
    __slots__ = ("ack",)
    ACK_FIELD_NUMBER: _ClassVar[int]
    ack: _records_pb2.AppendAck
    def __init__(self, ack: _Optional[_Union[_records_pb2.AppendAck, _Mapping]] = ...) -> None: ...

class AppendSessionRequest(_message.Message):
    __slots__ = ("basin", "stream", "input")
    BASIN_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    basin: str
    stream: str
    input: _records_pb2.AppendInput
    def __init__(self, basin: _Optional[str] = ..., stream: _Optional[str] = ..., input: _Optional[_Union[_records_pb2.AppendInput, _Mapping]] = ...) -> None: ...

class AppendSessionResponse(_message.Message):
    __slots__ = ("ack",)
    ACK_FIELD_NUMBER: _ClassVar[int]
    ack: _records_pb2.AppendAck
    def __init__(self, ack: _Optional[_Union[_records_pb2.AppendAck, _Mapping]] = ...) -> None: ...

class ReadRequest(_message.Message):
    __slots__ = ("basin", "stream", "seq_num", "timestamp", "tail_offset", "count", "bytes", "until", "clamp", "wait")
    BASIN_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    SEQ_NUM_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    TAIL_OFFSET_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    CLAMP_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    basin: str
    stream: str
    seq_num: int
    timestamp: int
    tail_offset: int
    count: int
    bytes: int
    until: int
    clamp: bool
    wait: int
    def __init__(self, basin: _Optional[str] = ..., stream: _Optional[str] = ..., seq_num: _Optional[int] = ..., timestamp: _Optional[int] = ..., tail_offset: _Optional[int] = ..., count: _Optional[int] = ..., bytes: _Optional[int] = ..., until: _Optional[int] = ..., clamp: bool = ..., wait: _Optional[int] = ...) -> None: ...

class ReadResponse(_message.Message):
    __slots__ = ("batch",)
    BATCH_FIELD_NUMBER: _ClassVar[int]
    batch: _records_pb2.ReadBatch
    def __init__(self, batch: _Optional[_Union[_records_pb2.ReadBatch, _Mapping]] = ...) -> None: ...

class ReadSessionRequest(_message.Message):
    __slots__ = ("basin", "stream", "seq_num", "timestamp", "tail_offset", "count", "bytes", "until", "clamp", "wait")
    BASIN_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    SEQ_NUM_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    TAIL_OFFSET_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    UNTIL_FIELD_NUMBER: _ClassVar[int]
    CLAMP_FIELD_NUMBER: _ClassVar[int]
    WAIT_FIELD_NUMBER: _ClassVar[int]
    basin: str
    stream: str
    seq_num: int
    timestamp: int
    tail_offset: int
    count: int
    bytes: int
    until: int
    clamp: bool
    wait: int
    def __init__(self, basin: _Optional[str] = ..., stream: _Optional[str] = ..., seq_num: _Optional[int] = ..., timestamp: _Optional[int] = ..., tail_offset: _Optional[int] = ..., count: _Optional[int] = ..., bytes: _Optional[int] = ..., until: _Optional[int] = ..., clamp: bool = ..., wait: _Optional[int] = ...) -> None: ...

class ReadSessionResponse(_message.Message):
    __slots__ = ("batch",)
    BATCH_FIELD_NUMBER: _ClassVar[int]
    batch: _records_pb2.ReadBatch
    def __init__(self, batch: _Optional[_Union[_records_pb2.ReadBatch, _Mapping]] = ...) -> None: ...
