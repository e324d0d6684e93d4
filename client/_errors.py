"""Typed exceptions of the client, built from a gRPC status and its trailing metadata."""

from __future__ import annotations

from typing import Any

import grpc

from s2s.errors import (
    CURRENT_FENCING_TOKEN_KEY,
    ERROR_CODE_KEY,
    EXPECTED_SEQ_NUM_KEY,
    TAIL_SEQ_NUM_KEY,
    TAIL_TIMESTAMP_KEY,
)
from s2s.v1 import records_pb2 as pb


class S2SError(Exception):
    """A failed call: `code` is the S2 error code (e.g. "stream_not_found")."""

    def __init__(self, code: str, message: str, status: grpc.StatusCode | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class SeqNumMismatchError(S2SError):
    """`match_seq_num` was not the stream's next sequence number, which is `expected_seq_num`."""

    def __init__(self, message: str, expected_seq_num: int) -> None:
        super().__init__("seq_num_mismatch", message, grpc.StatusCode.FAILED_PRECONDITION)
        self.expected_seq_num = expected_seq_num


class FencingTokenMismatchError(S2SError):
    """The fencing token did not match; `current_token` is the stream's token."""

    def __init__(self, message: str, current_token: str) -> None:
        super().__init__("fencing_token_mismatch", message, grpc.StatusCode.FAILED_PRECONDITION)
        self.current_token = current_token


class ReadUnwrittenError(S2SError):
    """The read started beyond the tail, which is `tail`."""

    def __init__(self, message: str, tail: pb.StreamPosition) -> None:
        super().__init__("read_unwritten", message, grpc.StatusCode.OUT_OF_RANGE)
        self.tail = tail


def metadata_dict(metadata: Any) -> dict[str, Any]:
    """gRPC metadata as a dict; both aio `Metadata` and sync tuples iterate as (key, value)."""
    return {key: value for key, value in metadata or ()}


def error_from_rpc(error: grpc.RpcError) -> S2SError:
    """Translate a gRPC failure; transport failures get code "unavailable"."""
    return error_from_status(error.code(), error.details(), error.trailing_metadata())


def error_from_status(status: grpc.StatusCode, details: str | None, trailing: Any) -> S2SError:
    """Translate a call's final status, details and trailing metadata."""
    message = details or ""
    metadata = metadata_dict(trailing)
    code = metadata.get(ERROR_CODE_KEY)
    if code == "seq_num_mismatch":
        return SeqNumMismatchError(message, int(metadata[EXPECTED_SEQ_NUM_KEY]))
    if code == "fencing_token_mismatch":
        token = metadata[CURRENT_FENCING_TOKEN_KEY]
        return FencingTokenMismatchError(message, token.decode())
    if code == "read_unwritten":
        tail = pb.StreamPosition(
            seq_num=int(metadata[TAIL_SEQ_NUM_KEY]),
            timestamp=int(metadata[TAIL_TIMESTAMP_KEY]),
        )
        return ReadUnwrittenError(message, tail)
    if code is None:
        code = "unavailable" if status == grpc.StatusCode.UNAVAILABLE else "other"
    return S2SError(str(code), message, status)


class KvConflict(S2SError):
    """A commit found changes committed to its store since the revision it was made at.

    Nothing of it was applied. The store's committed state is already the latest (its
    `revision` is `revision`); its pending changes are kept: `reload()` (which drops them)
    and make them again on the new state, then `commit()`."""

    def __init__(self, message: str, revision: int) -> None:
        super().__init__("kv_conflict", message, grpc.StatusCode.FAILED_PRECONDITION)
        self.revision = revision
