"""The error table: every failure's S2 error code, HTTP status and gRPC status, in one place.

Frontends never choose statuses themselves; they raise or catch `S2Error` and look its code up
here. The three special failures (sequence-number mismatch, fencing-token mismatch, read past
the tail) carry the machine-readable value the client needs to recover.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc


@dataclass(frozen=True)
class ErrorKind:
    """How one S2 error code is presented on each transport."""

    http_status: int
    grpc_status: grpc.StatusCode
    retryable: bool


_G = grpc.StatusCode

ERROR_KINDS: dict[str, ErrorKind] = {
    "bad_header": ErrorKind(400, _G.INVALID_ARGUMENT, False),
    "bad_json": ErrorKind(400, _G.INVALID_ARGUMENT, False),
    "bad_path": ErrorKind(400, _G.INVALID_ARGUMENT, False),
    "bad_query": ErrorKind(400, _G.INVALID_ARGUMENT, False),
    "bad_proto": ErrorKind(400, _G.INVALID_ARGUMENT, False),
    "bad_frame": ErrorKind(400, _G.INVALID_ARGUMENT, False),
    "bad_sql": ErrorKind(400, _G.INVALID_ARGUMENT, False),
    "read_only_sql": ErrorKind(400, _G.INVALID_ARGUMENT, False),
    "decryption_failed": ErrorKind(400, _G.INVALID_ARGUMENT, False),
    "authn": ErrorKind(401, _G.UNAUTHENTICATED, False),
    "permission_denied": ErrorKind(403, _G.PERMISSION_DENIED, False),
    "quota_exhausted": ErrorKind(403, _G.RESOURCE_EXHAUSTED, False),
    "basin_not_found": ErrorKind(404, _G.NOT_FOUND, False),
    "stream_not_found": ErrorKind(404, _G.NOT_FOUND, False),
    "access_token_not_found": ErrorKind(404, _G.NOT_FOUND, False),
    "materialization_not_found": ErrorKind(404, _G.NOT_FOUND, False),
    "table_not_found": ErrorKind(404, _G.NOT_FOUND, False),
    "request_timeout": ErrorKind(408, _G.DEADLINE_EXCEEDED, True),
    "resource_already_exists": ErrorKind(409, _G.ALREADY_EXISTS, False),
    "basin_deletion_pending": ErrorKind(409, _G.FAILED_PRECONDITION, False),
    "stream_deletion_pending": ErrorKind(409, _G.FAILED_PRECONDITION, False),
    "transaction_conflict": ErrorKind(409, _G.ABORTED, True),
    "seq_num_mismatch": ErrorKind(412, _G.FAILED_PRECONDITION, False),
    "fencing_token_mismatch": ErrorKind(412, _G.FAILED_PRECONDITION, False),
    "read_unwritten": ErrorKind(416, _G.OUT_OF_RANGE, False),
    "invalid": ErrorKind(422, _G.INVALID_ARGUMENT, False),
    "rate_limited": ErrorKind(429, _G.RESOURCE_EXHAUSTED, True),
    "client_hangup": ErrorKind(499, _G.CANCELLED, False),
    "other": ErrorKind(500, _G.INTERNAL, True),
    "storage": ErrorKind(500, _G.INTERNAL, True),
    "not_implemented": ErrorKind(501, _G.UNIMPLEMENTED, False),
    "hot_server": ErrorKind(502, _G.UNAVAILABLE, True),
    "unavailable": ErrorKind(503, _G.UNAVAILABLE, True),
    "server_draining": ErrorKind(503, _G.UNAVAILABLE, True),
    "upstream_timeout": ErrorKind(504, _G.DEADLINE_EXCEEDED, True),
    # `/v2/stream` ingest: the codes of the Definite Stream API, whose clients expect them.
    "invalid_request": ErrorKind(400, _G.INVALID_ARGUMENT, False),
    "invalid_json": ErrorKind(400, _G.INVALID_ARGUMENT, False),
    "invalid_encoding": ErrorKind(400, _G.INVALID_ARGUMENT, False),
    "invalid_table": ErrorKind(400, _G.INVALID_ARGUMENT, False),
    "payload_too_large": ErrorKind(413, _G.RESOURCE_EXHAUSTED, False),
    "unsupported_media_type": ErrorKind(415, _G.INVALID_ARGUMENT, False),
    "unsupported_encoding": ErrorKind(415, _G.INVALID_ARGUMENT, False),
    "too_many_rows": ErrorKind(422, _G.INVALID_ARGUMENT, False),
    "row_too_large": ErrorKind(422, _G.INVALID_ARGUMENT, False),
    "field_too_large": ErrorKind(422, _G.INVALID_ARGUMENT, False),
    "nesting_too_deep": ErrorKind(422, _G.INVALID_ARGUMENT, False),
    "invalid_primary_key": ErrorKind(422, _G.INVALID_ARGUMENT, False),
    "duplicate_primary_key": ErrorKind(422, _G.INVALID_ARGUMENT, False),
    # The key-value store on streams (docs/adr/0015-kv-store.md).
    "key_not_found": ErrorKind(404, _G.NOT_FOUND, False),
    "kv_conflict": ErrorKind(412, _G.FAILED_PRECONDITION, False),
    "kv_history_lost": ErrorKind(409, _G.FAILED_PRECONDITION, False),
}


# gRPC trailing metadata: how a failed call's S2 error code and recovery values travel (the
# server writes them, the client reads them; docs/grpc.md has the table).
ERROR_CODE_KEY = "s2-error-code"
EXPECTED_SEQ_NUM_KEY = "s2-expected-seq-num"
CURRENT_FENCING_TOKEN_KEY = "s2-current-fencing-token-bin"
"""Binary (`-bin`): a fencing token is any UTF-8 text, which ASCII metadata cannot carry."""
TAIL_SEQ_NUM_KEY = "s2-tail-seq-num"
TAIL_TIMESTAMP_KEY = "s2-tail-timestamp"


class S2Error(Exception):
    """A failure with an S2 error code; `kind` says how each transport presents it."""

    def __init__(self, code: str, message: str) -> None:
        if code not in ERROR_KINDS:
            raise ValueError(f"unknown S2 error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def kind(self) -> ErrorKind:
        return ERROR_KINDS[self.code]

    def body(self) -> dict[str, Any]:
        """The JSON error body of the HTTP API."""
        return {"code": self.code, "message": self.message}


class SeqNumMismatch(S2Error):
    """`match_seq_num` did not equal the stream's next sequence number."""

    def __init__(self, expected_seq_num: int) -> None:
        super().__init__(
            "seq_num_mismatch",
            f"match_seq_num does not match the stream's next sequence number {expected_seq_num}",
        )
        self.expected_seq_num = expected_seq_num

    def body(self) -> dict[str, Any]:
        return {"seq_num_mismatch": self.expected_seq_num}


