"""Every gRPC method of a real server under generated requests: messages with random fields
(names mostly of real resources, so checks past the first are reached) and raw bytes that are
not a message at all. No call may end in `UNKNOWN` or `INTERNAL` (what an unhandled exception
becomes), a session must end by itself, and the log must show no traceback.

How many calls (a third of the budget: each is slower): `tests/fuzz/budget.py`.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as pbd
from google.protobuf import message_factory
from hypothesis import given
from hypothesis import strategies as st

from s2s.v1 import control_pb2, lake_pb2, services_pb2
from tests.fuzz.budget import EXAMPLES, fuzzed
from tests.fuzz.inputs import BASIN, MATERIALIZATION, STREAM, TABLE
from tests.server_process import ServerProcess

pytestmark = pytest.mark.xdist_group("fuzz-grpc")

_CALL_TIMEOUT_S = 20.0
_SESSION_WAIT_S = 1.0
_statuses: collections.Counter[str] = collections.Counter()

_METHODS = [
    (service, method)
    for file in (services_pb2.DESCRIPTOR, lake_pb2.DESCRIPTOR)
    for service in file.services_by_name.values()
    for method in service.methods
]
_NAMES = {"basin": BASIN, "stream": STREAM, "name": MATERIALIZATION, "table": TABLE}
_T = pbd.FieldDescriptor


def _scalar(field: pbd.FieldDescriptor, real_names: bool) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == _T.TYPE_STRING:
        real = _NAMES.get(field.name) if real_names else None
        text = st.text(max_size=20)
        return st.one_of(st.just(real), text) if real else text
    if kind == _T.TYPE_BYTES:
        return st.binary(max_size=40)
    if kind == _T.TYPE_BOOL:
        return st.booleans()
    if kind in (_T.TYPE_DOUBLE, _T.TYPE_FLOAT):
        return st.floats(allow_nan=False, width=32 if kind == _T.TYPE_FLOAT else 64)
    if kind == _T.TYPE_ENUM:
        return st.sampled_from([value.number for value in field.enum_type.values])
    signed = kind in (_T.TYPE_INT32, _T.TYPE_INT64, _T.TYPE_SINT32, _T.TYPE_SINT64,
                      _T.TYPE_SFIXED32, _T.TYPE_SFIXED64)  # fmt: skip
    bits = 32 if kind in (_T.TYPE_INT32, _T.TYPE_UINT32, _T.TYPE_SINT32, _T.TYPE_FIXED32,
                          _T.TYPE_SFIXED32) else 64  # fmt: skip
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return st.one_of(st.integers(low, high), st.sampled_from([low, high, 0, 1]))


@st.composite
def _message(draw: st.DrawFn, descriptor: pbd.Descriptor, real_names: bool, depth: int = 0) -> Any:
    message = message_factory.GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if draw(st.integers(0, 2)) == 0:
            continue
        is_repeated = field.is_repeated
        if field.type == _T.TYPE_MESSAGE:
            if depth >= 3 or field.message_type.GetOptions().map_entry:
                continue
            values = draw(
                st.lists(
                    _message(field.message_type, real_names, depth + 1),
                    max_size=3 if is_repeated else 1,
                )
            )
            target = getattr(message, field.name)
            for value in values:
                (target.add() if is_repeated else target).CopyFrom(value)
        elif is_repeated:
            values = draw(st.lists(_scalar(field, real_names), max_size=3))
            getattr(message, field.name).extend(values)
        else:
            setattr(message, field.name, draw(_scalar(field, real_names)))
    return message


@st.composite
def _payload(draw: st.DrawFn, method: pbd.MethodDescriptor) -> bytes:
    """A generated request, sometimes damaged: cut short, extended, or replaced by bytes."""
    # Never delete the resources every other example relies on.
    real_names = not method.name.startswith("Delete")
    message = draw(_message(method.input_type, real_names))
    if "wait" in method.input_type.fields_by_name:
        # A unary read waits as long as asked (up to 60 s) for records: keep examples quick.
        message.wait = draw(st.sampled_from([0, 1]))
    data: bytes = message.SerializeToString()
    how = draw(st.sampled_from(["whole", "whole", "cut", "extend", "bytes"]))
    if how == "cut" and data:
        return data[: draw(st.integers(0, len(data) - 1))]
    if how == "extend":
        return data + draw(st.sampled_from([b"\x1a\xff\xff\xff\xff\x0f", b"\xff", b"\x08"]))
    if how == "bytes":
        return draw(st.binary(max_size=40))
    return data


@st.composite
def _calls(draw: st.DrawFn) -> tuple[pbd.ServiceDescriptor, pbd.MethodDescriptor, list[bytes]]:
    service, method = draw(st.sampled_from(_METHODS))
    count = draw(st.integers(1, 4)) if method.client_streaming else 1
    return service, method, [draw(_payload(method)) for _ in range(count)]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(str(tmp_path_factory.mktemp("fuzz-grpc") / "data")).start()
    try:
        channel = grpc.insecure_channel(process.target)
        for method, request in (
            ("/s2s.v1.AccountService/CreateBasin", control_pb2.CreateBasinRequest(basin=BASIN)),
            (
                "/s2s.v1.BasinService/CreateStream",
                control_pb2.CreateStreamRequest(basin=BASIN, stream=STREAM),
            ),
            (
                "/s2s.v1.LakeService/CreateMaterialization",
                lake_pb2.CreateMaterializationRequest(
                    spec=lake_pb2.MaterializationSpec(
                        name=MATERIALIZATION, table=TABLE, create_table=True
                    )
                ),
            ),
        ):
            channel.unary_unary(method)(request.SerializeToString(), timeout=30)
        channel.close()
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.target) as open_channel:
        yield open_channel


def _call(
    channel: grpc.Channel,
    service: pbd.ServiceDescriptor,
    method: pbd.MethodDescriptor,
    payloads: list[bytes],
) -> grpc.StatusCode:
    path = f"/{service.full_name}/{method.name}"
    try:
        if method.client_streaming:
            responses = channel.stream_stream(path)(iter(payloads), timeout=_CALL_TIMEOUT_S)
            for _ in responses:
                pass
        elif method.server_streaming:
            responses = channel.unary_stream(path)(payloads[0], timeout=_SESSION_WAIT_S)
            for _ in responses:
                pass
        else:
            channel.unary_unary(path)(payloads[0], timeout=_CALL_TIMEOUT_S)
    except grpc.RpcError as error:
        code: grpc.StatusCode = error.code()
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and method.server_streaming:
            return grpc.StatusCode.OK  # a read session following the tail: ended by us
        assert code not in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL), (
            path,
            code,
            error.details(),
        )
        assert code != grpc.StatusCode.DEADLINE_EXCEEDED, (path, "never ended")
        return code
    return grpc.StatusCode.OK


def test_no_call_ends_in_an_unhandled_error_and_the_server_survives(
    server: ServerProcess, channel: grpc.Channel
) -> None:
    """The generated calls, then the server's state after all of them: one test, so the
    survival check can never run on a server that saw no fuzz input."""
    _each_call_ends_in_a_handled_status(channel)
    _the_server_survived_with_no_traceback(server, channel)


@fuzzed(EXAMPLES // 3)
@given(call=_calls())
def _each_call_ends_in_a_handled_status(
    channel: grpc.Channel,
    call: tuple[pbd.ServiceDescriptor, pbd.MethodDescriptor, list[bytes]],
) -> None:
    _statuses[_call(channel, *call).name] += 1


def _the_server_survived_with_no_traceback(server: ServerProcess, channel: grpc.Channel) -> None:
    assert _statuses, "no call was made"
    assert server.process is not None and server.process.poll() is None
    request = services_pb2.CheckTailRequest(basin=BASIN, stream=STREAM)
    channel.unary_unary("/s2s.v1.StreamService/CheckTail")(request.SerializeToString(), timeout=10)
    log = "".join(server.log)
    assert "Traceback" not in log, log[-5000:]
    print(f"grpc fuzz: {sum(_statuses.values())} calls, by status: {sorted(_statuses.items())}")