class FencingTokenMismatch(S2Error):
    """The append's fencing token differs from the stream's current token."""

    def __init__(self, current_token: str) -> None:
        super().__init__(
            "fencing_token_mismatch",
            f"fencing token does not match the stream's current token {current_token!r}",
        )
        self.current_token = current_token

    def body(self) -> dict[str, Any]:
        return {"fencing_token_mismatch": self.current_token}


class ReadUnwritten(S2Error):
    """A read asked to start beyond the tail, which it may not wait for."""

    def __init__(self, tail_seq_num: int, tail_timestamp: int) -> None:
        super().__init__("read_unwritten", f"read start is beyond the tail at {tail_seq_num}")
        self.tail_seq_num = tail_seq_num
        self.tail_timestamp = tail_timestamp

    def body(self) -> dict[str, Any]:
        return {"tail": {"seq_num": self.tail_seq_num, "timestamp": self.tail_timestamp}}


def invalid(message: str) -> S2Error:
    """A semantic validation failure (HTTP 422)."""
    return S2Error("invalid", message)


def server_draining() -> S2Error:
    """The server is shutting down: what a call cut short by it is told (HTTP 503; SDK >= 0.13
    then reconnects elsewhere without spending a retry)."""
    return S2Error("server_draining", "server is shutting down; reconnect to continue")
